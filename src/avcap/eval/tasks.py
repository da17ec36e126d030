"""The evaluation tasks as objects (lmms-eval's tasks as data, without its registry magic).

A task owns what is specific to it: which dataset kind it applies to, its request plan (which
units — videos or LingoQA segments — it has work for, and one `Item` per request), the fields its
records carry beyond the common ones, and the metric its records are scored with
(`avcap.eval.score` dispatches on `Task.metric`). `avcap.eval.infer` runs any of them through one
runner; a new task (e.g. the scenario attributes of the labelling job) is a new class here and a
line in `TASKS`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from avcap.bench.parse import parse_choice
from avcap.bench.pool import Pool, PoolError, Question, format_question, load_pool
from avcap.bench.vqa import read_vqa_for
from avcap.core.config import Dataset, RecipeConfig
from avcap.eval.clips import ClipSetError, clip_set
from avcap.video import VIDEO_SUFFIXES, is_video_path

# Heavy libraries (pandas) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


class TaskError(ValueError):
    """A dataset a task cannot plan from (missing file, no videos): one line naming the file."""


@dataclass
class Item:
    """One request: a prompt about one video, and the fields its record carries."""

    key: str
    unit: str  # the shard unit: video id (AV_CAPTION) or segment id (LingoQA)
    video: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetView:
    """What a task plans from: the dataset's config entry, its root and the prompts."""

    cfg: RecipeConfig
    name: str
    ds: Dataset
    root: Path
    _clips: Optional[tuple[dict[str, Path], list[str]]] = field(default=None, repr=False)

    def videos(self) -> dict[str, Path]:
        """video / clip id -> path: `videos/` of an av_caption dataset; a clip set's clips."""
        if self.ds.kind != "clips":
            return video_files(self.root / "videos")
        return self.clip_set()[0]

    def clip_set(self) -> tuple[dict[str, Path], list[str]]:
        """(clips, the inputs that cannot be used) of a `clips` dataset (avcap.eval.clips), read once."""
        if self._clips is None:
            manifest = self.cfg.resolve(self.ds.manifest) if self.ds.manifest else None
            try:
                self._clips = clip_set(self.root, manifest)
            except ClipSetError as exc:
                raise TaskError(str(exc)) from None
        return self._clips


@dataclass
class TaskPlan:
    units: set[str]  # the units this task has work for
    items: Callable[[list[str]], list[Item]]  # its requests for the kept units, in unit order
    problems: list[str] = field(default_factory=list)  # input lines it cannot use, one line each


class Task:
    name: str  # also the record file: <name>.jsonl
    dataset_kinds: tuple[str, ...]
    metric: Optional[str]  # the metrics.json block its records are scored into (None: not scored)
    sampling: str  # its [avcap.sampling] table

    def plan(self, view: DatasetView, *, explicit: bool) -> Optional[TaskPlan]:
        """The task's requests on `view`; None when the dataset has nothing for it and it was not
        asked for by name (`explicit`: then a TaskError says what is missing)."""
        raise NotImplementedError

    def record_fields(self, item: Item, text: Optional[str]) -> dict[str, Any]:
        """Fields of the record beyond the common ones (key, item fields, text, error, tokens)."""
        return {}


