"""Raw sources -> training conversations in cosmos-rl's shape, one subdirectory per source.

Input (per `[avcap.curate.sources.<subdirectory>]`, `kind` and `path`):

- `human_annotated` | `cv_annotated` | `reason1_sft`: `<path>/videos/<id>.<ext>` (or a directory
  of frames) paired by name with `<path>/annotations/<id>.json` in the recipe's shape for that kind
  (avcap.data.schemas) — the layout `avcap synth` writes under `train/<source>/`;
- `vqa`: `<path>/vqa.jsonl` (verified MCQ records, docs/formats.md) with `<path>/videos/<video_id>.*`.

Output (`DATASET_ROOT`, the layout `[custom.dataset]` reads):

    DATASET_ROOT/<subdirectory>/meta.json                   # the source's samples (see `write_meta`)
    DATASET_ROOT/<subdirectory>/conversations/<id>.json     # one conversation per sample
    DATASET_ROOT/<subdirectory>/.progress.jsonl             # resume bookkeeping (avcap.core.records)
    DATASET_ROOT/report.json                                # counts in/out and every unusable input

A conversation file is exactly the list cosmos-rl's SFT data packer takes:

    [{"role": "system", "content": "<system prompt>"},
     {"role": "user", "content": [{"type": "video", "video": "<path>", "nframes": 16,
                                   "min_pixels": 3136, "max_pixels": 360000},
                                  {"type": "text", "text": "<captioning prompt | MCQ question>"}]},
     {"role": "assistant", "content": "<target>"}]

with the video path stored relative to the conversation file (docs/formats.md rule);
`load_conversation` makes it absolute. Targets: the human annotation as JSON; the CV label's
behaviour reasoning and its effect; the reasoning-SFT description, driving-difficulty explanation
and timestamped notices; the MCQ answer letter.

Nothing is dropped silently: every input that cannot be used (annotation without a video, video
without an annotation, malformed JSON, wrong schema, unreadable video, a video the trainer could
not sample with `[custom.vision]` — aspect ratio over 200:1, or so narrow that a side would shrink
to 0 under max_pixels) becomes a `Problem` in the report, and per source `inputs == written + unusable`.
A sample curate writes is one `avcap train` can load. Curation is idempotent and resumable: each
finished input is appended to `.progress.jsonl` with a fingerprint of its annotation bytes, its
video's size and mtime and the settings; a rerun reuses every input whose fingerprint matches
(no re-probe), redoes the rest, and removes conversation files of inputs that are gone, and the
temp files (`.<name>.<random>.tmp`) of writes a kill interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import ValidationError

from avcap import __version__
from avcap.bench.vqa import VQARecord, check_vqa_lines
from avcap.core.config import CurateSource, RecipeConfig, Vision
from avcap.core.records import (
    RecordWriter,
    iter_records,
    latest_by_key,
    read_json,
    remove_stale_temp_files,
    schema_error_text,
    write_json_atomic,
    write_records_atomic,
)
from avcap.data.schemas import CVAnnotation, Reason1SFTAnnotation, validate_source
from avcap.video import VIDEO_SUFFIXES, is_video_path, plan_sampling

FORMAT = "avcap.data/1"
CONVERSATIONS = "conversations"
PROGRESS = ".progress.jsonl"
REPORT = "report.json"


class CurateError(ValueError):
    """A problem with the curation request itself (not with one input): exit 2."""


@dataclass
class Problem:
    source: str  # output subdirectory
    file: str  # the input that cannot be used (annotation, video, or vqa.jsonl:line)
    reason: str


@dataclass
class SourceCounts:
    kind: str
    path: str
    inputs: int = 0
    written: int = 0
    unusable: int = 0
    reused: int = 0


@dataclass
class CurationReport:
    dataset_root: str
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "avcap_version": __version__,
            "dataset_root": self.dataset_root,
            "sources": {k: asdict(v) for k, v in self.sources.items()},
            "problems": [asdict(p) for p in self.problems],
        }


# ----------------------------------------------------------------------------- conversations


def video_part(video: str, vision: Vision) -> dict[str, Any]:
    """The user turn's video item: path plus qwen-vl-utils' sampling keys from [custom.vision]."""
    return {"type": "video", "video": video, **{k: v for k, v in vision.sampling().items() if v is not None}}


def make_conversation(system: str, video: dict[str, Any], prompt: str | list[str],
                      target: str | list[str]) -> list[dict[str, Any]]:
    """A system turn, then user/assistant turns; the video goes with the first user turn."""
    prompts, targets = ([prompt], [target]) if isinstance(prompt, str) else (prompt, target)
    conv: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        conv.append({"role": "user", "content": ([video] if i == 0 else []) + [{"type": "text", "text": p}]})
        conv.append({"role": "assistant", "content": t})
    return conv


def target_human(raw: dict[str, Any]) -> str:
    """The human annotation as JSON — exactly the keys and values of the file, in its order."""
    return json.dumps(raw, ensure_ascii=False)


def target_cv(ann: CVAnnotation) -> str:
    s = ann.final_content.ego_behavior_schema
    return (
        f"{s.ego_behavior_reasoning.strip()}\n\n"
        f"Effect on ego behavior: {s.effect_on_ego_behavior.strip()}\n\n"
        f"Driving difficulty: {s.difficulty_score}"
    )


def target_reason1(ann: Reason1SFTAnnotation) -> str:
    r = ann.response
    parts = [r.description.strip()]
    if r.driving_difficulty_explanation.strip():
        parts.append(f"Driving difficulty: {r.driving_difficulty_explanation.strip()}")
    if r.notice:
        lines = [f"- {when}: {what.strip()}" for item in r.notice for when, what in item.items()]
        parts.append("Notices:\n" + "\n".join(lines))
    return "\n\n".join(parts)


class ConversationError(ValueError):
    """A conversation file that is not JSON or not a conversation list; the message names the file
    and the field (`<file>: [1].content[0].video: ...`)."""


_ROLES = ("system", "user", "assistant")
_SAMPLING_KEYS = ("nframes", "fps", "min_pixels", "max_pixels", "total_pixels", "min_frames", "max_frames")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for t, name in ((bool, "boolean"), (str, "string"), (dict, "object"), (list, "array"), ((int, float), "number")):
        if isinstance(value, t):
            return name
    return type(value).__name__


def conversation_problem(conv: Any, *, sampling_keys: bool = True) -> Optional[str]:
    """What makes `conv` unusable as a training conversation ("<field>: <problem>", the field as a
    path into the list, e.g. `[1].content[0].video`), or None. A conversation is a non-empty list of
    `{"role": system|user|assistant, "content": str | [parts]}`, a part `{"type": "text", "text":
    str}` or `{"type": "video", "video": path, <positive sampling keys>}` (checked when
    `sampling_keys`), with at least one assistant turn that has text."""
    if not isinstance(conv, list) or not conv:
        return f"expected a non-empty list of messages, got {_json_type(conv) if conv != [] else 'an empty list'}"
    answered = False
    for i, msg in enumerate(conv):
        at = f"[{i}]"
        if not isinstance(msg, dict):
            return f"{at}: expected a message object, got {_json_type(msg)}"
        role = msg.get("role")
        if role not in _ROLES:
            return f"{at}.role: expected one of {', '.join(_ROLES)}, got {json.dumps(role)}"
        content = msg.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = ""
            for j, part in enumerate(content):
                pat = f"{at}.content[{j}]"
                if not isinstance(part, dict):
                    return f"{pat}: expected a content part object, got {_json_type(part)}"
                kind = part.get("type")
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        return f"{pat}.text: expected a string, got {_json_type(part.get('text'))}"
                    text += part["text"]
                elif kind == "video":
                    video = part.get("video")
                    if not isinstance(video, str) or not video:
                        return f"{pat}.video: expected a video path (a non-empty string), got {_json_type(video)}"
                    for k in _SAMPLING_KEYS if sampling_keys else ():
                        v = part.get(k)
                        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                            return f"{pat}.{k}: expected a positive number, got {json.dumps(v)}"
                else:
                    return f"{pat}.type: expected \"text\" or \"video\", got {json.dumps(kind)}"
        else:
            return f"{at}.content: expected a string or a list of parts, got {_json_type(content)}"
        answered = answered or (role == "assistant" and bool(text.strip()))
    if not answered:
        return "no assistant turn with text to train on"
    return None


def load_conversation(path: str | Path, *, vision: Optional[Vision] = None) -> list[dict[str, Any]]:
    """A curated conversation with its video paths made absolute; `vision` replaces the sampling
    keys of the video items (serve a dataset with the current [custom.vision]). A file that is not
    a conversation raises ConversationError naming the file and field; a missing one FileNotFoundError."""
    path = Path(path)
    try:
        conv = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConversationError(f"{path}: malformed JSON (not UTF-8: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ConversationError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    problem = conversation_problem(conv, sampling_keys=vision is None)
    if problem:
        raise ConversationError(f"{path}: {problem}")
    for msg in conv:
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for i, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "video":
                video = str((path.parent / part["video"]).resolve())
                content[i] = video_part(video, vision) if vision is not None else {**part, "video": video}
    return conv


# ----------------------------------------------------------------------------- input discovery


@dataclass
class _Item:
    """One input: an annotation/video pair, or one vqa.jsonl line."""

    id: str
    annotation: Optional[Path] = None  # annotation file (None for vqa, or when missing)
    video: Optional[Path] = None
    raw_text: Optional[str] = None  # vqa line text
    where: str = ""  # what a problem names (file, or file:line)
    problem: Optional[str] = None  # known before any parsing (missing pair, duplicate)


def _video_files(videos_dir: Path) -> tuple[dict[str, Path], list[tuple[Path, str]]]:
    found: dict[str, Path] = {}
    dup: list[tuple[Path, str]] = []
    if not videos_dir.is_dir():
        return found, dup
    for p in sorted(videos_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if not is_video_path(p):
            continue
        if p.stem in found:
            dup.append((p, f"ambiguous video: {found[p.stem].name} has the same name; rename one"))
            continue
        found[p.stem] = p
    return found, dup


def _pair_items(root: Path) -> list[_Item]:
    ann_dir, vid_dir = root / "annotations", root / "videos"
    videos, dups = _video_files(vid_dir)
    anns = {p.stem: p for p in sorted(ann_dir.glob("*.json"))} if ann_dir.is_dir() else {}
    items: list[_Item] = []
    for sid in sorted(set(anns) | set(videos)):
        a, v = anns.get(sid), videos.get(sid)
        if a is None:
            items.append(_Item(sid, video=v, where=str(v), problem=f"no annotation: expected {ann_dir / (sid + '.json')}"))
        elif v is None:
            items.append(_Item(sid, annotation=a, where=str(a), problem=f"missing video: no {vid_dir / sid}.<{'|'.join(s[1:] for s in VIDEO_SUFFIXES)}>"))
        else:
            items.append(_Item(sid, annotation=a, video=v, where=str(a)))
    items += [_Item(f"{p.name}#dup", video=p, where=str(p), problem=why) for p, why in dups]
    return items


def _vqa_file(path: Path) -> Path:
    return path if path.suffix == ".jsonl" else path / "vqa.jsonl"


def _vqa_items(path: Path) -> list[_Item]:
    """One item per line of vqa.jsonl; a line `avcap.bench.vqa` finds unusable carries its problem."""
    file = _vqa_file(path)
    videos, dups = _video_files(file.parent / "videos")
    items: list[_Item] = []
    for line in check_vqa_lines(file):
        item = _Item(f"line{line.lineno}", raw_text=line.text, where=f"{file}:{line.lineno}")
        if line.usable:
            item.id = _safe_id(line.record.key)
            item.video = videos.get(line.record.video_id)
        else:
            item.problem = line.problem
        items.append(item)
    items += [_Item(f"{p.name}#dup", video=p, where=str(p), problem=why) for p, why in dups]
    return items


def _group_by_video(items: list[_Item]) -> list[_Item]:
    """`turns = "per_video"`: the valid lines of one video become one item (its lines, in an order
    seeded by the video id, so every question comes first in some conversations); every other line
    stays an item of its own, so its problem is reported line by line."""
    groups: dict[str, list[_Item]] = {}
    out: list[_Item] = []
    for item in items:
        vid = None
        if item.problem is None and item.raw_text is not None and item.video is not None:
            try:
                vid = validate_source("vqa", json.loads(item.raw_text)).video_id
            except ValidationError:
                pass  # reported on its own by _build
        if vid is not None:
            groups.setdefault(vid, []).append(item)
        else:
            out.append(item)
    for vid, members in groups.items():
        rng = random.Random(hashlib.sha256(vid.encode()).hexdigest())
        members = sorted(members, key=lambda m: m.id)
        rng.shuffle(members)
        where = members[0].where.rsplit(":", 1)[0] + ":" + ",".join(m.where.rsplit(":", 1)[1] for m in members)
        out.append(_Item(_safe_id(vid), video=members[0].video, where=where,
                         raw_text="\n".join(m.raw_text or "" for m in members)))
    return out


def _safe_id(key: str) -> str:
    return key.replace("/", "__").replace(os.sep, "__")


# ----------------------------------------------------------------------------- one input

# the resize factors (patch x merge) of the models avcap trains: 32 for Qwen3-VL / Cosmos-Reason2
# (patch 16), 28 for Qwen2.5-VL / Cosmos-Reason1 (patch 14)
TRAIN_FACTORS = (32, 28)


def sampling_problem(info, vision: Vision) -> Optional[str]:
    """Why the trainer could not sample and resize this video with `vision` (an aspect ratio over
    200:1, or a clip so narrow that a side would shrink to 0 under max_pixels), or None: the
    check `avcap.video.load_video` makes before decoding, done here so that curate accepts only
    what train can use."""

    for factor in TRAIN_FACTORS:
        try:
            plan_sampling(info, factor=factor, **vision.sampling())
        except ValueError as exc:  # VideoError included
            return f"{getattr(exc, 'problem', None) or exc} (with [custom.vision] {_vision_text(vision)}, factor {factor})"
    return None


def _vision_text(vision: Vision) -> str:
    return ", ".join(f"{k} = {v}" for k, v in vision.sampling().items() if v is not None)



def _sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _fingerprint(item: _Item, settings_hash: str) -> str:
    h = hashlib.sha256(settings_hash.encode())
    h.update(item.id.encode())
    h.update((item.problem or "").encode())
    if item.annotation is not None and item.annotation.exists():
        h.update(_sha256_file(item.annotation).encode())
    if item.raw_text is not None:
        h.update(item.raw_text.encode())
    if item.video is not None and item.video.exists():
        st = item.video.stat()
        h.update(f"{item.video.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        if item.video.is_dir():
            h.update("|".join(f"{q.name}:{q.stat().st_size}" for q in sorted(item.video.iterdir())).encode())
    return h.hexdigest()


def _build(item: _Item, kind: str, cfg: RecipeConfig, vqa_dir: Optional[Path], probe: Callable) -> tuple[Optional[dict], Optional[tuple[str, str]]]:
    """-> (sample, None) or (None, (file, reason))."""
    if item.problem:
        return None, (item.where, item.problem)
    prompts = cfg.avcap.prompts
    if kind == "vqa":
        from avcap.bench.pool import format_question  # vqa sources only

        prompt, target = [], []
        for line in (item.raw_text or "").split("\n"):  # one record, or one video's records (per_video)
            try:
                rec = validate_source("vqa", json.loads(line))
            except ValidationError as exc:
                return None, (item.where, f"wrong schema: {schema_error_text(exc)}")
            assert isinstance(rec, VQARecord)
            if item.video is None:
                return None, (item.where, f"missing video: no {vqa_dir / 'videos' / rec.video_id}.<ext> for video_id {rec.video_id!r}")
            prompt.append(format_question({"question": rec.question, "choices": rec.choices}, prompts.mcq_suffix))
            target.append(rec.answer)
    else:
        assert item.annotation is not None
        text = item.annotation.read_bytes()
        try:
            raw = json.loads(text.decode("utf-8"))
        except UnicodeDecodeError as exc:
            return None, (item.where, f"malformed JSON (not UTF-8: {exc.reason})")
        except json.JSONDecodeError as exc:
            return None, (item.where, f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
        try:
            ann = validate_source(kind, raw)
        except ValidationError as exc:
            return None, (item.where, f"wrong schema for {kind}: {schema_error_text(exc)}")
        prompt = prompts.caption
        if kind == "human_annotated":
            target = target_human(raw)
        elif kind == "cv_annotated":
            target = target_cv(ann)  # type: ignore[arg-type]
        else:
            target = target_reason1(ann)  # type: ignore[arg-type]
    assert item.video is not None
    try:
        info = probe(item.video)
    except Exception as exc:  # VideoError, or anything a broken file makes PyAV raise
        problem = getattr(exc, "problem", None) or str(exc)
        return None, (str(item.video), f"unreadable video: {problem}")
    unusable = sampling_problem(info, cfg.custom.vision)
    if unusable:
        return None, (str(item.video), f"unusable video: {unusable}")
    sample = {
        "id": item.id,
        "target": target,
        "prompt": prompt,
        "video_abs": str(item.video.resolve()),
        "frames": info.total_frames,
        "fps": info.fps,
        "duration": info.duration,
        "height": info.height,
        "width": info.width,
    }
    return sample, None


# ----------------------------------------------------------------------------- one source


def _settings_hash(kind: str, cfg: RecipeConfig) -> str:
    p = cfg.avcap.prompts
    settings = {"format": FORMAT, "kind": kind, "system": p.system, "caption": p.caption,
                "mcq_suffix": p.mcq_suffix, "vision": cfg.custom.vision.model_dump(mode="json"),
                "checks": ["probe", "sampling plan"]}  # inputs accepted before a check was added get it
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def curate_source(name: str, src: CurateSource, cfg: RecipeConfig, out_dir: Path, *,
                  workers: int = 8, probe: Optional[Callable] = None) -> tuple[SourceCounts, list[Problem]]:
    if probe is None:
        from avcap.video import (
            probe,  # looked up per call: tests replace avcap.video.probe
        )
    raw = cfg.resolve(src.path)
    if src.kind == "vqa":
        if not _vqa_file(raw).is_file():
            raise CurateError(f"avcap.curate.sources.{name}.path: {_vqa_file(raw)} does not exist")
        items = _vqa_items(raw)
        if src.turns == "per_video":
            items = _group_by_video(items)
        vqa_dir: Optional[Path] = _vqa_file(raw).parent
    else:
        if not raw.is_dir():
            raise CurateError(f"avcap.curate.sources.{name}.path: {raw} is not a directory")
        if not (raw / "annotations").is_dir() and not (raw / "videos").is_dir():
            raise CurateError(f"avcap.curate.sources.{name}.path: {raw} has neither annotations/ nor videos/")
        items = _pair_items(raw)
        vqa_dir = None

    conv_dir = out_dir / CONVERSATIONS
    conv_dir.mkdir(parents=True, exist_ok=True)
    for d in (out_dir, conv_dir):  # what a killed run's atomic writes left
        remove_stale_temp_files(d)
    progress_path = out_dir / PROGRESS
    done = latest_by_key(iter_records(progress_path))
    settings = _settings_hash(src.kind, cfg)
    counts = SourceCounts(kind=src.kind, path=str(raw), inputs=len(items))
    problems: list[Problem] = []
    results: dict[str, dict] = {}

    todo: list[tuple[_Item, str]] = []
    for item in items:
        fp = _fingerprint(item, settings)
        prev = done.get(item.id)
        if prev is not None and prev.get("fp") == fp and (
            prev.get("problem") or (conv_dir / f"{item.id}.json").exists()
        ):
            results[item.id] = prev
            counts.reused += 1
        else:
            todo.append((item, fp))

    def work(job: tuple[_Item, str]) -> dict:
        item, fp = job
        sample, problem = _build(item, src.kind, cfg, vqa_dir, probe)
        if problem:
            return {"key": item.id, "fp": fp, "problem": {"file": problem[0], "reason": problem[1]}}
        assert sample is not None
        conv_file = conv_dir / f"{item.id}.json"
        video_rel = os.path.relpath(sample.pop("video_abs"), conv_dir)
        conv = make_conversation(cfg.avcap.prompts.system, video_part(video_rel, cfg.custom.vision),
                                 sample.pop("prompt"), sample.pop("target"))
        write_json_atomic(conv_file, conv)
        sample["conversation"] = f"{CONVERSATIONS}/{item.id}.json"
        sample["video"] = os.path.relpath(conv_dir / video_rel, out_dir)
        return {"key": item.id, "fp": fp, "sample": sample}

    with RecordWriter(progress_path, fsync=False) as log, ThreadPoolExecutor(max(1, workers)) as pool:
        for rec in pool.map(work, todo):
            log.append(rec)
            results[rec["key"]] = rec

    samples = []
    for item in items:
        rec = results[item.id]
        if rec.get("problem"):
            problems.append(Problem(name, rec["problem"]["file"], rec["problem"]["reason"]))
        else:
            samples.append(rec["sample"])
    counts.written, counts.unusable = len(samples), len(problems)
    assert counts.inputs == counts.written + counts.unusable

    keep = {Path(s["conversation"]).name for s in samples}
    for stale in conv_dir.glob("*.json"):
        if stale.name not in keep:
            stale.unlink()
    write_meta(out_dir, name, src, raw, cfg, samples)
    # compact the progress log to exactly the current inputs (it only grows across reruns otherwise)
    write_records_atomic(progress_path, (results[i.id] for i in items))
    return counts, problems


def write_meta(out_dir: Path, name: str, src: CurateSource, raw: Path, cfg: RecipeConfig, samples: list[dict]) -> None:
    """`meta.json`: the source's description and its samples, paths relative to `out_dir`:
    `{"format", "source", "kind", "raw_path", "vision", "system_prompt", "count",
      "samples": [{"id", "conversation", "video", "frames", "fps", "duration", "height", "width"}]}`."""
    write_json_atomic(out_dir / cfg.custom.dataset.meta_file, {
        "format": FORMAT,
        "avcap_version": __version__,
        "source": name,
        "kind": src.kind,
        "raw_path": str(raw),
        "vision": cfg.custom.vision.model_dump(mode="json", exclude_none=True),
        "system_prompt": cfg.avcap.prompts.system,
        "count": len(samples),
        "samples": samples,
    })


# ----------------------------------------------------------------------------- whole run


def curate(cfg: RecipeConfig, out: Optional[str | Path] = None, *, workers: int = 8,
           echo: Callable[[str], None] = print) -> CurationReport:
    """Curate every `[avcap.curate.sources.*]` into `out` (default: [custom.dataset] dataset_root);
    writes `report.json` there, prints the counts and every unusable input, returns the report."""
    sources = cfg.avcap.curate.sources
    if not sources:
        raise CurateError(f"{cfg.source or '<config>'}: no [avcap.curate.sources.<subdirectory>] tables; nothing to curate")
    root = Path(out) if out is not None else cfg.resolve(cfg.custom.dataset.dataset_root)
    root = root.resolve()
    remove_stale_temp_files(root)  # a killed run's report.json.tmp (each source cleans its own directories)
    report = CurationReport(dataset_root=str(root))
    for name, src in sources.items():
        if "/" in name or name in ("", ".", ".."):
            raise CurateError(f"avcap.curate.sources.{name!r}: a source name must be a plain subdirectory name")
        counts, problems = curate_source(name, src, cfg, root / name, workers=workers)
        report.sources[name] = counts
        report.problems += problems
    write_json_atomic(root / REPORT, report.to_json())
    _print_report(report, echo)
    missing = [s for s in cfg.custom.dataset.subdirectories if s not in sources and not (root / s / cfg.custom.dataset.meta_file).exists()]
    if missing:
        echo(f"warning: [custom.dataset] subdirectories {missing} have no [avcap.curate.sources] entry and no meta.json under {root}")
    return report


def _print_report(report: CurationReport, echo: Callable[[str], None], max_lines: int = 50) -> None:
    echo(f"curated into {report.dataset_root}")
    echo(f"{'source':<20} {'kind':<16} {'inputs':>7} {'written':>7} {'unusable':>8} {'reused':>7}")
    for name, c in report.sources.items():
        echo(f"{name:<20} {c.kind:<16} {c.inputs:>7} {c.written:>7} {c.unusable:>8} {c.reused:>7}")
    if report.problems:
        echo(f"{len(report.problems)} unusable input(s):")
        for p in report.problems[:max_lines]:
            echo(f"  {p.source}: {p.file}: {p.reason}")
        if len(report.problems) > max_lines:
            echo(f"  ... {len(report.problems) - max_lines} more in {Path(report.dataset_root) / REPORT}")


# ----------------------------------------------------------------------------- reading back


@dataclass
class CuratedSource:
    name: str
    root: Path
    meta: dict[str, Any]

    @property
    def samples(self) -> list[dict[str, Any]]:
        return self.meta["samples"]

    def conversation_path(self, i: int) -> Path:
        return self.root / self.samples[i]["conversation"]

    def video_path(self, i: int) -> Path:
        return (self.root / self.samples[i]["video"]).resolve()


def read_source(dataset_root: str | Path, name: str, meta_file: str = "meta.json") -> CuratedSource:
    root = Path(dataset_root) / name
    meta_path = root / meta_file
    if not meta_path.is_file():
        raise CurateError(f"{meta_path}: no such file (run `avcap curate` for source {name!r}, or fix [custom.dataset])")

    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("samples"), list):
        raise CurateError(f"{meta_path}: not an avcap meta.json (no 'samples' list)")
    return CuratedSource(name, root, meta)


def discover_sources(dataset_root: str | Path, meta_file: str = "meta.json") -> list[str]:
    """Every subdirectory of `dataset_root` with a meta file, sorted."""
    root = Path(dataset_root)
    return sorted(p.parent.name for p in root.glob(f"*/{meta_file}"))
