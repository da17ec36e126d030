"""`[profiler]` (cosmos-rl's keys): a torch.profiler record of chosen training steps.

The steps counted from the run's first step (a resumed run: its first step after the checkpoint):
`wait_steps` unrecorded, `warmup_steps` recorded and thrown away (the profiler's own start-up),
then `active_steps` kept. For the kept window each profiled rank writes, under
`<output_dir>/profile/`:

- `rank<R>_steps<A>-<B>.json.gz`: the Chrome trace (chrome://tracing, https://ui.perfetto.dev);
- `rank<R>_steps<A>-<B>.txt`: torch's operator table, by self time on the device (CPU when no GPU);
- `rank<R>_steps<A>-<B>.summary.json`: the window's span, how much of it the GPU was busy (the union
  of its kernels and copies: the rest is the GPU waiting for the host or the loader), every kernel's
  time by kind (matmul, attention, inductor's fused kernels, ...), the longest idle gaps, and the
  kernels that took the most device time. Regions the host annotates on the GPU's timeline
  (`ProfilerStep#N`, `Optimizer.step#...`) are listed apart: they span kernels, they are not work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from avcap.core.config import Profiler


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: time during which at least one ran."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


# device kernels by kind, first match wins (names as CUDA/cuDNN/cuBLAS/inductor give them); what
# none matches is "other"
KERNEL_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("sdpa", "flash", "fmha", "attention", "attn")),
    ("matmul", ("nvjet", "gemm", "cutlass", "cublas", "wgmma", "xmma", "matmul", "splitk")),
    ("communication", ("nccl",)),
    ("inductor_fused", ("triton_",)),  # before copy: inductor names casts "..._to_copy_..."
    ("copy", ("memcpy", "memset", "copy_kernel")),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
    ("reduction", ("reduce", "norm", "softmax")),
)
Event = tuple[str, str, float, float]  # (name, "host" | "device" | "annotation", start_s, end_s)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def idle_gaps(intervals: Iterable[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    """(offset from `start`, length) of the stretches in [start, end] that no interval covers."""
    gaps, t = [], start
    for s, e in sorted(intervals):
        if s > t:
            gaps.append((t - start, s - t))
        t = max(t, e)
    if end > t:
        gaps.append((t - start, end - t))
    return gaps


def window_summary(events: list[Event], *, top: int = 30, gaps: int = 10) -> dict[str, Any]:
    """From the events of one profiled window — host operators, device kernels and copies, and
    annotations (host-marked regions shown on the device's timeline) —: the window's span (first
    start to last end), the device's busy time (the union of its kernels and copies), its kernel
    time by kind (`kernel_kind`), the `gaps` longest idle stretches, the `top` kernels by total
    time, and the annotations."""
    if not events:
        return {"span_s": 0.0, "device_busy_s": 0.0, "device_busy_fraction": None, "device_kernel_s": 0.0,
                "device_kinds": {}, "device_idle_gaps": [], "device_top": [], "device_annotations": []}
    t0, t1 = min(s for _, _, s, _ in events), max(e for *_, e in events)
    span = t1 - t0
    device = [(n, s, e) for n, where, s, e in events if where == "device"]

    def totals(items: Iterable[tuple[str, float, float]]) -> list[tuple[str, float, int]]:
        """(name, seconds, calls) per name, the longest first."""
        by: dict[str, list[float]] = {}
        for n, s, e in items:
            t = by.setdefault(n, [0.0, 0])
            t[0] += e - s
            t[1] += 1
        return [(n, t, int(c)) for n, (t, c) in sorted(by.items(), key=lambda kv: -kv[1][0])]

    def ranked(items: Iterable[tuple[str, float, float]], limit: int) -> list[dict[str, Any]]:
        return [{"name": n, "seconds": t, "calls": c} for n, t, c in totals(items)[:limit]]

    busy = busy_seconds((s, e) for _, s, e in device)
    idle = sorted(idle_gaps(((s, e) for _, s, e in device), t0, t1), key=lambda g: -g[1])[:gaps] if device else []
    return {
        "span_s": span,
        "device_busy_s": busy,
        "device_busy_fraction": busy / span if device and span > 0 else None,
        "device_kernel_s": sum(e - s for _, s, e in device),  # above busy_s where kernels overlapped
        "device_kinds": {k: {"seconds": t, "calls": c} for k, t, c in totals((kernel_kind(n), s, e) for n, s, e in device)},
        "device_idle_gaps": [{"at_s": a, "seconds": g} for a, g in idle],
        "device_top": ranked(device, top),
        "device_annotations": ranked(((n, s, e) for n, where, s, e in events if where == "annotation"), top),
    }


def event_where(event) -> str:
    """"host", "device" or "annotation" for one torch.profiler FunctionEvent."""
    if getattr(event, "is_user_annotation", False) and event.device_type.name != "CPU":
        return "annotation"
    return "host" if event.device_type.name == "CPU" else "device"


class StepProfiler:
    """Wraps torch.profiler with cosmos-rl's schedule; `step()` after every training step, `close()`
    at the end. A rank outside `rank_filter` (empty: every rank) or a disabled profiler does nothing."""

    def __init__(self, cfg: Profiler, out: Path, *, rank: int, start_step: int, total_steps: int,
                 device_type: str, echo: Callable[[str], None]):
        sub = cfg.sub_profiler_config
        self.enabled = cfg.enable_profiler and (not sub.rank_filter or rank in sub.rank_filter)
        self.first = start_step + sub.wait_steps + sub.warmup_steps + 1  # 1-based, as train_log.jsonl
        self.last = self.first + sub.active_steps - 1
        self.rank, self.dir, self.echo, self.device_type = rank, out / "profile", echo, device_type
        self._prof: Optional[Any] = None
        if not self.enabled:
            return
        if self.last > total_steps:
            echo(f"warning: [profiler]: steps {self.first}-{self.last} are profiled, but the run ends at step "
                 f"{total_steps}; no profile will be written (lower wait_steps / warmup_steps / active_steps)")
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if device_type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=sub.wait_steps, warmup=sub.warmup_steps,
                                             active=sub.active_steps, repeat=1),
            on_trace_ready=self._write, record_shapes=sub.record_shape, profile_memory=sub.profile_memory,
            with_stack=sub.with_stack, with_modules=sub.with_modules)
        self._prof.start()

    def step(self) -> None:
        if self._prof is not None:
            self._prof.step()

    def close(self) -> None:
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.stop()

    def _write(self, prof) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = self.dir / f"rank{self.rank}_steps{self.first}-{self.last}"
        t0 = time.perf_counter()
        prof.export_chrome_trace(f"{stem}.json.gz")
        cuda = self.device_type == "cuda"
        table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                          row_limit=60, max_name_column_width=90)
        stem.with_suffix(".txt").write_text(table + "\n")
        summary = window_summary([(e.name, event_where(e), e.time_range.start / 1e6, e.time_range.end / 1e6)
                                  for e in prof.events()])
        summary = {"rank": self.rank, "steps": [self.first, self.last], "device": self.device_type, **summary}
        Path(f"{stem}.summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        busy = summary["device_busy_fraction"]
        on_gpu = f"GPU busy {busy:.1%} of {summary['span_s']:.2f} s" if busy is not None else \
            f"{summary['span_s']:.2f} s (no GPU events)"
        self.echo(f"profile of steps {self.first}-{self.last} (rank {self.rank}): {on_gpu}; {stem}.json.gz, "
                  f".txt, .summary.json (written in {time.perf_counter() - t0:.1f} s)")
