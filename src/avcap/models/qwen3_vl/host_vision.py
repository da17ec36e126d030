"""What the Qwen3-VL vision tower derives from `video_grid_thw`, computed on the host.

transformers' vision forward derives from the grid the position-embedding interpolation taps, the
rotary position ids and the attention segments. With the grid on the GPU every derivation reads sizes
back to the host (`.tolist()`, `repeat_interleave` with tensor counts, `arange(counts.sum())`), and
so do the split of the merged embeddings and the deepstack merge (boolean indexing): ~20 waits per
prefill call, each draining the GPU's queue while Python works out the next step (bench_prefill.py
--syncs lists them). transformers 5.17 and 5.25 (`transformers.vision_utils`; not 5.12, not 4.57)
take the derived tensors precomputed as keyword arguments of the vision forward; `HostVision`
computes them with those same helpers on the CPU grid, sends them with pinned asynchronous copies,
keeps the grid itself on the CPU, and merges the deepstack features at rows known on the host. The same arithmetic gives the same
numbers: FastGenerator compares its first prefill with the plain call bit for bit and keeps the plain
call if they differ (or if this transformers has no such helpers).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Optional

from avcap.models.qwen3_vl.compile import remember_runs
from avcap.models.qwen3_vl.text import NotSupported, replaced
from avcap.models.qwen3_vl.text import to_device as _to_device

# Heavy libraries (transformers) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

_HELPERS = ("get_vision_interpolation_indices_and_weights", "get_vision_position_ids", "get_vision_attention_seqlens")


_threads_lock = threading.Lock()
_threads_users = 0  # callers inside one_cpu_thread now
_threads_saved = 1  # torch's thread count before the first of them entered


@contextlib.contextmanager
def one_cpu_thread():
    """torch's CPU operators on one thread meanwhile (the host-side work of a forward: mRoPE
    positions, vision taps; thousands of tiny operators). Multi-threaded, each of them wakes the
    intra-op pool; with every core busy decoding video (a caption run's decoders, a training run's
    DataLoader workers) a descheduled pool thread stalls the operator: on the 2-core box 4 training
    samples' HostInputs.prepare took 5-14 ms on one thread and 25-380 ms on two beside busy
    processes, and GPU run 63's first training steps ran 7.2 s instead of 4.3 s while the loader's
    workers were busy (benchmarks/HISTORY.md, session 15). torch's thread count is per process: CPU
    operators in other threads run on one thread too for these milliseconds; the count from before
    the first of overlapping callers comes back when the last one leaves."""
    import torch

    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            if _threads_saved != 1:
                torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0 and _threads_saved != 1:
                torch.set_num_threads(_threads_saved)


def _helpers():
    try:
        from transformers import vision_utils as vu
    except ImportError:
        return None
    return vu if all(hasattr(vu, n) for n in _HELPERS) else None


def unsupported_reason(model) -> Optional[str]:
    """None when `model` (a Qwen3-VL ...ForConditionalGeneration) has what HostVision replaces, else why not."""
    import transformers

    if _helpers() is None:
        return (f"transformers {transformers.__version__} lacks the transformers.vision_utils helpers "
                f"({', '.join(_HELPERS)})")
    visual = getattr(getattr(model, "model", None), "visual", None)
    lm = getattr(getattr(model, "model", None), "language_model", None)
    if not (visual is not None and lm is not None and hasattr(lm, "_deepstack_process")
            and getattr(model.config, "video_token_id", None) is not None
            and all(hasattr(visual, a) for a in ("num_grid_per_side", "interpolation_mode",
                                                "interpolation_align_corners", "spatial_merge_size"))):
        return f"{type(model).__name__} lacks the vision tower attributes it replaces"
    return None


def check_key(model, device) -> Optional[dict[str, Any]]:
    """What the fast path's first-prefill comparison of HostVision with the plain call depends on,
    for remembering a pass across processes (avcap.core.verdicts): library versions, GPU, dtype,
    this module's source and transformers' (`vision_utils`, the model's modeling file), the vision
    configuration. None where some source cannot be read (the comparison then runs every time)."""
    import inspect
    import sys

    import torch

    from avcap.core.compile_cache import cache_key_fields
    from avcap.core.verdicts import source_digest

    vu = _helpers()
    if vu is None:
        return None
    try:
        sources = {"host_vision": source_digest(sys.modules[__name__]), "vision_utils": source_digest(vu),
                   "modeling": source_digest(inspect.getmodule(type(model.model.visual)))}
    except (OSError, TypeError):
        return None
    device = torch.device(device)
    return {**cache_key_fields(device.type), "device": device.type, "dtype": str(model.model.visual.dtype),
            "vision_config": model.config.vision_config.to_dict(), "video_token_id": model.config.video_token_id,
            "sources": sources}


def supported(model) -> bool:
    """Whether `model` (a Qwen3-VL ...ForConditionalGeneration) has what HostVision replaces."""
    return unsupported_reason(model) is None


class HostVision:
    """The vision inputs of one prefill call (`ids`: its token ids on the CPU, `grid`: its
    video_grid_thw on the CPU), ready on `device`. Use as `with hv.applied(model): model.model(...,
    video_grid_thw=hv.grid)`."""

    def __init__(self, model, ids, grid, device):
        vu = _helpers()
        visual = model.model.visual
        merge = int(visual.spatial_merge_size)
        self.grid = grid.cpu()
        rows = (ids == model.config.video_token_id).flatten().nonzero().squeeze(1)
        if rows.numel() != int(self.grid.prod(-1).sum()) // merge ** 2:
            raise NotSupported(f"{rows.numel()} video tokens for a grid of {int(self.grid.prod(-1).sum()) // merge ** 2}")
        indices, weights = vu.get_vision_interpolation_indices_and_weights(
            self.grid, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.config.spatial_merge_size)
        position_ids = vu.get_vision_position_ids(self.grid, visual.spatial_merge_size)
        cu_seqlens, max_seqlen = vu.get_vision_attention_seqlens(self.grid, visual.config)
        dev = {k: _to_device(t, device) for k, t in (("interp_indices", indices), ("interp_weights", weights),
                                                     ("position_ids", position_ids), ("cu_seqlens", cu_seqlens))}
        remember_runs(dev["cu_seqlens"], cu_seqlens)
        self.vision_kwargs: dict[str, Any] = dict(dev)
        if max_seqlen is not None:
            self.vision_kwargs["max_seqlen"] = int(max_seqlen)
        self.rows = _to_device(rows, device)

    def _deepstack(self, hidden_states, visual_pos_masks, visual_embeds):
        """transformers' `_deepstack_process` (add the features at the video rows of a copy) at
        rows known on the host instead of a boolean mask."""
        out = hidden_states.clone()
        flat = out.view(-1, out.shape[-1])
        flat.index_put_((self.rows,), flat.index_select(0, self.rows) + visual_embeds.to(out.device, out.dtype))
        return out

    @contextlib.contextmanager
    def applied(self, model):
        """The vision forward gets the precomputed inputs and the language model merges deepstack
        features by rows, for the calls made inside (instance attributes, removed on exit)."""
        visual, lm = model.model.visual, model.model.language_model
        plain = visual.forward
        extra = self.vision_kwargs

        def forward(*args, **kw):
            return plain(*args, **{**extra, **kw})

        with replaced((visual, "forward", forward), (lm, "_deepstack_process", self._deepstack)):
            yield self
