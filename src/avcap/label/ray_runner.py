"""`avcap label --runner ray`: the labelling job on Ray Data, the same code on a laptop (`ray.init()`
starts a local Ray) and on a cluster (`--ray-address` or RAY_ADDRESS).

    driver                                        actors (`LabelWorker`: one engine each; one GPU each
                                                  when the engine runs on CUDA, else CPU actors)
    the clip set (the single-process runner's
    clip ids), less the clips that have a record
      -> ray.data.from_items([{clip_id, source}])
      -> map_batches(LabelWorker, batch_size=K, ->  K clips: caption + attributes requests through
         ActorPoolStrategy(size=N))                 avcap.eval.infer.run_items (the one inference loop;
                                                    the engine decodes, ahead of use, as in `avcap infer`),
                                                    scenario records by avcap.label.assemble.clip_record,
                                                    pictures written under DIR/thumbs
      <- rows {clip_id, record, actor, node, seconds}
      -> DIR/scenarios/part-<run>-<seq>.jsonl, written atomically (temp + rename) every
         `partition_clips` records or `flush_s` seconds: `avcap index DIR` ingests them as they land
      -> at the end: every clip exactly once (a repair drops superseded records), DIR/label_summary.json

Decoding stays in the engine: the engines take video paths and decode them with their FrameLoader
(threads or processes, NVDEC, a cache that serves the caption's frames again to the attribute
questions); frames decoded by CPU tasks would cross the object store uncompressed (~50 MB per
clip at 8 frames of 1080p) and need a second way into the engines.

Exactly once (docs/formats.md, "Scenario records on Ray"):
- only the driver writes records, each received row once (Ray Data hands every output block to
  the consumer once, also when an actor task was retried); a partition is renamed into place
  whole, so a reader sees all of it or nothing, and a kill leaves only a `.part-*.tmp` (removed
  on the next run);
- a rerun skips every clip that has a record in DIR/scenarios.jsonl or a partition (with
  --retry-errors, clips whose record is an error are labelled again; the repair drops the old one);
- settings are checked as by the single-process runner (run.json's fingerprint, questions.json),
  and the directory's writer lock (.infer.lock) admits one run at a time, of either runner;
- a worker process that dies is restarted by Ray and its batch retried; a batch whose earlier try
  died is labelled clip by clip, each clip's tries counted in DIR/.label_ray/<run>/ (and a clip
  finished there kept for the next try); a clip that killed its worker or raised in `max_tries`
  tries gets an error record naming the reason, and the job goes on;
- the driver killed mid-run loses the batches in flight and the records not yet flushed (at most
  `flush_s` seconds' worth); a rerun labels them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from avcap.core.checkpoints import CheckpointError, resolve_checkpoint
from avcap.core.config import RecipeConfig
from avcap.core.records import (
    DirectoryBusy,
    WriterLock,
    read_json,
    remove_stale_temp_files,
    write_json_atomic,
    write_text_atomic,
)
from avcap.eval.infer import (
    InferError,
    _versions,
    check_fingerprint,
    describe_settings,
    fingerprint,
    run_items,
    with_engine,
)
from avcap.eval.tasks import TASKS as ALL_TASKS
from avcap.eval.tasks import DatasetView, TaskError, no_units_message
from avcap.label.assemble import clip_record, labeller
from avcap.scenarios.record import PARTITIONS_DIR, RECORDS_FILE, Labeller, QuestionSet, ScenarioRecord

TASKS = ("caption", "attributes")  # the single-process runner's two tasks (avcap.label.run.TASKS)
SUMMARY_FILE = "label_summary.json"
SCRATCH_DIR = ".label_ray"  # per run: the tries of clips whose worker died (removed when the run ends)
PARTITION_CLIPS = 512  # a partition is written every this many records ...
FLUSH_S = 5.0  # ... or this many seconds after its first record, whichever comes first
# clips per actor call (--batch-clips), by default 4 engine batches and at least 16: the engine
# decodes ahead within a call only, so each call's first batch waits for its videos; bigger calls
# lose less to that, smaller ones spread better over the actors and lose less to a worker's death
BATCH_CLIPS, BATCHES_PER_CALL = 16, 4
_DIED = "the labelling worker died while labelling it (killed, crashed or out of memory; see the Ray worker logs)"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- the workers


@dataclass
class Job:
    """What every actor needs, sent once with its constructor."""

    cfg: RecipeConfig
    dataset: str
    model: str
    processor: Optional[str]
    questions: QuestionSet
    who: Labeller
    out: str
    scratch: str  # DIR/.label_ray/<run>
    max_tries: int


class LabelWorker:
    """One engine for the actor's life; each call labels a batch of clips into scenario records."""

    def __init__(self, job: Job):
        import ray  # an optional extra (avcap[ray]): this module imports without it

        from avcap.engines import make_engine

        self.job = job
        cfg = job.cfg
        self.engine = make_engine(cfg.avcap.engine, vision=cfg.eval_vision, model=job.model, processor=job.processor)
        self.actor = f"{socket.gethostname()}:{os.getpid()}"
        self.node = ray.get_runtime_context().get_node_id()
        self.view = (cfg.dataset(job.dataset), cfg.resolve(cfg.dataset(job.dataset).root))
        self.scratch = Path(job.scratch)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        clips = [(str(c), str(s)) for c, s in zip(batch["clip_id"], batch["source"])]
        t0 = time.perf_counter()
        records = self.label(clips)
        per = (time.perf_counter() - t0) / max(1, len(clips))
        return {"clip_id": [c for c, _ in clips], "record": [json.dumps(r, ensure_ascii=False) for r in records],
                "error": [bool(r.get("error")) for r in records], "actor": [self.actor] * len(clips),
                "node": [self.node] * len(clips), "seconds": [per] * len(clips)}

    def label(self, clips: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The batch at once on its first try; clip by clip, with bounded tries, after one died or raised."""
        tries = self.scratch / f"batch-{_digest(chr(10).join(sorted(c for c, _ in clips)))}"
        n = _bump(tries)
        if n == 1:
            try:
                return self.records(clips)
            except Exception as exc:  # one clip's exception must not cost the batch: each clip alone
                reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                for cid, _ in clips:
                    _write_state(self._state_file(cid), {"tries": 0, "last": reason})
        return [self.alone(cid, source) for cid, source in clips]

    def _state_file(self, cid: str) -> Path:
        return self.scratch / f"clip-{_digest(cid)}.json"

    def alone(self, cid: str, source: str) -> dict[str, Any]:
        """One clip, tried until it is labelled or has had `max_tries` tries (the batch's first try
        counts as one): a record, or an error record with the last reason."""
        path = self._state_file(cid)
        while True:
            st = _read_state(path)
            if st.get("record") is not None:  # labelled by an earlier try whose batch died later
                return st["record"]
            own = int(st.get("tries", 0))
            if 1 + own >= self.job.max_tries:
                reason = st.get("last") or _DIED
                return ScenarioRecord(clip_id=cid, source=source, labeller=self.job.who, labelled_at=_now(),
                                      error=f"{source}: no label after {1 + own} tries: {reason}").to_json()
            _write_state(path, {"tries": own + 1, "last": _DIED})  # stays so if this process dies
            try:
                rec = self.records([(cid, source)])[0]
            except Exception as exc:
                _write_state(path, {"tries": own + 1, "last": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"})
                continue
            _write_state(path, {"record": rec})
            return rec

    def records(self, clips: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The clips' requests of both tasks through the one inference loop, then their scenario records."""
        job, cfg = self.job, self.job.cfg
        ds, root = self.view
        units = [cid for cid, _ in clips]
        view = DatasetView(cfg, job.dataset, ds, root, _clips=({cid: Path(s) for cid, s in clips}, []))
        prompts, ecfg = cfg.avcap.prompts, cfg.avcap.engine
        suffix = prompts.reasoning_suffix if ecfg.reasoning else None
        got: dict[str, list[dict[str, Any]]] = {}
        for task in TASKS:
            plan = ALL_TASKS[task].plan(view, explicit=True)
            sampling = getattr(cfg.avcap.sampling, ALL_TASKS[task].sampling)
            run_items(self.engine, task, plan.items(units), sampling, prompts.system, suffix,
                      lambda items, results, recs, task=task: got.setdefault(task, []).extend(recs))
        captions = {str(r["key"]): r for r in got.get("caption", [])}
        answers: dict[str, dict[str, dict[str, Any]]] = {}
        for r in got.get("attributes", []):
            answers.setdefault(str(r["clip_id"]), {})[str(r["question_id"])] = r
        now = _now()
        thumbs = Path(job.out) / "thumbs"
        out = []
        for cid, source in clips:
            rec, _ = clip_record(cid, Path(source), captions[cid], answers.get(cid, {}), job.questions, job.who, now,
                                 thumbs, cfg.avcap.label, lambda m: print(m, file=sys.stderr))
            out.append(rec)
        return out


def _bump(path: Path) -> int:
    """Count one more try in `path` (a small JSON file); returns the count."""
    n = int(_read_state(path).get("tries", 0)) + 1
    _write_state(path, {"tries": n})
    return n


def _read_state(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _write_state(path: Path, obj: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False))


# ----------------------------------------------------------------------------- records on disk


def record_files(out: Path) -> list[Path]:
    """scenarios.jsonl (the single-process runner's) and the partitions, oldest first."""
    files = [out / RECORDS_FILE] if (out / RECORDS_FILE).is_file() else []
    parts = out / PARTITIONS_DIR
    return files + (sorted(p for p in parts.glob("*.jsonl") if not p.name.startswith(".")) if parts.is_dir() else [])


def _lines(path: Path) -> Iterable[tuple[int, bytes, Optional[dict[str, Any]]]]:
    """(line number, raw line, parsed object or None) of every whole line."""
    with path.open("rb") as fh:
        for n, raw in enumerate(fh):
            if not raw.endswith(b"\n"):
                return  # torn by a kill mid-write: not a record
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            yield n, raw, obj if isinstance(obj, dict) else None


def _rank(rec: dict[str, Any], file_order: int) -> tuple:
    """Which of two records of one clip stays: the later label, a success over an error, the later file."""
    return (str(rec.get("labelled_at") or ""), not rec.get("error"), file_order)


@dataclass
class Held:
    """What the driver keeps of a clip's record (not the record: a million clips fit in memory)."""

    rank: tuple
    path: Path
    line: int
    error: bool
    pictures: bool


def settle(out: Path) -> tuple[dict[str, Held], int]:
    """Make the directory hold each clip once: where a clip has several records (an error record
    labelled again with --retry-errors, or record files put together by hand), keep the one `_rank`
    prefers and rewrite the other files without theirs (atomically; a partition left empty is
    removed). Returns (clip_id -> its record's place and outcome, records removed)."""
    best: dict[str, Held] = {}
    losers: dict[Path, set[int]] = {}
    for order, path in enumerate(record_files(out)):
        for n, _, obj in _lines(path):
            cid = obj.get("clip_id") if obj else None
            if not isinstance(cid, str):
                continue
            here = Held(_rank(obj, order), path, n, bool(obj.get("error")), obj.get("thumbnail") is not None)
            old = best.get(cid)
            if old is None:
                best[cid] = here
                continue
            keep, drop = (here, old) if here.rank > old.rank else (old, here)
            best[cid] = keep
            losers.setdefault(drop.path, set()).add(drop.line)
    removed = 0
    for path, drop in losers.items():
        kept = [raw for n, raw, _ in _lines(path) if n not in drop]
        removed += len(drop)
        if kept or path.name == RECORDS_FILE:
            write_text_atomic(path, b"".join(kept).decode("utf-8"))
        else:
            path.unlink()
    return best, removed


class PartitionWriter:
    """The driver's records into DIR/scenarios/part-<run>-<seq>.jsonl, one whole file at a time."""

    def __init__(self, out: Path, run_id: str, *, max_records: int, max_seconds: float):
        self.dir = out / PARTITIONS_DIR
        self.run_id, self.max_records, self.max_seconds = run_id, max_records, max_seconds
        self.buffer: list[str] = []
        self.first_at = 0.0
        self.written: list[str] = []

    def add(self, line: str) -> None:
        if not self.buffer:
            self.first_at = time.monotonic()
        self.buffer.append(line)
        if len(self.buffer) >= self.max_records:
            self.flush()

    def due(self) -> bool:
        return bool(self.buffer) and time.monotonic() - self.first_at >= self.max_seconds

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.dir / f"part-{self.run_id}-{len(self.written):05d}.jsonl"
        write_text_atomic(path, "".join(line + "\n" for line in self.buffer))
        self.written.append(path.name)
        self.buffer = []


# ----------------------------------------------------------------------------- progress


class Progress:
    """Clips done / failed / per second, ETA and each actor's rate, as a line every `every` seconds.
    The rate is the actors' own (clips over the seconds they spent labelling them, summed over
    the actors), so Ray's and the actors' start do not count in it."""

    def __init__(self, total: int, log, every: float, enabled: bool, t0: float):
        self.total, self.log, self.every, self.enabled = total, log, every, enabled
        self.done = self.failed = 0
        self.t0, self.last = t0, time.monotonic()
        self.first: Optional[tuple[float, int]] = None  # (when the first batch came back, its clips)
        self.latest = t0
        self.actors: dict[str, dict[str, Any]] = {}

    def add(self, actor: str, node: str, seconds: float, error: bool) -> None:
        self.done += 1
        self.failed += error
        a = self.actors.setdefault(actor, {"node": node, "clips": 0, "busy_s": 0.0})
        a["clips"] += 1
        a["busy_s"] += seconds

    def batch_done(self) -> None:
        self.latest = time.monotonic()
        if self.first is None:
            self.first = (self.latest, self.done)

    def rate(self) -> float:
        return sum(a["clips"] / a["busy_s"] for a in self.actors.values() if a["busy_s"] > 0)

    def timings(self) -> dict[str, Any]:
        """startup_s: from the job's start to the first results back (Ray, the actors' engines, a
        batch); steady_clips_per_s: the actors' rate; clips_per_s: over the whole job."""
        whole = self.latest - self.t0
        return {"startup_s": round(self.first[0] - self.t0, 3) if self.first else None,
                "steady_clips_per_s": round(self.rate(), 4) if self.actors else None,
                "clips_per_s": round(self.done / whole, 4) if whole > 0 else None}

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.every):
            return
        self.last = now
        rate = self.rate()
        left = self.total - self.done
        eta = f"{_duration(left / rate)}" if rate > 0 and left else ("0 s" if not left else "?")
        per = ", ".join(f"{k} {v['clips'] / v['busy_s']:.2f}/s" for k, v in sorted(self.actors.items()) if v["busy_s"] > 0)
        self.log(f"  ray: {self.done}/{self.total} clips, {self.failed} failed, {rate:.2f} clips/s, ETA {eta}"
                 + (f" | {len(self.actors)} actor(s): {per}" if per else ""))

    def per_actor(self) -> dict[str, dict[str, Any]]:
        return {k: {**v, "busy_s": round(v["busy_s"], 3),
                    "clips_per_s": round(v["clips"] / v["busy_s"], 4) if v["busy_s"] > 0 else None}
                for k, v in sorted(self.actors.items())}


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s} s"


