"""Learning-rate schedule with cosmos-rl's meaning (cosmos_rl/policy/trainer/optm, v0.3.9–0.4.x).

`optm_warmup_steps` W (a fraction of the total steps T when <= 1, see `Train.warmup_steps`),
then decay over the remaining steps, as a multiplicative factor of `optm_lr` at 0-based step k:

- warmup, k < W: linear from `warmup_start_factor` (0) to 1: `start + (1 - start) * k / (W - 1)`
  (1.0 when W == 1), so step 0 of a warmed-up run uses lr 0, as in cosmos-rl;
- k == W: 1.0 (cosmos-rl's "virtual" stable step, so the last step never reaches 0);
- k > W: progress `p = (k - W) / (T - W)`; `linear`: 1 - p, `sqrt`: 1 - sqrt(p),
  `cosine`: (1 + cos(pi p)) / 2, `none`: 1; scaled into [min_lr_factor, 1].
"""

from __future__ import annotations

import functools
import math

# Heavy libraries (torch) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

DECAY_TYPES = ("sqrt", "cosine", "linear", "none")


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    decay_type: str,
    min_lr_factor: float = 0.0,
    warmup_start_factor: float = 0.0,
) -> float:
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"decay type {decay_type!r} is not one of {DECAY_TYPES}")
    warmup_steps = min(warmup_steps, total_steps)
    decay_steps = total_steps - warmup_steps
    if step < warmup_steps:
        if warmup_steps == 1:
            return 1.0
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / (warmup_steps - 1)
    if step < warmup_steps + 1 or decay_steps == 0:
        return 1.0
    p = (step - warmup_steps) / decay_steps
    if decay_type == "linear":
        f = 1.0 - p
    elif decay_type == "sqrt":
        f = 1.0 - math.sqrt(p)
    elif decay_type == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        f = 1.0
    return min_lr_factor + (1.0 - min_lr_factor) * f


def build_scheduler(optimizer, train_cfg, total_steps: int):
    """A `torch.optim.lr_scheduler.LambdaLR` for `[train]` (avcap.core.config.Train)."""

    from torch.optim.lr_scheduler import LambdaLR

    fn = functools.partial(
        lr_factor,
        total_steps=total_steps,
        warmup_steps=train_cfg.warmup_steps(total_steps),
        decay_type=train_cfg.optm_decay_type,
        min_lr_factor=train_cfg.optm_min_lr_factor,
    )
    return LambdaLR(optimizer, fn)
