"""Training forwards that do not stop to read sizes back from the GPU.

transformers' Qwen3-VL forward derives the mRoPE positions (`get_rope_index`: a walk over every row
and video with many tiny ops) and the vision tower's interpolation taps, rotary ids and attention
segments from `video_grid_thw`, and merges the deepstack features through a boolean mask. With the
grid on the GPU each of these reads a size back (`.tolist()`, `nonzero`): ~20 waits per forward,
each letting the GPU's queue run dry while Python works out the next step, 8 micro-batches a step.
The micro-batch's token ids and grid are on the host anyway (the Collator builds them there), so
`HostInputs` computes all of it there, as the inference fast path does (avcap.models.qwen3_vl.host_vision):
the positions with the model's own `get_rope_index` on CPU tensors, the vision inputs with
transformers' own helpers; the forward gets them precomputed. Integer arithmetic either way: the
loss and every gradient are the plain forward's, bit for bit (tests/test_train_host_inputs.py).

Off (the plain forward) where transformers lacks the helpers (before 5.17), for micro-batches
without video or with images, and where a micro-batch's video tokens do not match its grid; each
such micro-batch is counted by reason (`fallbacks`) for the run's log.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from typing import Any, Optional

from avcap.models.qwen3_vl import host_vision
from avcap.models.qwen3_vl.host_vision import HostVision
from avcap.models.qwen3_vl.text import NotSupported, to_device


class HostInputs:
    """Per run: `prepare(batch, model_inputs, device)` for each micro-batch."""

    def __init__(self, model, enabled: bool = True):
        self.model = model
        self.error: Optional[str] = None if enabled else "[avcap.train] host_inputs = false"
        if self.error is None:
            self.error = host_vision.unsupported_reason(model)
        rope = getattr(getattr(model, "model", None), "get_rope_index", None)
        if self.error is None and rope is None:
            self.error = f"{type(model).__name__} has no get_rope_index"
        self._types_kw = rope is not None and "mm_token_type_ids" in inspect.signature(rope).parameters
        # since the last `record()` (one step): micro-batches run the plain way by reason, and with host inputs
        self.fallbacks: Counter[str] = Counter()
        self.used = 0

    @property
    def on(self) -> bool:
        return self.error is None

    def prepare(self, batch: dict[str, Any], inputs: dict[str, Any], device):
        """(the model's keyword arguments, a context to call it in) for one micro-batch: `inputs`
        with the host-computed positions and the grid kept on the host, in `HostVision.applied`;
        or `inputs` as they are and a null context (counted in `fallbacks` unless off for the run)."""
        import torch

        plain = inputs, contextlib.nullcontext()
        if not self.on:
            return plain
        grid = batch.get("video_grid_thw")
        if grid is None:
            return plain  # text only: the plain forward reads nothing back
        if batch.get("pixel_values") is not None:
            self.fallbacks["images in the micro-batch"] += 1
            return plain
        ids = batch["input_ids"]
        kw: dict[str, Any] = {"video_grid_thw": grid}
        if "attention_mask" in inputs:  # the mask the model gets (None for right-padded micro-batches)
            kw["attention_mask"] = batch["attention_mask"]
        if self._types_kw and batch.get("mm_token_type_ids") is not None:
            kw["mm_token_type_ids"] = batch["mm_token_type_ids"]
        device = torch.device(device)
        try:
            with host_vision.one_cpu_thread():
                positions, _ = self.model.model.get_rope_index(ids, **kw)
                vision = HostVision(self.model, ids, grid, device)
        except NotSupported as exc:
            self.fallbacks[str(exc)] += 1
            return plain
        self.used += 1
        return ({**inputs, "position_ids": to_device(positions, device), "video_grid_thw": vision.grid},
                vision.applied(self.model))

    def record(self) -> dict[str, Any]:
        """For the step's log record, then reset: whether it is on (or why not), and the micro-batches
        since the last record with host inputs and without them by reason. Per step, so a resumed run
        logs each step as the uninterrupted run did."""
        out = {"on": self.on, **({"off_because": self.error} if self.error else {}), "micro_batches": self.used,
               "fallbacks": dict(self.fallbacks)}
        self.used, self.fallbacks = 0, Counter()
        return out
