"""`[avcap.train] mixed_precision = "copy"`: one process computes with a `[train] param_dtype` copy of
its fp32 master weights, as FSDP2's MixedPrecisionPolicy does on several ranks (and cosmos-rl).

Under "autocast" (the default) the model's own fp32 weights run under torch.autocast: every use of a
weight casts it again (each micro-batch, each recompute), and the residual stream, the norms and
the activations kept for backward stay fp32. With the copy, the model's modules hold bf16
parameters (made once, refreshed from the masters after each optimizer step), so activations are
bf16 too; each parameter's bf16 gradient is added into its master's fp32 `.grad` as soon as
autograd has accumulated it (a post-accumulate-grad hook), so micro-batches still sum in fp32.

The optimizer, gradient clipping and checkpoints see only the masters: `masters_installed()` puts
them back into the modules for saving and loading (state dicts are keyed by the modules' names).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class ComputeCopy:
    """Installs `dtype` copies of `model`'s parameters in its modules; keeps the originals as masters.
    Call after the optimizer is built on the masters (and a resumed state loaded), `refresh()` after
    every optimizer step."""

    def __init__(self, model, dtype):
        import torch

        self.model, self.dtype = model, dtype
        self.masters: list[Any] = list(model.parameters())  # deduplicated: a tied weight once
        self._copy_of: dict[int, Any] = {}
        self.copies: list[Any] = []
        for p in self.masters:
            c = torch.nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad)
            if p.requires_grad:
                c.register_post_accumulate_grad_hook(self._hook(p))
            self._copy_of[id(p)] = c
            self.copies.append(c)
        self._install(self._copy_of)

    @staticmethod
    def _hook(master):
        def to_master(copy) -> None:  # the copy's gradient for this backward, summed into the fp32 master's
            if master.grad is None:
                master.grad = copy.grad.to(master.dtype)
            else:
                master.grad.add_(copy.grad)
            copy.grad = None

        return to_master

    def _install(self, by_id: dict[int, Any]) -> None:
        for module in self.model.modules():
            for name, t in module._parameters.items():
                if t is not None and id(t) in by_id:
                    module._parameters[name] = by_id[id(t)]

    def refresh(self) -> None:
        """The copies from the masters (rounded to nearest), after an optimizer step."""
        import torch

        with torch.no_grad():
            torch._foreach_copy_(self.copies, self.masters)

    @contextlib.contextmanager
    def masters_installed(self) -> Iterator[None]:
        """The masters in the modules (checkpoint save and load), the copies again afterwards and
        refreshed (a load may have changed the masters)."""
        back = {id(c): p for p, c in zip(self.masters, self.copies)}
        self._install(back)
        try:
            yield
        finally:
            self._install(self._copy_of)
            self.refresh()