# ----------------------------------------------------------------------------- the driver


def clip_units(cfg: RecipeConfig, dataset: str, limit: Optional[int]) -> tuple[list[str], dict[str, Path], list[str]]:
    """(clip ids, id -> path, unusable input lines): the single-process runner's units (every
    clip of the set, sorted, the first `limit`), without planning every request up front."""
    ds = cfg.dataset(dataset)
    root = cfg.resolve(ds.root)
    if not root.is_dir():
        raise InferError(f"{root}: dataset {dataset} directory does not exist ([avcap.datasets.{dataset}] root)")
    view = DatasetView(cfg, dataset, ds, root)
    try:
        clips, problems = view.clip_set()
    except TaskError as exc:
        raise InferError(str(exc)) from None
    if not clips:
        raise InferError(no_units_message(view))
    units = sorted(clips)[: limit if limit is not None else None]
    return units, {u: clips[u] for u in units}, problems


def label_on_ray(
    cfg: RecipeConfig,
    dataset: str,
    out: Path,
    qset: QuestionSet,
    *,
    model_name: Optional[str] = None,
    checkpoint: Optional[str] = None,
    engine_name: Optional[str] = None,
    limit: Optional[int] = None,
    batch_size: Optional[int] = None,
    retry_errors: bool = False,
    progress: bool = True,
    log=print,
    address: Optional[str] = None,
    actors: Optional[int] = None,
    batch_clips: Optional[int] = None,
    max_tries: int = 3,
    partition_clips: int = PARTITION_CLIPS,
    flush_s: float = FLUSH_S,
    progress_every: Optional[float] = None,
) -> dict[str, Any]:
    """Label the pending clips of `dataset` into `out` on Ray (avcap.label.run.label_clips has
    checked and written questions.json); returns the summary also written to label_summary.json."""
    t_start = time.perf_counter()
    started_at = _now()
    cfg = with_engine(cfg, engine_name, batch_size)
    ecfg = cfg.avcap.engine
    model_name = model_name or cfg.avcap.model_name
    for flag, value in (("--limit", limit), ("--actors", actors), ("--batch-clips", batch_clips), ("--max-tries", max_tries)):
        if value is not None and value < 1:
            raise InferError(f"{flag} must be >= 1 (got {value})")
    batch_clips = batch_clips or max(BATCH_CLIPS, BATCHES_PER_CALL * ecfg.batch_size)
    try:
        ck = resolve_checkpoint(checkpoint, cfg)
    except CheckpointError as exc:
        raise InferError(str(exc)) from None
    units, paths, problems = clip_units(cfg, dataset, limit)
    try:
        lock = WriterLock(out, ".infer.lock", "avcap label").__enter__()
    except DirectoryBusy as exc:
        raise InferError(str(exc)) from None
    try:
        remove_stale_temp_files(out)
        remove_stale_temp_files(out / PARTITIONS_DIR)
        settings = describe_settings(cfg, ecfg.name, ck)
        check_fingerprint(out, settings)
        info: dict[str, Any] = {
            "model_name": model_name, "checkpoint": ck.to_json(), "checkpoint_label": ck.label, "step": ck.step,
            "dataset": dataset, "dataset_root": str(cfg.resolve(cfg.dataset(dataset).root)), "tasks": list(TASKS),
            "limit": limit, "input_problems": problems, **settings, "fingerprint": fingerprint(settings),
            "engine_config": ecfg.model_dump(), "runner": "ray", "versions": _versions(), "started_at": started_at,
        }
        rf = out / "run.json"
        if not rf.exists():  # the settings are on disk before the first record: a resume checks them
            write_json_atomic(rf, {**info, "finished_at": None})
        who = labeller(info)
        have, repaired = settle(out)
        done = {c for c, h in have.items() if not (retry_errors and h.error)}
        pending = [u for u in units if u not in done]
        for problem in problems:
            log(f"  skipped: {problem}")
        log(f"avcap label [ray]: {model_name} {ck.label} ({ck.path}) on {dataset} -> {out}\n"
            f"  {len(units)} clips: {len(pending)} to do, {len(units) - len(pending)} already done")
        run: dict[str, Any] = {}
        if pending:
            run = _run(cfg, dataset, out, qset, ck, who, pending, paths, address=address, actors=actors,
                       batch_clips=batch_clips, max_tries=max_tries, partition_clips=partition_clips,
                       flush_s=flush_s, progress=progress, progress_every=progress_every, log=log)
        have, removed = settle(out)
        recs = [have[u] for u in units if u in have]
        errors = sum(h.error for h in recs)
        summary = {
            "runner": "ray", "clips": len(units), "already_done": len(units) - len(pending), "to_do": len(pending),
            "labelled": len(recs) - errors, "errors": errors, "pending": len(units) - len(recs),
            "picture_failures": sum(1 for h in recs if not h.error and not h.pictures),
            "duplicates_removed": repaired + removed, "records": str(out / PARTITIONS_DIR), **run,
            "seconds": round(time.perf_counter() - t_start, 3), "started_at": started_at, "finished_at": _now(),
        }
        log(f"  exactly once: {len(recs)} of {len(units)} clips have one record each"
            + (f" ({summary['duplicates_removed']} superseded record(s) removed)" if summary["duplicates_removed"] else ""))
        if summary["pending"]:
            log(f"  {summary['pending']} clip(s) have no record yet; run again to label them")
        if errors and not retry_errors:
            log(f"  {errors} clip(s) have error records; rerun with --retry-errors to try them again")
        write_json_atomic(out / SUMMARY_FILE, summary)
        if pending or _unfinished(rf):
            write_json_atomic(rf, {**info, "ray": {k: run.get(k) for k in ("address", "actors", "batch_clips", "nodes")},
                                   "timings": {"total_s": summary["seconds"]}, "finished_at": summary["finished_at"]})
        return summary
    finally:
        lock.__exit__(None, None, None)