def video_files(videos_dir: Path) -> dict[str, Path]:
    """video id -> file (or directory of frames) under `videos/`."""
    out: dict[str, Path] = {}
    if not videos_dir.is_dir():
        return out
    for p in sorted(videos_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if is_video_path(p):
            out.setdefault(p.stem if p.is_file() else p.name, p)
    return out


def _video_of(view: DatasetView, videos: dict[str, Path], vid: str) -> str:
    return str(videos.get(vid, view.root / "videos" / f"{vid}.mp4"))


# ----------------------------------------------------------------------------- caption


_FENCE_RE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*")


def parse_caption(text: str) -> tuple[Optional[dict[str, Any]], str]:
    """(parsed JSON caption or None, caption_text): the JSON's safety_analysis when it has one,
    else the text with code fences removed. Accepts fenced or bare JSON, with prose around it."""
    body = _FENCE_RE.sub("", text).strip()
    obj = None
    candidates = [body]
    i, j = body.find("{"), body.rfind("}")
    if 0 <= i < j:
        candidates.append(body[i: j + 1])
    for c in candidates:
        try:
            parsed = json.loads(c)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            obj = parsed
            break
    sa = obj.get("safety_analysis") if obj else None
    if isinstance(sa, str) and sa.strip():
        return obj, sa.strip()
    return obj, body


class CaptionTask(Task):
    """The recipe's AV caption of every video (scored with coco-caption BLEU-4)."""

    name, dataset_kinds, metric, sampling = "caption", ("av_caption", "clips"), "bleu", "caption"

    def plan(self, view: DatasetView, *, explicit: bool) -> Optional[TaskPlan]:
        videos = view.videos()
        prompt = view.cfg.avcap.prompts.caption
        problems = view.clip_set()[1] if view.ds.kind == "clips" else []

        def items(units: list[str]) -> list[Item]:
            return [Item(key=v, unit=v, video=_video_of(view, videos, v), text=prompt, fields={"video_id": v})
                    for v in units if v in videos]

        return TaskPlan(set(videos), items, problems)

    def record_fields(self, item: Item, text: Optional[str]) -> dict[str, Any]:
        caption, caption_text = parse_caption(text) if text is not None else (None, None)
        return {"caption": caption, "caption_text": caption_text}


# ----------------------------------------------------------------------------- MCQ


def format_mcq(question: str, choices: dict[str, str], suffix: str) -> str:
    return format_question({"question": question, "choices": choices}, suffix)


class MCQTask(Task):
    """The benchmark's verified questions of every video (`vqa.jsonl`, read by avcap.bench.vqa)."""

    name, dataset_kinds, metric, sampling = "mcq", ("av_caption",), "vqa_accuracy", "mcq"

    def plan(self, view: DatasetView, *, explicit: bool) -> Optional[TaskPlan]:
        vqa_path = view.root / view.ds.vqa
        if not vqa_path.is_file():
            if explicit:
                raise TaskError(f"{vqa_path}: no MCQ benchmark (build it with `avcap bench build/apply`)")
            return None
        try:
            vqa, problems = read_vqa_for(view.cfg, vqa_path)
        except PoolError as exc:
            raise TaskError(f"[avcap.bench] pool: {exc}") from None
        videos = view.videos()
        suffix = view.cfg.avcap.prompts.mcq_suffix

        def items(units: list[str]) -> list[Item]:
            order = {v: i for i, v in enumerate(units)}
            recs = sorted((r for r in vqa if str(r["video_id"]) in order), key=lambda r: order[str(r["video_id"])])
            return [
                Item(
                    key=str(r["key"]),
                    unit=str(r["video_id"]),
                    video=_video_of(view, videos, str(r["video_id"])),
                    text=format_mcq(r["question"], r["choices"], suffix),
                    fields={"video_id": str(r["video_id"]), "question_id": r.get("question_id"),
                            "category": r.get("category"), "choices": r["choices"], "answer": r.get("answer")},
                )
                for r in recs
            ]

        return TaskPlan({str(r["video_id"]) for r in vqa}, items, problems)


# ----------------------------------------------------------------------------- LingoQA


def lingoqa_rows(parquet: Path) -> list[dict[str, Any]]:
    """One row per question (the file has two reference rows per question)."""
    import pandas as pd

    if not parquet.is_file():
        raise TaskError(f"{parquet}: no LingoQA parquet ([avcap.datasets.*] parquet)")
    df = pd.read_parquet(parquet, columns=["question_id", "segment_id", "images", "question"])
    out, seen = [], set()
    for r in df.to_dict("records"):
        qid = str(r["question_id"])
        if qid in seen:
            continue
        seen.add(qid)
        images = list(r["images"])
        if not images:
            raise TaskError(f"{parquet}: question {qid} has no images")
        out.append({"question_id": qid, "segment_id": str(r["segment_id"]), "question": str(r["question"]), "images": images})
    return out


class LingoQATask(Task):
    """LingoQA's questions about each segment's frames (scored by the Lingo-Judge)."""

    name, dataset_kinds, metric, sampling = "lingoqa", ("lingoqa",), "lingoqa", "lingoqa"

    def plan(self, view: DatasetView, *, explicit: bool) -> Optional[TaskPlan]:
        rows = lingoqa_rows(view.root / view.ds.parquet)
        images_root = view.cfg.resolve(view.ds.images_root) if view.ds.images_root else view.root
        prompt = view.cfg.avcap.prompts.lingoqa

        def items(units: list[str]) -> list[Item]:
            order = {u: i for i, u in enumerate(units)}
            kept = sorted((r for r in rows if r["segment_id"] in order), key=lambda r: order[r["segment_id"]])
            return [
                Item(key=r["question_id"], unit=r["segment_id"], video=str(images_root / Path(r["images"][0]).parent),
                     text=f"{r['question']}\n{prompt}",
                     fields={"question_id": r["question_id"], "segment_id": r["segment_id"], "question": r["question"]})
                for r in kept
            ]

        return TaskPlan({r["segment_id"] for r in rows}, items)


# ----------------------------------------------------------------------------- scenario attributes


def attribute_questions(cfg: RecipeConfig) -> tuple[Pool, list[Question]]:
    """The [avcap.bench] pool and the questions `avcap label` asks every clip: [avcap.label]
    attributes (question ids or attribute names, in that order), else every question of the pool."""
    b = cfg.avcap.bench
    try:
        pool = load_pool(cfg.resolve(b.pool) if b.pool else None)
    except PoolError as exc:
        raise TaskError(f"[avcap.bench] pool: {exc.problems[0]}") from None
    wanted = cfg.avcap.label.attributes
    if wanted is None:
        return pool, list(pool.questions)
    by_name = {**{q.attribute_name: q for q in pool.questions}, **{q.id: q for q in pool.questions}}
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], list(by_name), n=1, cutoff=0.6)
        raise TaskError(f"[avcap.label] attributes: {unknown[0]!r} is neither a question id nor an attribute of "
                        f"{pool.source}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    ids = list(dict.fromkeys(by_name[w].id for w in wanted))
    return pool, [pool.by_id()[i] for i in ids]


class AttributesTask(Task):
    """The scenario attributes of every clip of a clip set: the pool's multiple-choice questions
    (weather, lighting, ego maneuver, ...), all asked about one video in a row, so the engine's
    shared-prefix path prefills each clip once for all of them."""

    name, dataset_kinds, metric, sampling = "attributes", ("clips",), None, "mcq"

    def plan(self, view: DatasetView, *, explicit: bool) -> Optional[TaskPlan]:
        videos = view.videos()
        _, questions = attribute_questions(view.cfg)
        suffix = view.cfg.avcap.prompts.mcq_suffix

        def items(units: list[str]) -> list[Item]:
            return [
                Item(key=f"{v}#{q.id}", unit=v, video=_video_of(view, videos, v), text=format_question(q, suffix),
                     fields={"clip_id": v, "attribute": q.attribute_name, "question_id": q.id, "choices": q.choices})
                for v in units if v in videos for q in questions
            ]

        return TaskPlan(set(videos), items)

    def record_fields(self, item: Item, text: Optional[str]) -> dict[str, Any]:
        return {"letter": parse_choice(text, item.fields["choices"]) if text is not None else None}


TASKS: dict[str, Task] = {t.name: t for t in (CaptionTask(), MCQTask(), LingoQATask(), AttributesTask())}


def tasks_for(kind: str) -> list[str]:
    return [name for name, t in TASKS.items() if kind in t.dataset_kinds]


def no_units_message(view: DatasetView) -> str:
    if view.ds.kind == "clips":
        return f"{view.root}: no clips"
    if view.ds.kind == "av_caption":
        return f"{view.root / 'videos'}: no videos ({', '.join(VIDEO_SUFFIXES)} or frame directories)"
    return f"{view.root}: dataset {view.name} has nothing to ask"
