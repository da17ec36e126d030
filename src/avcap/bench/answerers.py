"""Benchmark answerers: one interface, three kinds.

- `EngineAnswerer(reads="annotation")` — an avcap engine that reads only the human annotation JSON
  as text (the recipe's LLM answerer);
- `EngineAnswerer(reads="video")` — an avcap engine that watches the video (the recipe's VLM);
- `TruthAnswerer` — a synthetic dataset's world truth (`WorldTruth`, e.g. the demo's
  `avcap.demo.truth.SyntheticWorld`, which reads `world/<video_id>.json`).

`answer(items)` returns one `Answer` per item, in order; a failure of one item is that item's
`error`, never an exception. Letters come from `avcap.bench.parse.parse_choice` (the same parser
scoring uses: unparseable stays unparseable).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from avcap.bench.errors import BenchError
from avcap.bench.parse import parse_choice
from avcap.bench.pool import Question, format_question
from avcap.core.config import Answerer as AnswererConfig
from avcap.core.config import RecipeConfig
from avcap.engines import Request, build_messages

ANNOTATION_INTRO = (
    "Below is the human annotation of a front dash-cam video recorded by an autonomous vehicle (the ego "
    "vehicle), as JSON. You cannot see the video: answer the question using only this annotation.\n\n"
)


@dataclass(frozen=True)
class Item:
    """One (video, question) pair to answer."""

    video_id: str
    question: Question
    video: Path
    annotation: Optional[Path]
    world: Optional[Path]

    @property
    def key(self) -> str:
        return f"{self.video_id}/{self.question.id}"


@dataclass
class Answer:
    letter: Optional[str]  # None: unparseable (or error)
    text: Optional[str]  # what the answerer said
    error: Optional[str] = None
    raw_text: Optional[str] = None


class Answerer(Protocol):
    role: str  # "annotation" | "video": the slot it fills in the benchmark
    description: str  # what it is, for records and the review file
    batch_size: int

    def fingerprint(self) -> str:
        """Changes whenever the answerer would answer differently (model, prompts, sampling)."""
        ...

    def check(self, questions: list[Question]) -> list[str]:
        """Problems that make it unable to answer these questions at all (empty: fine)."""
        ...

    def answer(self, items: list[Item]) -> list[Answer]: ...

    def close(self) -> None: ...


def parse_letter(text: Optional[str], choices: dict[str, str]) -> Optional[str]:
    if not text:
        return None
    return parse_choice(text, choices)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


def annotation_text(path: Path) -> str:
    """The annotation file as the answerer reads it: the JSON, re-indented (no other processing)."""
    obj = json.loads(path.read_text(encoding="utf-8"))
    return json.dumps(obj, indent=2, ensure_ascii=False)


class EngineAnswerer:
    """Any avcap engine; `reads` decides whether it gets the annotation text or the video."""

    def __init__(self, role: str, cfg: AnswererConfig, recipe: RecipeConfig):
        self.role = role
        self.reads = cfg.reads
        self.cfg = cfg
        self.prompts = recipe.avcap.prompts
        self.sampling = recipe.avcap.sampling.mcq
        self.vision = recipe.eval_vision
        self.model = cfg.engine.model
        if self.model and cfg.engine.name != "openai" and recipe.resolve(self.model).exists():
            self.model = str(recipe.resolve(self.model))  # a local directory, relative to the config
        self.description = f"engine {cfg.engine.name}:{cfg.engine.model} reading the {self.reads}"
        self._engine = None

    @property
    def engine(self):
        """Built on first use (after `check`), so a bad config fails before a model loads."""
        if self._engine is None:
            from avcap.engines import (  # looked up per call: tests replace avcap.engines.make_engine
                make_engine,  # an engine's libraries load only when one is used
            )

            try:
                self._engine = make_engine(self.cfg.engine, vision=self.vision, model=self.model)
            except (OSError, ValueError, ImportError) as exc:
                raise BenchError(
                    [f"[avcap.bench.{self.role}_answerer.engine]: cannot start {self.cfg.engine.name} engine for "
                     f"{self.model!r}: {type(exc).__name__}: {exc}"]
                ) from None
        return self._engine

    @property
    def batch_size(self) -> int:
        return self.engine.batch_size

    def fingerprint(self) -> str:
        e = self.cfg.engine
        return _sha(
            {
                "reads": self.reads,
                "engine": [e.name, e.model, e.reasoning, e.video_mode, e.image_format]
                + ([e.server, e.image_detail] if e.name == "openai" else []),  # what the server is sent
                "sampling": self.sampling.model_dump(),
                "prompts": [self.prompts.system, self.prompts.mcq_suffix, self.prompts.reasoning_suffix],
                "vision": self.vision.model_dump() if self.reads == "video" else None,
                "intro": ANNOTATION_INTRO if self.reads == "annotation" else None,
            }
        )

    def check(self, questions: list[Question]) -> list[str]:
        where = f"[avcap.bench.{self.role}_answerer.engine]"
        if not self.model:
            return [f"{where} model is not set (kind = \"engine\" needs one)"]
        looks_local = Path(self.model).is_absolute() or self.model.startswith(".")
        if self.cfg.engine.name != "openai" and looks_local and not Path(self.model).exists():
            return [f"{where} model {self.model!r}: no such directory"]
        return []

    def _request(self, item: Item):
        text = format_question(item.question, self.prompts.mcq_suffix)
        video = None
        if self.reads == "annotation":
            text = ANNOTATION_INTRO + annotation_text(item.annotation) + "\n\n" + text
        else:
            video = str(item.video)
        reasoning = self.prompts.reasoning_suffix if self.cfg.engine.reasoning else None
        messages = build_messages(self.prompts.system, text, video, reasoning_suffix=reasoning)
        return Request(key=item.key, messages=messages)

    def answer(self, items: list[Item]) -> list[Answer]:
        out: list[Optional[Answer]] = [None] * len(items)
        requests, index = [], []
        for i, item in enumerate(items):
            if self.reads == "annotation" and (item.annotation is None or not item.annotation.is_file()):
                out[i] = Answer(None, None, error=f"{item.video_id}: no annotation file ({item.annotation})")
                continue
            try:
                requests.append(self._request(item))
            except (OSError, ValueError) as exc:
                out[i] = Answer(None, None, error=f"{item.annotation}: cannot read ({exc})")
                continue
            index.append(i)
        if requests:
            results = self.engine.generate(requests, self.sampling)
            for i, res in zip(index, results):
                if res.error:
                    out[i] = Answer(None, res.text, error=res.error, raw_text=res.raw_text)
                else:
                    out[i] = Answer(parse_letter(res.text, items[i].question.choices), res.text, raw_text=res.raw_text)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class WorldTruth(Protocol):
    """Where a synthetic dataset's ground truth comes from: the letter its world record
    (`world/<video_id>.json`) makes true. The demo's world provides one
    (`avcap.demo.truth.SyntheticWorld`); the CLI hands it to the benchmark steps."""

    name: str
    questions: frozenset[str]  # the question ids it has a rule for

    def answer(self, world_file: Path, question_id: str) -> str:
        """Raises OSError / ValueError for an unreadable record, KeyError for a question without a rule."""
        ...


class TruthAnswerer:
    """A dataset's world truth (`WorldTruth`), behind the same interface as an engine."""

    batch_size = 256

    def __init__(self, role: str, world: WorldTruth):
        self.role = role
        self.world = world
        self.description = f"world truth ({world.name})"

    def fingerprint(self) -> str:
        return _sha({"truth": self.world.name, "rules": sorted(self.world.questions)})

    def check(self, questions: list[Question]) -> list[str]:
        missing = sorted({q.id for q in questions} - set(self.world.questions))
        if missing:
            return [
                f"[avcap.bench.{self.role}_answerer] kind = \"truth\" answers only the packaged pool's questions; "
                f"no world-truth rule for: {', '.join(missing)}"
            ]
        return []

    def answer(self, items: list[Item]) -> list[Answer]:
        out = []
        for item in items:
            if item.world is None:
                out.append(Answer(None, None, error=f"{item.video_id}: no world directory"))
                continue
            try:
                letter = self.world.answer(item.world, item.question.id)
            except (OSError, ValueError) as exc:
                out.append(Answer(None, None, error=f"{item.world}: no usable world record ({type(exc).__name__}: {exc})"))
                continue
            except KeyError as exc:
                out.append(Answer(None, None, error=f"{item.world}: {exc}"))
                continue
            out.append(Answer(letter, letter))
        return out

    def close(self) -> None:
        pass


def make_answerer(role: str, recipe: RecipeConfig, world: Optional[WorldTruth] = None) -> Answerer:
    """The configured answerer of `role`; `kind = "truth"` needs the dataset's `world` truth."""
    cfg: AnswererConfig = getattr(recipe.avcap.bench, f"{role}_answerer")
    if cfg.kind == "truth":
        if world is None:
            raise BenchError([f"[avcap.bench.{role}_answerer] kind = \"truth\": no world truth was given "
                              "(`avcap bench` gives the synthetic world's)"])
        return TruthAnswerer(role, world)
    return EngineAnswerer(role, cfg, recipe)