def _unfinished(run_json: Path) -> bool:
    try:
        return read_json(run_json).get("finished_at") is None
    except Exception:
        return True


def _run(cfg: RecipeConfig, dataset: str, out: Path, qset: QuestionSet, ck, who: Labeller, pending: list[str],
         paths: dict[str, Path], *, address, actors, batch_clips, max_tries, partition_clips, flush_s, progress,
         progress_every, log) -> dict[str, Any]:
    """The Ray part: start or join Ray, label `pending` through the actor pool, write partitions."""
    try:
        import ray  # an optional extra (avcap[ray]); the single-process runner never imports it
        import ray.data
    except ImportError:
        raise InferError("--runner ray needs Ray: pip install 'avcap[ray]'") from None
    import shutil

    t_job = time.monotonic()
    ecfg = cfg.avcap.engine
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 logging_level="warning", configure_logging=True)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(3).hex()
    scratch_root = out / SCRATCH_DIR
    shutil.rmtree(scratch_root, ignore_errors=True)  # a killed run's tries: this run counts its own
    scratch = scratch_root / run_id
    scratch.mkdir(parents=True)
    writer = PartitionWriter(out, run_id, max_records=partition_clips, max_seconds=flush_s)
    try:
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        on_gpu = gpus > 0 and ecfg.name != "openai" and (ecfg.device == "auto" or ecfg.device.startswith("cuda"))
        n = actors or (gpus if on_gpu else 1 if cpus < 8 else 2)
        n = max(1, min(n, math.ceil(len(pending) / batch_clips)))
        node_cpus = [int(x["Resources"].get("CPU", 0)) for x in ray.nodes() if x.get("Alive")]
        cpus_each = max(1, min(cpus // n, max(node_cpus, default=1)))  # an actor must fit on one node
        if on_gpu and ecfg.device.startswith("cuda:"):  # an actor sees only its own GPU, as cuda:0
            engine = ecfg.model_copy(update={"device": "cuda"})
            cfg = cfg.model_copy(update={"avcap": cfg.avcap.model_copy(update={"engine": engine})})
        job = Job(cfg=cfg, dataset=dataset, model=ck.path, processor=ck.processor, questions=qset, who=who,
                  out=str(out), scratch=str(scratch), max_tries=max_tries)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver prints its own progress lines
        rows = [{"clip_id": c, "source": str(paths[c])} for c in pending]
        ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch_clips))
        ds = ds.map_batches(LabelWorker, fn_constructor_kwargs={"job": job}, batch_size=batch_clips,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n),
                            num_cpus=cpus_each, num_gpus=1 if on_gpu else None)
        nodes = len([x for x in ray.nodes() if x.get("Alive")])
        log(f"  ray {ray.__version__}: {nodes} node(s), {cpus} CPU(s), {gpus} GPU(s); {n} actor(s) "
            f"({'1 GPU' if on_gpu else f'{cpus_each} CPU(s)'} each), {batch_clips} clips per call")
        tty = sys.stderr.isatty()
        prog = Progress(len(pending), log, progress_every or (2.0 if tty else 30.0), progress, t_job)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for rec, err, actor, node, sec in zip(batch["record"], batch["error"], batch["actor"], batch["node"],
                                                  batch["seconds"]):
                writer.add(str(rec))
                prog.add(str(actor), str(node), float(sec), bool(err))
            prog.batch_done()
            if writer.due():
                writer.flush()
            prog.tick()
        writer.flush()
        prog.tick(force=True)
        return {"address": ray.get_runtime_context().gcs_address, "nodes": nodes, "actors": n,
                "batch_clips": batch_clips, "gpus_per_actor": 1 if on_gpu else 0, "cpus_per_actor": cpus_each,
                "ray_version": ray.__version__, "run_id": run_id, "partitions_written": len(writer.written),
                **prog.timings(), "per_actor": prog.per_actor()}
    except Exception as exc:
        if isinstance(exc, InferError):
            raise
        raise InferError(f"the Ray job failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}") from None
    finally:
        writer.flush()  # what arrived before a failure or Ctrl-C is kept
        shutil.rmtree(scratch, ignore_errors=True)
        if started:
            ray.shutdown()
