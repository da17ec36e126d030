"""The blend sampler: which curated sample each data-parallel rank trains on at each step.

Pure and torch-free: the order is a function of (seed, epoch) only, so any step's samples can be
recomputed on resume without saved sampler state.

Definition (documented contract, tested in tests/test_curate.py):

- Sources are the `[custom.dataset] subdirectories`, in order; sample `i` of source `s` has the
  global index `offsets[s] + i` (the concatenation order of the curated dataset).
- `weights` are normalized (`CustomDataset.normalized_weights`); a weight of 0 removes a source.
- **Epoch length**: `epoch_samples` = the sum of the sizes of the sources with a non-zero weight
  (one "pass worth" of samples), rounded up to whole global batches:
  `steps_per_epoch = ceil(epoch_samples / global_batch)`, `global_batch = train_batch_per_replica
  × data-parallel ranks`. Every batch is full; nothing is dropped.
- **Per-epoch quotas**: source `s` gets `round(w_s × steps_per_epoch × global_batch)` draws
  (largest-remainder rounding, so the quotas sum exactly to the epoch length): the proportions hold
  exactly per epoch, not just in expectation.
- **Within a source**: samples are drawn without replacement from a fresh permutation, and the
  permutation is renewed when exhausted — an up-weighted small source repeats its samples evenly,
  a down-weighted large source is sub-sampled (a different subset each epoch).
- **Interleaving**: the epoch's source labels are shuffled, so every global batch is a random
  mix with the blend's proportions in expectation.
- **Data parallel**: global batch `t` is `order[t·G : (t+1)·G]`; rank `r` of `R` takes the
  contiguous slice `[r·B, (r+1)·B)` with `B = G / R` — disjoint parts of every global batch, so a
  2-rank run sees exactly the samples of a 1-rank run with the same global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np


def normalize(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    if not all(math.isfinite(w) and w >= 0 for w in weights) or total <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero: {list(weights)}")
    return [w / total for w in weights]


def quotas(weights: Sequence[float], total: int) -> list[int]:
    """Largest-remainder apportionment of `total` draws to normalized `weights` (ties to the
    earlier source)."""
    w = normalize(weights)
    exact = [x * total for x in w]
    base = [int(math.floor(x)) for x in exact]
    left = total - sum(base)
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[:left]:
        base[i] += 1
    return base


@dataclass(frozen=True)
class BlendPlan:
    """The blended order of one training run (see the module docstring)."""

    sizes: tuple[int, ...]
    weights: tuple[float, ...]
    seed: int
    global_batch: int
    epoch_samples: Optional[int] = None  # None: sum of sizes of the weighted sources
    names: tuple[str, ...] = ()
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.weights):
            raise ValueError(f"{len(self.sizes)} sources but {len(self.weights)} weights")
        if self.global_batch < 1:
            raise ValueError(f"global_batch must be >= 1, got {self.global_batch}")
        object.__setattr__(self, "weights", tuple(normalize(self.weights)))
        for s, (n, w) in enumerate(zip(self.sizes, self.weights)):
            if w > 0 and n <= 0:
                name = self.names[s] if s < len(self.names) else f"source {s}"
                raise ValueError(f"{name} has weight {w:.3g} but no samples; curate it or set its weight to 0")
        if self.epoch_samples is not None and self.epoch_samples < 1:
            raise ValueError(f"epoch_samples must be >= 1, got {self.epoch_samples}")

    @property
    def offsets(self) -> list[int]:
        return [int(x) for x in np.concatenate([[0], np.cumsum(self.sizes)[:-1]])]

    @property
    def nominal_epoch_samples(self) -> int:
        if self.epoch_samples is not None:
            return self.epoch_samples
        return sum(n for n, w in zip(self.sizes, self.weights) if w > 0)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.nominal_epoch_samples / self.global_batch))

    @property
    def samples_per_epoch(self) -> int:
        return self.steps_per_epoch * self.global_batch

    def quotas(self) -> list[int]:
        return quotas(self.weights, self.samples_per_epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global sample indices of one epoch, `samples_per_epoch` long."""
        hit = self._cache.get(epoch)
        if hit is not None:
            return hit
        rng = np.random.default_rng([self.seed, epoch])
        q = self.quotas()
        per_source: list[np.ndarray] = []
        for s, (n, k) in enumerate(zip(self.sizes, q)):
            if k == 0:
                per_source.append(np.empty(0, dtype=np.int64))
                continue
            reps = math.ceil(k / n)
            draws = np.concatenate([rng.permutation(n) for _ in range(reps)])[:k]
            per_source.append(draws + self.offsets[s])
        labels = np.repeat(np.arange(len(q)), q)
        rng.shuffle(labels)
        order = np.empty(len(labels), dtype=np.int64)
        for s in range(len(q)):
            order[labels == s] = per_source[s]
        if len(self._cache) > 2:  # keep the current and the next epoch
            self._cache.clear()
        self._cache[epoch] = order
        return order

    def step_indices(self, step: int) -> np.ndarray:
        """The global batch of optimizer step `step` (0-based, counted across epochs)."""
        epoch, t = divmod(step, self.steps_per_epoch)
        return self.epoch_order(epoch)[t * self.global_batch : (t + 1) * self.global_batch]

    def rank_indices(self, step: int, rank: int, world_size: int) -> np.ndarray:
        if self.global_batch % world_size:
            raise ValueError(f"global batch {self.global_batch} does not split over {world_size} ranks")
        b = self.global_batch // world_size
        return self.step_indices(step)[rank * b : (rank + 1) * b]

    def source_of(self, index: int) -> int:
        return int(np.searchsorted(np.cumsum(self.sizes), index, side="right"))


def micro_batches(
    plan: BlendPlan, *, rank: int, world_size: int, mini_batch: int, start_step: int, end_step: int,
    lengths: Optional[Sequence[int]] = None,
) -> Iterator[list[int]]:
    """Index lists of this rank's micro-batches for steps [start_step, end_step), in order
    (a DataLoader `batch_sampler`). With `lengths` (a size per global index), a step's samples are
    grouped into micro-batches by length, so short samples are not padded to a long one's length:
    the step still trains on the same samples (the loss sums over its micro-batches), with less padding."""
    for step in range(start_step, end_step):
        idx = plan.rank_indices(step, rank, world_size).tolist()
        if lengths is not None:
            idx.sort(key=lambda i: lengths[i])
        for i in range(0, len(idx), mini_batch):
            yield idx[i : i + mini_batch]


class BlendSampler:
    """A `torch.utils.data.Sampler`-compatible per-rank sampler (iter / len / set_epoch), for
    DataLoaders that batch `batch_size = global_batch / num_replicas` samples per step — the
    shape cosmos-rl's SFT worker uses (`sampler(dataset, num_replicas=, rank=, shuffle=, drop_last=)`)."""

    def __init__(self, plan: BlendPlan, *, num_replicas: int = 1, rank: int = 0):
        if plan.global_batch % num_replicas:
            raise ValueError(f"global batch {plan.global_batch} does not split over {num_replicas} ranks")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.plan, self.num_replicas, self.rank, self.epoch = plan, num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.plan.samples_per_epoch // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        first = self.epoch * self.plan.steps_per_epoch
        for step in range(first, first + self.plan.steps_per_epoch):
            yield from self.plan.rank_indices(step, self.rank, self.num_replicas).tolist()
