"""`avcap infer`: captions, MCQ answers and LingoQA answers of one model or checkpoint.

    avcap infer --model-name NAME [--checkpoint PATH] --dataset AV_CAPTION [--config FILE]
                [--engine transformers|openai|vllm] [--tasks caption,mcq] [--limit N]
                [--outputs-dir DIR] [--num-shards K --shard-index I] [--batch-size B]
                [--retry-errors] [--merge]

Outputs: `<outputs_dir>/<model-name>/<checkpoint-label>/<dataset>/{caption,mcq,lingoqa}.jsonl`,
`lingoqa_predictions.csv` and `run.json` (docs/formats.md, "Inference outputs").

- Resumable and crash-safe: each record is appended with `avcap.core.records.RecordWriter` (one
  `O_APPEND` write per line) as soon as its batch finishes, and the file is fsynced once per batch;
  a rerun skips every key that has a record. A kill loses at most the batch in flight and never
  leaves a torn or duplicated line.
- A request that fails (a corrupt video, an HTTP error after retries) is written as an error record
  (`"error": "..."`) and the run goes on. Error records count as finished: a rerun leaves them
  alone unless `--retry-errors` is given (then they are retried and a success supersedes them).
- A run refuses (exit 2) to add to outputs made with different settings (model path, engine,
  prompts, sampling, vision): `run.json` holds their fingerprint.
- Data parallel: `--num-shards K --shard-index I`, or K = WORLD_SIZE, I = RANK under torchrun
  (device cuda:LOCAL_RANK). Shards split the videos (all questions of a video in one shard)
  round-robin over the sorted video ids; each writes `<task>.shard-II-of-KK.jsonl` and
  `run.shard-II-of-KK.json` and resumes on its own. The shard that finishes last (the first to find
  every expected key present) merges all part files into `<task>.jsonl`, `run.json` and the CSV;
  `avcap infer --merge ...` does the same by hand and names what is missing. Part files are kept.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.metadata as md
import io
import itertools
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

import avcap
from avcap.core.bytecode import advice as bytecode_advice
from avcap.core.bytecode import bytecode_state
from avcap.core.checkpoints import CheckpointError, every_checkpoint, resolve_checkpoint
from avcap.core.config import ConfigError, RecipeConfig, Sampling, load_config
from avcap.core.records import (
    DirectoryBusy,
    RecordError,
    RecordWriter,
    WriterLock,
    iter_records,
    read_json,
    remove_stale_temp_files,
    write_json_atomic,
    write_records_atomic,
    write_text_atomic,
)
from avcap.engines import Request, build_messages
from avcap.eval.tasks import (
    TASKS,
    DatasetView,
    Item,
    TaskError,
    TaskPlan,
    no_units_message,
    tasks_for,
)

# Heavy libraries (pandas, torch, tqdm) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

ALL_TASKS = tuple(TASKS)


class InferError(ValueError):
    """A problem the user can fix (bad flag, missing dataset file); one line naming the file/flag."""


# ----------------------------------------------------------------------------- the work list


@dataclass
class Plan:
    dataset: str
    kind: str
    root: Path
    units: list[str]  # every video/segment id, sorted (after --limit)
    items: dict[str, list[Item]]  # task -> items in unit order
    problems: list[str] = field(default_factory=list)  # input lines that cannot be used, one line each

    def shard_units(self, num_shards: int, shard_index: int) -> set[str]:
        return {u for i, u in enumerate(self.units) if i % num_shards == shard_index}

    def shard_of(self, num_shards: int) -> dict[str, int]:
        return {u: i % num_shards for i, u in enumerate(self.units)}


def build_plan(cfg: RecipeConfig, dataset: str, tasks: Optional[list[str]], limit: Optional[int]) -> Plan:
    """Every request of `tasks` (default: every task of the dataset's kind) on `dataset`, first
    `limit` units (videos / segments) in id order, in a fixed order (avcap.eval.tasks plans each)."""
    try:
        ds = cfg.dataset(dataset)
    except ConfigError as exc:
        raise InferError(exc.problems[0]) from None
    root = cfg.resolve(ds.root)
    allowed = tasks_for(ds.kind)
    explicit = tasks is not None
    for t in tasks or []:
        if t not in allowed:
            raise InferError(f"--tasks: {t!r} does not apply to dataset {dataset} (kind {ds.kind}: {', '.join(allowed)})")
    if not root.is_dir():
        raise InferError(f"{root}: dataset {dataset} directory does not exist ([avcap.datasets.{dataset}] root)")
    view = DatasetView(cfg, dataset, ds, root)
    plans: dict[str, TaskPlan] = {}
    for name in tasks if tasks is not None else allowed:
        try:
            tp = TASKS[name].plan(view, explicit=explicit)
        except TaskError as exc:
            raise InferError(str(exc)) from None
        if tp is not None:
            plans[name] = tp
    unit_ids = set().union(*(tp.units for tp in plans.values())) if plans else set()
    if not unit_ids:
        raise InferError(no_units_message(view))
    units = sorted(unit_ids)[: limit if limit is not None else None]
    items = {name: tp.items(units) for name, tp in plans.items()}
    problems = [p for tp in plans.values() for p in tp.problems]
    return Plan(dataset=dataset, kind=ds.kind, root=root, units=units, items=items, problems=problems)


# ----------------------------------------------------------------------------- records


_RESULT_EXTRAS = ("num_frames", "frame_size", "num_video_tokens", "finish_reason", "attempts")


def make_record(task: str, item: Item, result: Any, seconds: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"key": item.key, **item.fields, "text": result.text}
    rec.update(TASKS[task].record_fields(item, result.text))
    rec["error"] = result.error
    if result.raw_text is not None and result.raw_text != result.text:
        rec["raw_text"] = result.raw_text
    rec["num_input_tokens"] = result.num_input_tokens
    rec["num_output_tokens"] = result.num_output_tokens
    rec["time_s"] = round(seconds, 4)
    for k in _RESULT_EXTRAS:
        if k in result.extra:
            rec[k] = result.extra[k]
    return rec


# ----------------------------------------------------------------------------- files and shards


def shard_suffix(num_shards: int, shard_index: int) -> str:
    w = max(2, len(str(num_shards)))
    return f"shard-{shard_index:0{w}d}-of-{num_shards:0{w}d}"


def output_dir(cfg: RecipeConfig, outputs_dir: Optional[str | Path], model_name: str, label: str, dataset: str) -> Path:
    """`<outputs_dir>/<model-name>/<checkpoint-label>/<dataset>` (default outputs_dir from the config)."""
    root = Path(outputs_dir) if outputs_dir is not None else cfg.resolve(cfg.avcap.outputs_dir)
    return root / model_name / label / dataset


def task_file(out_dir: Path, task: str, num_shards: int = 1, shard_index: int = 0) -> Path:
    if num_shards == 1:
        return out_dir / f"{task}.jsonl"
    return out_dir / f"{task}.{shard_suffix(num_shards, shard_index)}.jsonl"


def run_file(out_dir: Path, num_shards: int = 1, shard_index: int = 0) -> Path:
    return out_dir / ("run.json" if num_shards == 1 else f"run.{shard_suffix(num_shards, shard_index)}.json")


def _task_files(out_dir: Path, task: str) -> list[Path]:
    """The final file and every part file of a task (any shard count), final first."""
    final = out_dir / f"{task}.jsonl"
    parts = sorted(out_dir.glob(f"{task}.shard-*-of-*.jsonl"))
    return ([final] if final.exists() else []) + parts


def collect(out_dir: Path, task: str) -> dict[str, dict[str, Any]]:
    """key -> the record that counts: the last success, else the last error."""
    best: dict[str, dict[str, Any]] = {}
    for path in _task_files(out_dir, task):
        for rec in iter_records(path):
            k = str(rec["key"])
            if k not in best or not rec.get("error") or best[k].get("error"):
                best[k] = rec
    return best


def finished_keys(out_dir: Path, task: str, *, retry_errors: bool) -> set[str]:
    return {k for k, r in collect(out_dir, task).items() if not (retry_errors and r.get("error"))}


def shard_from_env(num_shards: Optional[int], shard_index: Optional[int]) -> tuple[int, int, Optional[int]]:
    """(K, I, local rank or None): the flags, else torchrun's WORLD_SIZE/RANK/LOCAL_RANK, else (1, 0)."""
    if num_shards is None and shard_index is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world > 1:
            rank = int(os.environ.get("RANK", "0"))
            return world, rank, int(os.environ.get("LOCAL_RANK", rank))
        return 1, 0, None
    if num_shards is None or shard_index is None:
        raise InferError("--num-shards and --shard-index go together")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise InferError(f"--shard-index must be in [0, {num_shards}) (got {shard_index} of {num_shards})")
    return num_shards, shard_index, None


# ----------------------------------------------------------------------------- run description


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_settings(cfg: RecipeConfig, engine_name: str, ck: Any) -> dict[str, Any]:
    """What the outputs depend on (fingerprinted) — batch size, device and limits excluded."""
    prompts = cfg.avcap.prompts.model_dump()
    e = cfg.avcap.engine
    engine: dict[str, Any] = {"name": engine_name, "reasoning": e.reasoning}
    if engine_name == "openai":
        engine.update(base_url=e.base_url, server=e.server, video_mode=e.video_mode, image_format=e.image_format,
                      image_detail=e.image_detail)
    else:
        engine.update(dtype=e.dtype, attn_implementation=e.attn_implementation)
    return {
        "model_path": ck.path,
        "processor_path": ck.processor or ck.path,
        "engine": engine,
        "prompts": prompts,
        "prompts_sha256": {k: _sha(v) for k, v in prompts.items()},
        "sampling": cfg.avcap.sampling.model_dump(),
        "vision": cfg.eval_vision.model_dump(),
        "library_versions": library_versions(engine_name),
    }


def library_versions(engine_name: str) -> dict[str, Optional[str]]:
    """The libraries whose versions change what a run writes (fingerprinted: a resume under other
    versions is refused): avcap and PyAV (decoding) always; torch and transformers for the local
    engines (prompt tokens, kernels), vLLM for vllm. An OpenAI-compatible server's own versions
    are out of avcap's sight."""
    pkgs = ["av"] if engine_name == "openai" else ["av", "torch", "transformers"] + (["vllm"] if engine_name == "vllm" else [])
    return {"avcap": avcap.__version__, **_installed(pkgs)}


def _installed(pkgs: list[str]) -> dict[str, Optional[str]]:
    """Installed version of each package (None where it is not installed)."""
    out: dict[str, Optional[str]] = {}
    for pkg in pkgs:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def fingerprint(settings: dict[str, Any]) -> str:
    return _sha(json.dumps(settings, sort_keys=True))


def _versions() -> dict[str, Optional[str]]:
    """Every version worth knowing when reading a run (informative, not fingerprinted)."""
    return {"avcap": avcap.__version__, "python": sys.version.split()[0],
            **_installed(["torch", "transformers", "av", "httpx", "vllm"])}


def check_fingerprint(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix outputs of different settings in one directory."""
    fp = fingerprint(settings)
    for path in sorted(out_dir.glob("run*.json")):
        try:
            old = read_json(path)
        except Exception:
            continue
        if isinstance(old, dict) and old.get("fingerprint") not in (None, fp):
            changed = [k for k in settings if old.get(k) != settings[k]]
            was, now = old.get("library_versions") or {}, settings["library_versions"]
            if "library_versions" in changed and isinstance(was, dict):
                diffs = [f"{k} {was.get(k)} -> {now.get(k)}" for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
                changed[changed.index("library_versions")] = f"library versions: {', '.join(diffs)}"
            raise InferError(
                f"{path}: these outputs were made with different settings ({', '.join(changed) or 'fingerprint'} "
                "changed); use another --outputs-dir or --model-name, or remove the directory"
            )


# ----------------------------------------------------------------------------- merge


@dataclass
class MergeStatus:
    complete: bool
    missing: dict[str, list[str]]  # task -> missing keys
    counts: dict[str, int]  # task -> records in the merged file
    message: str


def merge_outputs(out_dir: Path, plan: Plan, *, num_shards: Optional[int] = None, write: bool = True) -> MergeStatus:
    """Merge final + part files of every planned task into `<task>.jsonl` (+ CSV, run.json) when
    every planned key has a record; otherwise report what is missing (by shard when known)."""
    missing: dict[str, list[str]] = {}
    merged: dict[str, list[dict[str, Any]]] = {}
    for task, items in plan.items.items():
        have = collect(out_dir, task)
        missing[task] = [it.key for it in items if it.key not in have]
        planned = [have[it.key] for it in items if it.key in have]
        seen = {it.key for it in items}
        merged[task] = planned + [r for k, r in have.items() if k not in seen]  # older, wider runs: kept
    complete = not any(missing.values())
    counts = {t: len(r) for t, r in merged.items()}
    if not complete:
        return MergeStatus(False, missing, counts, _missing_message(plan, missing, num_shards or _shards_seen(out_dir)))
    if write:
        for task, recs in merged.items():
            write_records_atomic(out_dir / f"{task}.jsonl", recs)
        if "lingoqa" in merged:
            write_lingoqa_csv(out_dir / "lingoqa_predictions.csv", merged["lingoqa"])
        _merge_run_json(out_dir)
    summary = ", ".join(f"{t} {n}" for t, n in counts.items())
    return MergeStatus(True, missing, counts, f"merged {out_dir}: {summary} records")


def _shards_seen(out_dir: Path) -> Optional[int]:
    ks = {int(m.group(1)) for p in out_dir.glob("*.shard-*-of-*.json*") if (m := re.search(r"-of-(\d+)\.", p.name))}
    return max(ks) if len(ks) == 1 else None


def _missing_message(plan: Plan, missing: dict[str, list[str]], num_shards: Optional[int]) -> str:
    unit_of = {it.key: it.unit for items in plan.items.values() for it in items}
    shard_of = plan.shard_of(num_shards) if num_shards else {}
    parts = []
    for task, keys in missing.items():
        if not keys:
            continue
        units = sorted({unit_of[k] for k in keys})
        by_shard: dict[Any, int] = {}
        for u in units:
            by_shard[shard_of.get(u, "?")] = by_shard.get(shard_of.get(u, "?"), 0) + 1
        where = (
            "; ".join(f"shard {s}: {n} video(s)" for s, n in sorted(by_shard.items(), key=lambda x: str(x[0])))
            if shard_of
            else f"videos {', '.join(units[:5])}{' ...' if len(units) > 5 else ''}"
        )
        parts.append(f"{task}: {len(keys)} record(s) missing ({where})")
    return "not merged — " + " | ".join(parts)


def write_lingoqa_csv(path: Path, records: list[dict[str, Any]]) -> None:
    """The official predictions file: question_id,segment_id,answer (an error is an empty answer)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["question_id", "segment_id", "answer"])
    for r in records:
        w.writerow([r["question_id"], r["segment_id"], (r.get("text") or "").strip()])
    write_text_atomic(path, buf.getvalue())


def _merge_run_json(out_dir: Path) -> None:
    parts = sorted(out_dir.glob("run.shard-*-of-*.json"))
    final = out_dir / "run.json"
    if not parts or (final.exists() and final.stat().st_mtime >= max(p.stat().st_mtime for p in parts)):
        return  # no shards, or run.json already describes the latest of them
    infos = [read_json(p) for p in parts]
    latest = max(infos, key=lambda d: d.get("finished_at") or "")
    merged = {k: v for k, v in latest.items() if k not in ("shard", "timings")}
    merged["shards"] = [{"file": p.name, "shard": d.get("shard"), "timings": d.get("timings")} for p, d in zip(parts, infos)]
    merged["timings"] = _combine_timings([d.get("timings") or {} for d in infos])
    merged["merged_at"] = _now()
    write_json_atomic(out_dir / "run.json", merged)


def _combine_timings(per_shard: list[dict[str, Any]]) -> dict[str, Any]:
    """All shards as one run: counts add up, the wall time is the slowest shard's (they run at once)."""
    out: dict[str, Any] = {}
    tasks = {t for d in per_shard for t, v in d.items() if isinstance(v, dict)}
    for task in sorted(tasks):
        rows = [d[task] for d in per_shard if isinstance(d.get(task), dict)]
        st = TaskStats(**{f: sum(r.get(f) or 0 for r in rows) for f in ("requests", "videos", "done", "failed", "skipped")})
        st.seconds = max((r.get("seconds") or 0.0) for r in rows)
        out[task] = st.as_dict()
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- the run


@dataclass
class TaskStats:
    requests: int = 0
    videos: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # error text -> failed requests (the console names each once)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "errors"}
        d["seconds"] = round(self.seconds, 3)
        d["videos_per_s"] = round(self.videos / self.seconds, 4) if self.seconds > 0 else None
        d["requests_per_s"] = round(self.requests / self.seconds, 4) if self.seconds > 0 else None
        return d


def with_engine(cfg: RecipeConfig, engine_name: Optional[str], batch_size: Optional[int]) -> RecipeConfig:
    """The config with --engine / --batch-size applied to [avcap.engine]."""
    updates: dict[str, Any] = {}
    if engine_name:
        updates["name"] = engine_name
    if batch_size:
        updates["batch_size"] = batch_size
    if updates:
        cfg = cfg.model_copy(update={"avcap": cfg.avcap.model_copy(update={"engine": cfg.avcap.engine.model_copy(update=updates)})})
    return cfg


def run_inference(
    cfg: RecipeConfig,
    *,
    dataset: str,
    model_name: Optional[str] = None,
    checkpoint: Optional[str] = None,
    engine_name: Optional[str] = None,
    tasks: Optional[list[str]] = None,
    limit: Optional[int] = None,
    outputs_dir: Optional[str | Path] = None,
    num_shards: Optional[int] = None,
    shard_index: Optional[int] = None,
    batch_size: Optional[int] = None,
    retry_errors: bool = False,
    progress: bool = True,
    log=None,
    out_dir: Optional[Path] = None,
    title: str = "avcap infer",
    shared: Optional["SharedEngine"] = None,
) -> dict[str, Any]:
    """Run every pending request of this shard; merge when all shards are done. Returns a summary.
    `out_dir` replaces `<outputs_dir>/<model>/<checkpoint>/<dataset>` (avcap label's --out).
    `shared`: an engine kept across calls (a checkpoint sweep), closed by its owner."""

    log = log or (lambda msg: typer.echo(msg, err=True))
    t_start = time.perf_counter()
    started_at = _now()
    cfg = with_engine(cfg, engine_name, batch_size)
    ecfg = cfg.avcap.engine
    model_name = model_name or cfg.avcap.model_name
    if limit is not None and limit < 1:
        raise InferError(f"--limit must be >= 1 (got {limit})")
    k, i, local_rank = shard_from_env(num_shards, shard_index)
    try:
        ck = resolve_checkpoint(checkpoint, cfg)
    except CheckpointError as exc:
        raise InferError(str(exc)) from None
    plan = build_plan(cfg, dataset, tasks, limit)
    out_dir = out_dir or output_dir(cfg, outputs_dir, model_name, ck.label, dataset)
    out_dir.mkdir(parents=True, exist_ok=True)

    with _one_writer(out_dir, k, i):
        # what a killed run left between a temp file and its rename (this shard's files; unsharded: all)
        own = None if k == 1 else [task_file(out_dir, t, k, i).name for t in plan.items] + [run_file(out_dir, k, i).name]
        remove_stale_temp_files(out_dir, own)
        settings = describe_settings(cfg, ecfg.name, ck)
        fp = fingerprint(settings)
        check_fingerprint(out_dir, settings)

        mine = plan.shard_units(k, i)
        pending: dict[str, list[Item]] = {}
        stats: dict[str, TaskStats] = {}
        for task, items in plan.items.items():
            done = finished_keys(out_dir, task, retry_errors=retry_errors)
            own = [it for it in items if it.unit in mine]
            pending[task] = [it for it in own if it.key not in done]
            stats[task] = TaskStats(skipped=len(own) - len(pending[task]))
        for problem in plan.problems:
            log(f"  skipped: {problem}")
        shard_txt = f" [shard {i + 1}/{k}]" if k > 1 else ""
        log(
            f"{title}: {model_name} {ck.label} ({ck.path}) on {dataset}{shard_txt} -> {out_dir}\n  "
            + "; ".join(f"{t}: {len(p)} to do, {stats[t].skipped} already done" for t, p in pending.items())
        )

        info: dict[str, Any] = {
            "model_name": model_name,
            "checkpoint": ck.to_json(),
            "checkpoint_label": ck.label,
            "step": ck.step,
            "dataset": dataset,
            "dataset_root": str(plan.root),
            "tasks": list(plan.items),
            "limit": limit,
            "input_problems": plan.problems,
            **settings,
            "fingerprint": fp,
            "engine_config": ecfg.model_dump(),
            "shard": {"num_shards": k, "shard_index": i},
            "versions": _versions(),
            "started_at": started_at,
        }
        rf = run_file(out_dir, k, i)
        if not rf.exists():  # the settings are on disk before the first record: a resume checks them
            write_json_atomic(rf, {**info, "finished_at": None})
        timings: dict[str, Any] = {}
        if any(pending.values()):
            if ecfg.reasoning and cfg.avcap.sampling.mcq.max_tokens < 256 and pending.get("mcq"):
                log("  note: reasoning mode with mcq max_tokens < 256 — the answer after </think> may be cut off")
            device = None
            if local_rank is not None and ecfg.name != "openai":
                device = _local_device(local_rank, ecfg.device)
            from avcap.engines import (
                ModelLoadError,
                make_engine,  # looked up per call: tests replace avcap.engines.make_engine
            )

            if ecfg.name == "transformers":  # a local model process: its imports are a large part of its start
                info["bytecode"] = bytecode_state()
                slow = bytecode_advice(info["bytecode"])
                if slow:
                    log(f"  note: {slow}")
            t0 = time.perf_counter()

            def build():
                return make_engine(ecfg, vision=cfg.eval_vision, model=ck.path, processor=ck.processor, device=device)

            try:
                engine = shared.get(ecfg, cfg.eval_vision, ck, device, build) if shared is not None else build()
            except (ImportError, ValueError) as exc:
                raise InferError(str(exc)) from None
            except OSError as exc:
                raise InferError(f"{ck.path}: cannot load the model ({' '.join(str(exc).split())[:300]})") from None
            except ModelLoadError as exc:  # a shared engine that could not read this checkpoint's weights
                raise InferError(f"{ck.path}: {exc}") from None
            timings["engine_load_s"] = round(time.perf_counter() - t0, 3)
            info["device"] = getattr(engine, "device", None)
            if ecfg.compile and ecfg.name == "transformers":
                log("  note: [avcap.engine] compile = true — the first batch of each new shape compiles first "
                    "(about a minute at real size on a GPU)")
            try:
                prompts = cfg.avcap.prompts
                reasoning_suffix = prompts.reasoning_suffix if ecfg.reasoning else None
                for task, todo in pending.items():
                    sampling: Sampling = getattr(cfg.avcap.sampling, TASKS[task].sampling)
                    target = task_file(out_dir, task, k, i)
                    with RecordWriter(target, fsync=False) as writer:  # synced once per batch
                        _run_task(
                            engine, task, todo, sampling, writer, stats[task], prompts.system, reasoning_suffix,
                            progress=progress, desc=f"{task}{shard_txt}",
                        )
            except ModelLoadError as exc:  # a model loaded in the background failed before any record
                raise InferError(f"{ck.path}: {exc}") from None
            finally:
                info["engine_run"] = engine.run_record() if hasattr(engine, "run_record") else {}
                if shared is None:
                    engine.close()
        for task, st in stats.items():
            timings[task] = st.as_dict()
        timings["total_s"] = round(time.perf_counter() - t_start, 3)
        info.update(timings=timings, finished_at=_now())
        # a rerun with nothing to do keeps the real timings, unless the run that had them never finished
        if any(pending.values()) or not rf.exists() or _unfinished(rf):
            write_json_atomic(rf, info)

        for task, st in stats.items():
            rate = f", {st.videos / st.seconds:.3f} videos/s" if st.seconds > 0 and st.videos else ""
            log(f"  {task}: {st.done} done, {st.skipped} skipped, {st.failed} failed in {st.seconds:.1f} s{rate}")
        by_error: dict[str, dict[str, int]] = {}  # each distinct failure once (it names its file), with its requests
        for task, st in stats.items():
            for error, n in st.errors.items():
                by_error.setdefault(error, {})[task] = n
        for error, per_task in by_error.items():
            log(f"  failed: {error} ({', '.join(f'{t} {n}' for t, n in per_task.items())} request(s))")
        failed = sum(s.failed for s in stats.values())
        if failed and not retry_errors:
            log(f"  {failed} request(s) failed (error records); rerun with --retry-errors to try them again")
        status = merge_outputs(out_dir, plan, num_shards=k)
        log(f"  {status.message}")
        return {
            "out_dir": str(out_dir),
            "label": ck.label,
            "shard": (k, i),
            "stats": {t: s.as_dict() for t, s in stats.items()},
            "merged": status.complete,
            "missing": status.missing,
        }


def _unfinished(run_json: Path) -> bool:
    try:
        return read_json(run_json).get("finished_at") is None
    except (RecordError, OSError, AttributeError):
        return True


@contextlib.contextmanager
def _one_writer(out_dir: Path, num_shards: int, shard_index: int):
    """Hold the output directory's writer lock (one per shard) for the whole run."""
    name = ".infer.lock" if num_shards == 1 else f".infer.{shard_suffix(num_shards, shard_index)}.lock"
    try:
        lock = WriterLock(out_dir, name, "avcap infer").__enter__()
    except DirectoryBusy as exc:
        raise InferError(str(exc)) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _local_device(local_rank: int, configured: str) -> str:
    import torch

    if configured not in ("auto", "cuda"):
        return configured
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return "cpu"


# with a first batch, the rest goes in equal batches when the first then takes at most this many chunks more
# than `first_batch` (its records come that much later; the run has as many batches either way)
BALANCE_SLACK_CHUNKS = 4


def batch_sizes(n: int, batch_size: int, first: Optional[int] = None, multiple: Optional[int] = None) -> list[int]:
    """Sizes of the batches `n` items go in: `batch_size` each, except a smaller `first` batch
    (`[avcap.engine] first_batch`: the run's first records come after `first` items, not a whole batch).

    With `multiple` (the engine's `batch_multiple`: its prefill chunk, where every new row count is a
    new compiled prefill chunk and new captured decode steps) and a first batch, the rest goes in
    equal batches of a multiple of it, the first batch taking the few items left over (fewer than
    `BALANCE_SLACK_CHUNKS` chunks more than `first`; otherwise the plain split): 192 at 96 after 8 as
    16, 88, 88 (two row counts) instead of 8, 96, 88 (three). An even split that is not a multiple
    (8, 92, 92) was measured no faster: 92 rows left the prefill a chunk of 4 prefixes, one more
    compiled shape (benchmarks/runs/gpu_run66, call 2)."""
    bs = max(1, int(batch_size))
    head = min(bs, max(1, int(first))) if first else bs
    if n <= 0:
        return []
    if n <= head:
        return [n]
    rest = n - head
    if first and multiple and multiple > 0:
        k = -(-rest // bs)  # the batches after the first
        each = (rest // k) // multiple * multiple
        left = n - k * each
        if each and head <= left <= head + BALANCE_SLACK_CHUNKS * multiple and left <= bs:
            return [left] + [each] * k
    return [head] + [bs] * (rest // bs) + ([rest % bs] if rest % bs else [])


def run_items(engine, task: str, todo: list[Item], sampling: Sampling, system: Optional[str],
              reasoning_suffix: Optional[str], on_batch) -> None:
    """The one inference loop (`avcap infer`, `avcap label` and its Ray workers): `todo` in batches
    of the engine's batch size, the next batches' videos decoded ahead, and each batch's
    `on_batch(items, results, records)` (records by `make_record`) called as soon as it finishes."""
    sizes = batch_sizes(len(todo), int(getattr(engine, "batch_size", 1)), getattr(engine, "first_batch", None),
                        getattr(engine, "batch_multiple", None))
    ends = list(itertools.accumulate(sizes))
    batches = [todo[end - n : end] for end, n in zip(ends, sizes)]

    def requests(batch: list[Item]) -> list:
        return [
            Request(key=it.key, messages=build_messages(system, it.text, it.video, reasoning_suffix=reasoning_suffix))
            for it in batch
        ]

    # decode ahead: queue the following batches' videos until `ahead` distinct ones are waiting
    # (an MCQ batch holds few videos, so one batch ahead would leave most decode workers idle)
    ahead = max(1, int(getattr(engine, "prefetch_videos", 1)))
    queued = 0  # batches[:queued] have been handed to engine.prefetch

    def top_up(n: int) -> None:
        nonlocal queued
        queued = max(queued, n + 1)
        waiting = {it.unit for b in batches[n + 1 : queued] for it in b}
        while queued < len(batches) and (queued == n + 1 or len(waiting) < ahead):
            engine.prefetch(requests(batches[queued]))
            waiting |= {it.unit for it in batches[queued]}
            queued += 1

    reqs = requests(batches[0]) if batches else []
    if reqs:  # its videos decode first, before the batches after it
        engine.prefetch(reqs)
    for n, batch in enumerate(batches):
        top_up(n)  # decode the next batches' videos while this one runs
        nxt = requests(batches[n + 1]) if n + 1 < len(batches) else []
        tb = time.perf_counter()
        results = engine.generate(reqs, sampling)
        per = (time.perf_counter() - tb) / max(1, len(batch))
        records = []
        for it, res in zip(batch, results):
            if res.key != it.key:
                raise RuntimeError(f"engine returned results out of order ({res.key} for {it.key})")
            records.append(make_record(task, it, res, per))
        on_batch(batch, results, records)
        reqs = nxt


def _run_task(engine, task, todo, sampling, writer, st, system, reasoning_suffix, *, progress, desc) -> None:
    left: dict[str, int] = {}
    for it in todo:
        left[it.unit] = left.get(it.unit, 0) + 1
    st.requests = len(todo)
    st.videos = len(left)
    bar = _progress(total=len(left), desc=desc, enabled=progress)

    def on_batch(batch: list[Item], results: list, records: list[dict[str, Any]]) -> None:
        finished_units = 0
        for it, res, rec in zip(batch, results, records):
            writer.append(rec)
            if res.error:
                st.failed += 1
                st.errors[res.error] = st.errors.get(res.error, 0) + 1
            else:
                st.done += 1
            left[it.unit] -= 1
            finished_units += left[it.unit] == 0
        writer.sync()
        if bar is not None:
            bar.update(finished_units)
            bar.set_postfix(failed=st.failed, refresh=False)

    t0 = time.perf_counter()
    try:
        run_items(engine, task, todo, sampling, system, reasoning_suffix, on_batch)
    finally:
        st.seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="video", file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                mininterval=0.1 if tty else 10.0)


class SharedEngine:
    """One engine for several `run_inference` calls (`avcap infer --every-checkpoint`): built for
    the first checkpoint, then given each next one's weights with the engine's `reload` (the
    transformers engine keeps its decoders, compiled graphs and captured decode steps, so a
    checkpoint costs a weight read instead of a process start); an engine without `reload`, or a
    checkpoint it refuses (another architecture or processor: said in one line), is built anew."""

    def __init__(self, log=None):
        self.log = log or (lambda msg: typer.echo(msg, err=True))
        self.engine = None
        self._key: Optional[tuple] = None
        self._path: Optional[str] = None  # the checkpoint whose weights the engine holds

    def get(self, ecfg, vision, ck, device, build):
        key = (ecfg.model_dump_json(), repr(vision), device)
        if self.engine is not None and key == self._key and hasattr(self.engine, "reload"):
            if ck.path == self._path:  # the same weights (another dataset): a new run record only
                self.engine.new_run()
                return self.engine
            try:
                self.engine.reload(ck.path, ck.processor)
                self._path = ck.path
                return self.engine
            except ValueError as exc:
                self.log(f"  note: {exc}; building a new engine")
        self.close()
        self.engine, self._key, self._path = build(), key, ck.path
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


# ----------------------------------------------------------------------------- CLI


def main(
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Name the outputs are filed under (default \\[avcap] model_name)."),
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", help="HF dir, cosmos-rl <out>/<ts>/safetensors/step_N, or avcap <output_dir>/checkpoints/step_N; omitted: the base model."
    ),
    every: bool = typer.Option(
        False, "--every-checkpoint", help="Every step_N of the training output directory --checkpoint names, in one process: the engine is built once and each checkpoint's weights replace the last's."
    ),
    dataset: str = typer.Option(..., "--dataset", help="A dataset named under \\[avcap.datasets] (AV_CAPTION, LINGOQA, ...)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Recipe TOML (default: built-in defaults)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="transformers | openai | vllm (default \\[avcap.engine] name)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated: caption,mcq (AV_CAPTION) or lingoqa (default: all of the dataset's)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N videos (LingoQA: segments), sorted by id."),
    outputs_dir: Optional[Path] = typer.Option(None, "--outputs-dir", help="Default \\[avcap] outputs_dir."),
    num_shards: Optional[int] = typer.Option(None, "--num-shards", help="Split the videos into K shards (default: WORLD_SIZE under torchrun, else 1)."),
    shard_index: Optional[int] = typer.Option(None, "--shard-index", help="Which shard this process runs (default: RANK under torchrun)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Requests per model call (default \\[avcap.engine] batch_size)."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Retry requests that have error records."),
    merge: bool = typer.Option(False, "--merge", help="Only merge the shards' part files (no model is loaded)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Captions, MCQ and LingoQA answers for a model or checkpoint (resumable; shardable)."""
    try:
        cfg = load_config(config)
        task_list = _parse_tasks(tasks)
        if engine is not None and engine not in ("transformers", "openai", "vllm"):
            raise InferError(f"--engine: {engine!r} is not one of transformers, openai, vllm")
        if merge:
            status = merge_only(cfg, dataset=dataset, model_name=model_name, checkpoint=checkpoint, tasks=task_list,
                                limit=limit, outputs_dir=outputs_dir, num_shards=num_shards)
            typer.echo(status.message, err=True)
            raise typer.Exit(0 if status.complete else 1)
        kw = dict(dataset=dataset, model_name=model_name, engine_name=engine, tasks=task_list, limit=limit,
                  outputs_dir=outputs_dir, num_shards=num_shards, shard_index=shard_index, batch_size=batch_size,
                  retry_errors=retry_errors, progress=not no_progress)
        if every:
            if checkpoint is None:
                raise InferError("--every-checkpoint needs --checkpoint: a training output directory")
            try:
                checkpoints = every_checkpoint(checkpoint, cfg)
            except CheckpointError as exc:
                raise InferError(str(exc)) from None
            shared = SharedEngine()
            failed = []  # a checkpoint that cannot be read is said and skipped; the others still run
            try:
                for ck in checkpoints:
                    try:
                        run_inference(cfg, checkpoint=ck.path, shared=shared, **kw)
                    except InferError as exc:
                        typer.echo(f"error: {exc}", err=True)
                        failed.append(ck.label)
            finally:
                shared.close()
            if failed:
                raise InferError(f"--every-checkpoint: {len(failed)} of {len(checkpoints)} checkpoints failed "
                                 f"({', '.join(failed)}); the others are done")
        else:
            run_inference(cfg, checkpoint=checkpoint, **kw)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)
    except InferError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


def merge_only(
    cfg: RecipeConfig,
    *,
    dataset: str,
    model_name: Optional[str] = None,
    checkpoint: Optional[str] = None,
    tasks: Optional[list[str]] = None,
    limit: Optional[int] = None,
    outputs_dir: Optional[str | Path] = None,
    num_shards: Optional[int] = None,
) -> MergeStatus:
    """`avcap infer --merge`: merge what the shards wrote, or say what is missing."""

    try:
        ck = resolve_checkpoint(checkpoint, cfg)
    except CheckpointError as exc:
        raise InferError(str(exc)) from None
    plan = build_plan(cfg, dataset, tasks, limit)
    out_dir = output_dir(cfg, outputs_dir, model_name or cfg.avcap.model_name, ck.label, dataset)
    if not out_dir.is_dir():
        raise InferError(f"{out_dir}: no outputs to merge")
    return merge_outputs(out_dir, plan, num_shards=num_shards)


def _parse_tasks(tasks: Optional[str]) -> Optional[list[str]]:
    if tasks is None:
        return None
    out = [t.strip() for t in tasks.split(",") if t.strip()]
    bad = [t for t in out if t not in ALL_TASKS]
    if bad or not out:
        raise InferError(f"--tasks: unknown task(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_TASKS)}")
    return list(dict.fromkeys(out))
