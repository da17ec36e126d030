"""Checkpoints: `<output_dir>/checkpoints/step_<N>/`, a Hugging Face `save_pretrained` directory
(config, safetensors weights, processor, tokenizer, chat template) that `avcap infer --checkpoint`
and `from_pretrained` load directly, plus the training state needed to resume exactly:

- `avcap_train_state.json` — step, total steps, epoch, samples seen/skipped, seed, world size, the
  blend plan's fingerprint, the file names below;
- `avcap_optimizer.pt` — full (unsharded) AdamW state, LR-scheduler state, every rank's torch RNG state.

Weights are saved in the master weights' dtype (fp32, or bf16 with `[train] master_dtype =
"bfloat16"`), so a resumed run continues bit-for-bit from the same numbers. A checkpoint is written to `step_<N>.tmp/` and renamed when complete; a directory
without `avcap_train_state.json` is never resumed from.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

# Heavy libraries (torch) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

STATE_FILE = "avcap_train_state.json"
OPTIM_FILE = "avcap_optimizer.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / STATE_FILE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def read_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt}: not an avcap training checkpoint (no {STATE_FILE})")
    return json.loads(path.read_text())


def save(model, optimizer, scheduler, processor, *, output_dir: str | Path, step: int, state: dict[str, Any],
         rank: int, world_size: int, max_keep: Optional[int] = None, weights_dtype: str = "float32") -> Path:
    """Collective under torch.distributed (every rank calls it); rank 0 writes. Floating-point
    weights are written in `weights_dtype` (the master weights' dtype)."""
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
    rng = _gather_objects({"torch": torch.get_rng_state(),
                           "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}, world_size)
    final = checkpoints_dir(output_dir) / f"step_{step}"
    if rank == 0:
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tied = _tied_duplicates(model)  # gathered copies of tied weights are distinct tensors
        dtype = getattr(torch, weights_dtype)
        model_sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model_sd.items() if k not in tied}
        try:
            model.save_pretrained(tmp, state_dict=model_sd)
            processor.save_pretrained(tmp)
            torch.save({"optimizer": optim_sd, "scheduler": scheduler.state_dict(), "rng": rng}, tmp / OPTIM_FILE)
            (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "optimizer_file": OPTIM_FILE}, indent=2) + "\n")
        except Exception as exc:  # torch, safetensors and transformers each raise their own kind
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left for a rerun to trip over
            raise write_error(exc, tmp) from exc
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if max_keep:
            for _, old in list_checkpoints(output_dir)[:-max_keep]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(world_size)
    return final


# what torch's zip writer and safetensors say when a write comes up short
_SHORT_WRITE = ("unexpected pos", "failed writing", "No space left", "os error 28", "Disk quota")


def write_error(exc: BaseException, path: Path) -> BaseException:
    """`exc` from writing a checkpoint into `path` as an OSError naming the path and the cause
    when the cause is the file system (torch's writer says only "unexpected pos N vs M" for a full
    disk); other errors unchanged."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc if exc.filename else OSError(exc.errno, os.strerror(exc.errno), str(path))
    if any(s in str(exc) for s in _SHORT_WRITE):
        free = shutil.disk_usage(path.parent if path.parent.exists() else path.anchor).free
        if free < 64 << 20:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return exc


def load_training_state(model, optimizer, scheduler, ckpt: str | Path, *, rank: int) -> tuple[dict[str, Any], Any]:
    """Restore optimizer and scheduler from `ckpt` (weights come from from_pretrained); returns the
    training state and this rank's saved RNG state, which the caller restores (`restore_rng`) at
    the point of the loop where it was saved: after the DataLoader's iterator drew its seed."""
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    state = read_state(ckpt)
    blob = torch.load(Path(ckpt) / state.get("optimizer_file", OPTIM_FILE), map_location="cpu", weights_only=False)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=blob["optimizer"],
                             options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(blob["scheduler"])
    rngs = blob.get("rng") or []
    return state, (rngs[rank] if rank < len(rngs) else None)


def restore_rng(rng: Any) -> None:
    """Set the global torch (and CUDA) RNG to a state `save` recorded (None: leave it)."""
    import torch

    if rng is None:
        return
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def _tied_duplicates(model) -> set[str]:
    """Names of parameters that are the same object as an earlier one (tied embeddings)."""
    seen: set[int] = set()
    dup = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            dup.add(name)
        seen.add(id(p))
    return dup


def _gather_objects(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
