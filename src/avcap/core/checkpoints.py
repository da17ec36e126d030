"""What `--checkpoint` names: a model to load, and the label its outputs are filed under.

Accepted (the label orders checkpoints in plots: `base` < `ckpt-20` < `ckpt-40` ...):

- omitted: the base model — `[avcap.engine] model`, else `[policy] model_name_or_path` → `base`;
- a Hugging Face hub id (`nvidia/Cosmos-Reason2-8B`, not an existing path) → `base`;
- a `save_pretrained` directory (has `config.json`): `ckpt-N` when its name is `step_N`
  (`step-N`, `checkpoint-N`, `ckpt-N` as in the recipe's `outputs/uber/ckpt-250`) or its
  `avcap_train_state.json` has a `step`, else `base`
  (a model given by path, not a training checkpoint);
- avcap training output: `<output_dir>/checkpoints/step_N` (that step), or `<output_dir>` /
  `<output_dir>/checkpoints` (the latest step);
- cosmos-rl output: `<out>/<timestamp>/safetensors/step_N` (that step), or `<out>/<timestamp>` /
  `<out>` (the latest step over all timestamps).

A checkpoint directory without its own processor/tokenizer files (cosmos-rl exports weights and
config only) is loaded with the base model's processor (`Checkpoint.processor`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from avcap.core.config import RecipeConfig

_STEP_RE = re.compile(r"^(?:step|checkpoint|ckpt)[_-](\d+)$")
_PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointError(ValueError):
    """`--checkpoint` names nothing loadable (message names the path)."""


@dataclass(frozen=True)
class Checkpoint:
    path: str  # what the engine loads: a directory or a hub id
    label: str  # "base" | "ckpt-<step>"
    step: Optional[int]
    kind: str  # "base" | "hub" | "hf_dir" | "avcap" | "cosmos-rl"
    processor: Optional[str] = None  # where the processor lives when `path` has none

    def to_json(self) -> dict:
        return {"path": self.path, "label": self.label, "step": self.step, "kind": self.kind, "processor": self.processor}


def base_model(cfg: RecipeConfig) -> str:
    """The base model: a directory (relative paths are relative to the config file) or a hub id."""
    model = cfg.avcap.engine.model or cfg.policy.model_name_or_path
    p = cfg.resolve(model)
    return str(p.resolve()) if p.exists() else model


def label_for(step: Optional[int]) -> str:
    return "base" if step is None else f"ckpt-{step}"


def resolve_checkpoint(checkpoint: Optional[str], cfg: RecipeConfig) -> Checkpoint:
    base = base_model(cfg)
    if checkpoint is None:
        return Checkpoint(path=base, label="base", step=None, kind="base")
    p = Path(checkpoint).expanduser()
    if not p.exists():
        if _HUB_ID_RE.match(checkpoint) and not checkpoint.startswith("."):
            return Checkpoint(path=checkpoint, label="base", step=None, kind="hub")
        raise CheckpointError(f"{checkpoint}: no such checkpoint directory (and not a hub id like org/name)")
    if not p.is_dir():
        raise CheckpointError(f"{checkpoint}: a checkpoint is a directory, this is a file")
    p = p.resolve()
    if (p / "config.json").is_file():
        step = _step_of(p)
        kind = "hf_dir" if step is None else ("cosmos-rl" if p.parent.name == "safetensors" else "avcap")
        return _with_processor(Checkpoint(path=str(p), label=label_for(step), step=step, kind=kind), base)
    found = _latest_step_dir(p)
    if found is None:
        raise CheckpointError(
            f"{checkpoint}: not a checkpoint — no config.json, and no checkpoints/step_N, safetensors/step_N or "
            "<timestamp>/safetensors/step_N directory with a config.json inside"
        )
    step, d, kind = found
    return _with_processor(Checkpoint(path=str(d), label=label_for(step), step=step, kind=kind), base)


def _step_of(d: Path) -> Optional[int]:
    m = _STEP_RE.match(d.name)
    if m:
        return int(m.group(1))
    state = d / "avcap_train_state.json"
    if state.is_file():
        try:
            step = json.loads(state.read_text(encoding="utf-8")).get("step")
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(step, int):
            return step
    return None


def _step_dirs(root: Path) -> list[tuple[int, Path, str]]:
    """Every `step_N` under an avcap or cosmos-rl output directory, by step (for a step found twice,
    the later timestamp directory)."""
    patterns = {
        "avcap": ["checkpoints/step_*", "step_*"],
        "cosmos-rl": ["safetensors/step_*", "*/safetensors/step_*"],
    }
    best: dict[int, tuple[str, Path, str]] = {}
    for kind, globs in patterns.items():
        for g in globs:
            for d in root.glob(g):
                m = _STEP_RE.match(d.name)
                if not (m and d.is_dir() and (d / "config.json").is_file()):
                    continue
                step = int(m.group(1))
                if step not in best or str(d) > best[step][0]:
                    best[step] = (str(d), d, kind)
    return [(step, d, kind) for step, (_, d, kind) in sorted(best.items())]


def _latest_step_dir(root: Path) -> Optional[tuple[int, Path, str]]:
    """The highest `step_N` under an avcap or cosmos-rl output directory."""
    found = _step_dirs(root)
    return found[-1] if found else None


def every_checkpoint(run: str, cfg: RecipeConfig) -> list[Checkpoint]:
    """Every checkpoint of a training output directory (avcap's or cosmos-rl's), by step."""
    p = Path(run).expanduser()
    found = _step_dirs(p.resolve()) if p.is_dir() else []
    if not found:
        raise CheckpointError(f"{run}: no checkpoints/step_N, safetensors/step_N or <timestamp>/safetensors/step_N "
                              "directory with a config.json inside (--every-checkpoint takes a training output directory)")
    base = base_model(cfg)
    return [_with_processor(Checkpoint(path=str(d), label=label_for(step), step=step, kind=kind), base)
            for step, d, kind in found]


def _with_processor(ck: Checkpoint, base: str) -> Checkpoint:
    p = Path(ck.path)
    if not p.is_dir():
        return ck
    has_tok = (p / "tokenizer_config.json").is_file()
    has_proc = any((p / f).is_file() for f in _PROCESSOR_FILES)
    if has_tok and has_proc:
        return ck
    if str(p) == base:
        return ck  # the base itself: nothing better to fall back on
    return Checkpoint(ck.path, ck.label, ck.step, ck.kind, processor=base)
