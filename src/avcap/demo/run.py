"""`avcap demo`: the whole recipe on the embedded default, offline, on a CPU, in one command.

    avcap demo [--workdir avcap-demo] [--quick] [--seed N] [--publish DIR]

Steps (each resumable; a finished step leaves `steps/<n>-<name>.json` and is reused on a rerun):

 1. synth       render the procedural dash-cam world (training sources, AV_CAPTION, LingoQA)
 2. model       build the tiny Qwen3-VL (random weights, local tokenizer) — the "base model"
 3. bench       build the AV-VQA benchmark on the evaluation videos with the demo's question pool
                (`demo_pool.json`: DEMO_QUESTIONS of the packaged pool): the annotation side answers
                from the world truth, the video side is a simulated video answerer (the truth with a
                seeded share of wrong answers); the conflicts are reviewed automatically from the
                world truth (`avcap bench apply --auto`) and reported
 4. zero-shot   captions and MCQ answers of the base model, and their metrics (LingoQA too when its
                judge, a hub model, is available locally; offline it is skipped and the report says so)
 5. curate      the recipe's three sources plus `synth_vqa` (the benchmark builder run over the
                TRAINING videos with world-truth answers, one multi-turn conversation per video),
                blended; the 10x10 preview grid
 6. train       SFT from the demo's recipe TOML with checkpoints every `save_freq` steps
 7. evaluate    inference and metrics of every checkpoint
 8. scenarios   the best checkpoint labels the held-out clips (`avcap label`), `avcap index` builds the
                scenario database, example searches go into the report (avcap.demo.scenarios)
 9. report      plots and the Markdown report

The recipe TOML it runs is `avcap/demo/demo_config.toml` (package data), written normalized into the
workdir as `config.toml`; a workdir made with other settings is refused. `--publish DIR` also writes
a self-contained copy of the report (its plots, the metrics.json files it cites, the TOML and the
preview grid) to DIR — docs/demo in this repository. Learning from pixels: every MCQ prompt is the pool's question with its
fixed choices and the same suffix, every caption prompt is the same text, and the evaluation
videos are rendered from their own seeds and never trained on. The report compares the fine-tuned
model with chance and with a blind baseline that answers each question with its most frequent
training answer, and gives the accuracy on the questions where that blind answer is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from avcap import __version__
from avcap.bench import apply_reviews, bench_stats, build_benchmark
from avcap.bench.answerers import Answer, TruthAnswerer
from avcap.bench.parse import parse_choice
from avcap.bench.pool import Pool, load_pool
from avcap.core.config import load_config, to_toml
from avcap.core.records import (
    iter_records,
    latest_by_key,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from avcap.data.preview_grid import preview
from avcap.data.sources import curate
from avcap.demo.scenarios import best_checkpoint, build_scenarios, section_lines
from avcap.demo.synth import synthesize
from avcap.demo.tiny_model import build_tiny_model, count_parameters
from avcap.demo.truth import SyntheticWorld
from avcap.eval.infer import SharedEngine, run_inference
from avcap.eval.score import score_outputs
from avcap.report.markdown import build_report
from avcap.report.plot import fmt_delta, fmt_value, label_step
from avcap.train.loop import train

# Heavy libraries (PIL) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).

PACKAGED_CONFIG = Path(__file__).with_name("demo_config.toml")
MODEL_DIR = "models/tiny-qwen3-vl"
HEARTBEAT_S = 10.0


class DemoError(ValueError):
    """A problem the user can fix (a workdir made with other settings, a step that failed)."""


# ----------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """Everything the demo scales with (the TOML holds the rest)."""

    train_videos: int  # per training source (three sources)
    eval_videos: int
    lingoqa_segments: int
    width: int
    height: int
    seconds: float
    fps: float
    nframes: int
    max_steps: int
    save_freq: int
    questions: tuple[str, ...]  # the demo's question pool: these ids of the packaged pool, all asked of every video
    video_answerer_error: float  # share of wrong answers of the simulated video answerer

    def overrides(self) -> dict[str, Any]:
        """The TOML keys these sizes set."""
        n_required = sum(q.required for q in demo_pool(self.questions).questions)
        return {
            "train": {"max_num_steps": self.max_steps, "ckpt": {"save_freq": self.save_freq}},
            "custom": {"vision": {"max_pixels": self.width * self.height, "nframes": self.nframes}},
            "avcap": {"bench": {"pool": DEMO_POOL_FILE, "questions_per_video": len(self.questions),
                                "required_per_video": n_required}},
        }


# What a tiny model learns in a few hundred steps (design.md; measured again for issue 8 with
# benchmarks/demo_learning.py, table in benchmarks/RESULTS.md): with all 50 pool questions it learns
# only each question's answer prior in 600 steps. With these 7 questions asked as one multi-turn
# conversation per training video, 40% caption samples, per-sample loss and 400 steps of 16 it reads
# large, global cues from the pixels — lighting 35% -> 97%, how far the road is visible 28% -> 90%,
# weather 10% -> 75% (blind prior -> model; 66.8% overall against a 41.8% blind prior; 70.0% with 8
# frames and 25% captions) — while small or temporal cues (the lead vehicle's colour and action,
# people on foot, the ego turn) stay at their prior. One question per conversation learned far less in
# the same steps (51.4%), and with cosmos-rl's token-mean loss the captions drowned the answers (52.9%).
DEMO_QUESTIONS = ("sd02", "sd03", "ko02", "ci01", "am01", "eb02", "st03")
QUICK_QUESTIONS = ("sd02", "sd03", "st03")
DEMO_POOL_FILE = "demo_pool.json"

DEFAULT = Sizes(train_videos=80, eval_videos=40, lingoqa_segments=20, width=160, height=96, seconds=4.0, fps=4.0,
                nframes=8, max_steps=400, save_freq=100, questions=DEMO_QUESTIONS, video_answerer_error=0.15)
QUICK = Sizes(train_videos=30, eval_videos=16, lingoqa_segments=6, width=160, height=96, seconds=4.0, fps=4.0,
              nframes=8, max_steps=120, save_freq=60, questions=QUICK_QUESTIONS, video_answerer_error=0.15)


def demo_pool(ids: tuple[str, ...]):
    """The packaged pool's questions with these ids (choices, order and flags unchanged)."""

    full = load_pool()
    by_id = {q.id: q for q in full.questions}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DemoError(f"demo questions {missing} are not in the packaged pool {full.source}")
    return Pool(source=f"{full.source} (demo subset)", questions=tuple(by_id[i] for i in ids))


# ----------------------------------------------------------------------------- progress


class Progress:
    """Step banners and a heartbeat for steps that print nothing for a while."""

    def __init__(self, echo: Callable[[str], None], total: int):
        self.echo = echo
        self.total = total
        self.t0 = time.perf_counter()

    def elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60}:{s % 60:02d}"

    def banner(self, n: int, name: str, what: str) -> None:
        self.echo(f"[demo {self.elapsed()}] step {n}/{self.total} {name}: {what}")

    def line(self, msg: str) -> None:
        self.echo(f"[demo {self.elapsed()}]   {msg}")

    def heartbeat(self, what: Callable[[], str]):
        """Context manager: print `what()` every HEARTBEAT_S seconds until the block ends."""
        prog = self

        class _HB:
            def __enter__(self):
                self.stop = threading.Event()

                def run():
                    while not self.stop.wait(HEARTBEAT_S):
                        try:
                            prog.line(what())
                        except Exception:  # a heartbeat never takes the step down
                            pass

                self.thread = threading.Thread(target=run, daemon=True)
                self.thread.start()
                return self

            def __exit__(self, *exc):
                self.stop.set()
                self.thread.join()

        return _HB()


# ----------------------------------------------------------------------------- the workdir


@dataclass
class Ctx:
    workdir: Path
    sizes: Sizes
    quick: bool
    seed: int
    progress: Progress
    cfg: Any = None  # RecipeConfig, loaded from workdir/config.toml

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def synth_dir(self) -> Path:
        return self.workdir / "data" / "synth"

    @property
    def train_vqa_dir(self) -> Path:
        return self.cfg.resolve(self.cfg.avcap.curate.sources["synth_vqa"].path)

    @property
    def outputs_dir(self) -> Path:
        return self.cfg.resolve(self.cfg.avcap.outputs_dir)

    @property
    def report_dir(self) -> Path:
        return self.workdir / "report"

    def marker(self, n: int, name: str) -> Path:
        return self.workdir / "steps" / f"{n}-{name}.json"


def demo_config_text(sizes: Sizes, seed: int, quick: bool) -> str:
    """The recipe TOML the demo runs: the packaged one with these sizes, normalized (every key explicit)."""

    overrides = sizes.overrides()
    overrides["avcap"]["seed"] = seed
    cfg = load_config(PACKAGED_CONFIG, overrides=overrides)
    return ("# Written by `avcap demo` from avcap/demo/demo_config.toml (normalized, every key explicit).\n"
            f"# Mode: {'--quick' if quick else 'default'}. Paths are relative to this file.\n\n" + to_toml(cfg))


def prepare_workdir(workdir: Path, sizes: Sizes, seed: int, quick: bool) -> None:
    """Create the workdir, or check that an existing one was made with the same settings."""

    workdir.mkdir(parents=True, exist_ok=True)
    text = demo_config_text(sizes, seed, quick)
    settings = {"mode": "quick" if quick else "default", "seed": seed, "sizes": json.loads(json.dumps(asdict(sizes))),
                "config_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "avcap_version": __version__}
    meta = workdir / "demo.json"
    if meta.exists():
        old = read_json(meta)
        if old != settings:
            diff = sorted(k for k in settings if old.get(k) != settings[k])
            raise DemoError(f"{meta}: this workdir was made with other settings ({', '.join(diff)} differ: "
                            f"{old.get('mode')} run); use another --workdir or delete it")
    else:
        write_json_atomic(meta, settings)
    pool = demo_pool(sizes.questions)
    write_json_atomic(workdir / DEMO_POOL_FILE, {
        "name": "avcap demo pool", "version": 1,
        "questions": [q.model_dump() for q in pool.questions]})
    path = workdir / "config.toml"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)


# ----------------------------------------------------------------------------- steps


def step_synth(ctx: Ctx) -> dict:
    s = ctx.sizes
    n_total = s.eval_videos + 3 * s.train_videos
    ctx.progress.line(f"rendering {3 * s.train_videos} training videos (3 sources x {s.train_videos}), "
                      f"{s.eval_videos} evaluation videos and {s.lingoqa_segments} LingoQA segments at "
                      f"{s.width}x{s.height}, {s.seconds:g} s at {s.fps:g} fps")

    def count() -> str:
        done = sum(1 for _ in ctx.synth_dir.glob("*/*/videos/*.mp4"))
        return f"synth: {done}/{n_total} videos rendered"

    with ctx.progress.heartbeat(count):
        manifest = synthesize(ctx.synth_dir, videos=s.eval_videos, train_videos=s.train_videos,
                              lingoqa_segments=s.lingoqa_segments, seed=ctx.seed, width=s.width, height=s.height,
                              seconds=s.seconds, fps=s.fps, progress=False)
    return {"counts": manifest.get("counts"), "render_seconds_mean": manifest.get("render_seconds_mean"),
            "dir": str(ctx.synth_dir)}


def step_model(ctx: Ctx) -> dict:
    out = ctx.cfg.resolve(ctx.cfg.policy.model_name_or_path)
    if not (out / "config.json").is_file():
        build_tiny_model(out, size="tiny", seed=ctx.seed)
    n = count_parameters(out)
    ctx.progress.line(f"tiny Qwen3-VL at {out} ({n:,} parameters)")
    return {"path": str(out), "parameters": n}


class SimulatedVideoAnswerer:
    """Stands in for the recipe's VLM reading the video: the world truth, with a seeded share of
    answers replaced by another choice (so that the two answerers sometimes disagree)."""

    role = "video"
    reads = "video"
    batch_size = 256

    def __init__(self, error_rate: float, seed: int):
        self.truth = TruthAnswerer("video", SyntheticWorld())
        self.error_rate = error_rate
        self.seed = seed
        self.description = f"simulated video answerer: world truth with {error_rate:.0%} wrong answers (seed {seed})"

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.truth.fingerprint()}:{self.error_rate}:{self.seed}".encode()).hexdigest()[:12]

    def check(self, questions) -> list[str]:
        return self.truth.check(questions)

    def answer(self, items):
        out = []
        for item, a in zip(items, self.truth.answer(items)):
            rng = random.Random(f"{self.seed}:{item.video_id}:{item.question.id}")
            if a.letter and rng.random() < self.error_rate:
                wrong = rng.choice([k for k in item.question.choices if k != a.letter])
                a = Answer(wrong, wrong)
            out.append(a)
        return out

    def close(self) -> None:
        pass


def _bench(ctx: Ctx, dataset: Path, *, video_answerer) -> dict:
    cfg = ctx.cfg
    summary = build_benchmark(cfg, dataset, answerers={"annotation": TruthAnswerer("annotation", SyntheticWorld()), "video": video_answerer},
                              log=ctx.progress.line)
    applied = apply_reviews(dataset, auto=True, world=SyntheticWorld())
    return {"build": summary, "apply": applied}


def step_bench(ctx: Ctx) -> dict:
    s = ctx.sizes
    dataset = ctx.cfg.resolve(ctx.cfg.dataset("AV_CAPTION").root)
    res = _bench(ctx, dataset, video_answerer=SimulatedVideoAnswerer(s.video_answerer_error, ctx.seed))
    b, a = res["build"], res["apply"]
    stats = bench_stats(dataset, world=SyntheticWorld())
    ctx.progress.line(f"{b['pairs']} pairs: {b['agreed']} agreed, {b['review']} disagreed and were reviewed from the "
                      f"world truth ({a['outcomes']}); {a['pairs']} verified pairs in {a['vqa']}")
    return {"dataset": str(dataset), "pairs": b["pairs"], "agreed": b["agreed"], "reviewed": b["review"],
            "review_outcomes": a["outcomes"], "review_reasons": b.get("review_reasons"), "verified": a["pairs"],
            "answerers": b["answerers"], "stats": stats}


def lingoqa_judge_available(cfg) -> bool:
    """Lingo-Judge is a hub model: offline, LingoQA is scored only when it is a local directory."""
    judge = cfg.avcap.metrics.lingoqa_judge
    if cfg.resolve(judge).is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(judge, "config.json"), str)
    except Exception:
        return False


def _infer_and_score(ctx: Ctx, checkpoint: Optional[str], shared: Optional[SharedEngine] = None) -> dict:
    """Inference on AV_CAPTION (captions + MCQ) and, when its judge is at hand, LINGOQA; then metrics.
    `shared`: one engine for every checkpoint (`avcap infer --every-checkpoint`'s)."""

    datasets = ["AV_CAPTION"] + (["LINGOQA"] if lingoqa_judge_available(ctx.cfg) else [])
    results = {}
    for dataset in datasets:
        summary = run_inference(ctx.cfg, dataset=dataset, checkpoint=checkpoint, outputs_dir=ctx.outputs_dir,
                                progress=True, log=ctx.progress.line, shared=shared)
        (results[dataset],) = score_outputs(summary["out_dir"], cfg=ctx.cfg, log=ctx.progress.line)
    return results


def step_zero_shot(ctx: Ctx) -> dict:
    res = _infer_and_score(ctx, None)
    return {"metrics": _headline_numbers(res)}


def _link_tree(src: Path, dst: Path) -> int:
    """Hard-link (or copy) every file of src into dst (same relative paths); returns the count."""
    n = 0
    for f in sorted(src.iterdir()):
        target = dst / f.name
        if target.exists():
            n += 1
            continue
        dst.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
        n += 1
    return n


def step_curate(ctx: Ctx) -> dict:
    s = ctx.sizes
    # synth_vqa: every training video of the three sources, with its world record, as one bench dataset
    vqa = ctx.train_vqa_dir
    train = ctx.synth_dir / "train"
    n_videos = sum(_link_tree(train / src / "videos", vqa / "videos") for src in ("human_annotated", "cv_annotated", "reason1_sft"))
    _link_tree(train / "world", vqa / "world")
    ctx.progress.line(f"synth_vqa: asking the {len(s.questions)} demo pool questions of each of {n_videos} training videos "
                      "(answers from the world truth)")

    res = _bench(ctx, vqa, video_answerer=TruthAnswerer("video", SyntheticWorld()))
    report = curate(ctx.cfg, workers=2, echo=ctx.progress.line)
    root = ctx.cfg.resolve(ctx.cfg.custom.dataset.dataset_root)
    png, mp4 = preview(root, seed=ctx.cfg.avcap.curate.preview_seed, workers=2)
    ctx.progress.line(f"preview grid: {png}")
    return {"synth_vqa_pairs": res["apply"]["pairs"], "dataset_root": str(root), "preview_png": str(png),
            "preview_mp4": str(mp4), "sources": {k: asdict(v) if hasattr(v, "__dataclass_fields__") else v
                                                for k, v in report.sources.items()},
            "problems": len(report.problems)}


def step_train(ctx: Ctx) -> dict:
    t = ctx.cfg.train
    ctx.progress.line(f"SFT: {t.max_num_steps} steps of {t.train_batch_per_replica} samples, lr {t.optm_lr:g}, "
                      f"checkpoint every {t.ckpt.save_freq} steps -> {ctx.cfg.resolve(t.output_dir)}")
    train(ctx.cfg, echo=ctx.progress.line)
    ckpts = _checkpoints(ctx)
    return {"checkpoints": [str(p) for p in ckpts]}


def _checkpoints(ctx: Ctx) -> list[Path]:
    root = ctx.cfg.resolve(ctx.cfg.train.output_dir) / "checkpoints"
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / "config.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def step_evaluate(ctx: Ctx) -> dict:
    out = {}
    ckpts = _checkpoints(ctx)
    shared = SharedEngine(log=ctx.progress.line)  # built once, each checkpoint's weights put into it
    try:
        for i, ck in enumerate(ckpts, 1):
            ctx.progress.line(f"checkpoint {i}/{len(ckpts)}: {ck.name}")
            out[ck.name] = _headline_numbers(_infer_and_score(ctx, str(ck), shared))
    finally:
        shared.close()
    return {"checkpoints": out}


REPORT_TITLE = "avcap demo: the recipe on the procedural dash-cam world"


def _preview_png(ctx: Ctx) -> Optional[Path]:
    p = ctx.cfg.resolve(ctx.cfg.custom.dataset.dataset_root) / "preview.png"
    return p if p.is_file() else None


def step_scenarios(ctx: Ctx) -> dict:
    evaluated = read_json(ctx.marker(7, "evaluate"))["result"]
    best = best_checkpoint(evaluated, _checkpoints(ctx))
    ctx.progress.line(f"labelling the held-out clips with {best.name if best else 'the base model'}")
    return build_scenarios(ctx.cfg, ctx.workdir, best, ctx.progress.line)


def _scenario_lines(ctx: Ctx, report_dir: Path, pictures_dir: Optional[Path] = None) -> list[str]:
    marker = ctx.marker(8, "scenarios")
    return section_lines(read_json(marker)["result"], report_dir, pictures_dir) if marker.is_file() else []


def step_report(ctx: Ctx) -> dict:
    extra = demo_section(ctx, ctx.report_dir, ctx.config_path, _preview_png(ctx))
    intro = extra["lines"] + _scenario_lines(ctx, ctx.report_dir)
    path, summary = build_report(ctx.outputs_dir, ctx.report_dir / "report.md", title=REPORT_TITLE, intro=intro)
    heads = {h.metric: asdict(h) for h in summary.headlines}
    return {"report": str(path), "headlines": heads, "blind": extra["blind"]}


def publish(ctx: Ctx, dest: Path) -> Path:
    """A self-contained copy of the report under `dest` (e.g. docs/demo): the metrics.json files it cites,
    its plots, the recipe TOML and the preview grid, with every link inside `dest`."""

    dest = Path(dest)
    outputs = dest / "outputs"
    if outputs.exists():
        shutil.rmtree(outputs)
    for m in sorted(ctx.outputs_dir.glob("*/*/*/metrics.json")):
        target = outputs / m.relative_to(ctx.outputs_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(m, target)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ctx.config_path, dest / "config.toml")
    shutil.copy2(ctx.workdir / DEMO_POOL_FILE, dest / DEMO_POOL_FILE)  # the config's [avcap.bench] pool
    preview = _preview_png(ctx)
    if preview is not None:  # a JPEG copy: a tenth of the PNG's size, fine for a grid of photos
        from PIL import Image

        Image.open(preview).convert("RGB").save(dest / "preview.jpg", format="JPEG", quality=85)
    extra = demo_section(ctx, dest, dest / "config.toml", dest / "preview.jpg" if preview else None)
    pictures = dest / "scenarios"
    if pictures.exists():
        shutil.rmtree(pictures)
    intro = extra["lines"] + _scenario_lines(ctx, dest, pictures)
    path, _ = build_report(outputs, dest / "report.md", title=REPORT_TITLE, intro=intro)
    return path


# ----------------------------------------------------------------------------- demo-specific numbers


def _headline_numbers(res: dict) -> dict:
    out = {}
    av = res.get("AV_CAPTION") or {}
    if isinstance(av.get("vqa_accuracy"), dict):
        out["mcq_accuracy"] = av["vqa_accuracy"].get("overall")
    if isinstance(av.get("bleu"), dict):
        out["bleu"] = av["bleu"].get("value")
    lq = res.get("LINGOQA") or {}
    if isinstance(lq.get("lingoqa"), dict):
        out["lingoqa"] = lq["lingoqa"].get("score")
    return out


def blind_baselines(train_vqa: Path, eval_vqa: Path) -> dict:
    """What answering without the video scores on the evaluation set, learned from the training pairs:
    `letter` always gives the most frequent training letter; `prior` gives each question's most
    frequent training answer. Also the evaluation set's answer-letter distribution."""

    train = list(iter_records(train_vqa))
    ev = list(iter_records(eval_vqa))
    letters = Counter(r["answer"] for r in train)
    top_letter = letters.most_common(1)[0][0] if letters else None
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        counts[r["question_id"]][r["answer"]] += 1
    prior = {q: c.most_common(1)[0][0] for q, c in counts.items()}
    hits = [prior.get(r["question_id"]) == r["answer"] for r in ev]
    n = len(ev)
    missed = [r for r, h in zip(ev, hits) if not h]
    return {
        "letter_accuracy_where_prior_wrong": (sum(r["answer"] == top_letter for r in missed) / len(missed)) if missed else None,
        "pairs": n,
        "letter": top_letter,
        "letter_accuracy": (sum(r["answer"] == top_letter for r in ev) / n) if n else None,
        "prior_accuracy": (sum(hits) / n) if n else None,
        "prior_accuracy_by_question": _mean_by(((r["question_id"], h) for r, h in zip(ev, hits))),
        "eval_letters": dict(sorted(Counter(r["answer"] for r in ev).items())),
        "prior_wrong_keys": sorted(r["key"] for r, h in zip(ev, hits) if not h),
    }


def _mean_by(pairs) -> dict[str, float]:
    groups: dict[str, list] = defaultdict(list)
    for k, v in pairs:
        groups[k].append(bool(v))
    return {k: sum(v) / len(v) for k, v in groups.items()}


def accuracy_by_question(mcq_jsonl: Path) -> dict[str, float]:
    """question id -> MCQ accuracy of one output set (letters parsed as the scorer does)."""

    recs = latest_by_key(iter_records(mcq_jsonl)).values()
    return _mean_by((r.get("question_id"), parse_choice(r.get("text"), r.get("choices")) == r.get("answer")) for r in recs)


def accuracy_on(keys: Optional[set[str]], mcq_jsonl: Path) -> Optional[float]:
    """MCQ accuracy of one output set (restricted to `keys` if given; letters parsed as the scorer does)."""

    recs = latest_by_key(iter_records(mcq_jsonl))
    got = [parse_choice(r.get("text"), r.get("choices")) == r.get("answer") for k, r in recs.items() if keys is None or k in keys]
    return sum(got) / len(got) if got else None


def demo_section(ctx: Ctx, report_dir: Path, config_path: Path, preview_png: Optional[Path]) -> dict:
    """The demo's own part of the report: what ran, the benchmark review, and the blind baselines
    (links to the config and the preview relative to `report_dir`)."""

    markers = {p.stem.split("-", 1)[1]: read_json(p) for p in sorted((ctx.workdir / "steps").glob("*.json"))}
    dataset = ctx.cfg.resolve(ctx.cfg.dataset("AV_CAPTION").root)
    blind = blind_baselines(ctx.train_vqa_dir / "vqa.jsonl", dataset / "vqa.jsonl")
    wrong = set(blind.pop("prior_wrong_keys"))
    model = ctx.cfg.avcap.model_name
    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}%"

    rows = ["| no video: uniform guess | 25.0% | 25.0% |",
            f"| no video: always {blind['letter']} | {pct(blind['letter_accuracy'])} | "
            f"{pct(blind['letter_accuracy_where_prior_wrong'])} |",
            f"| no video: blind prior | {pct(blind['prior_accuracy'])} | 0.0% |"]
    per_question: dict[str, dict[str, float]] = {}
    for label_dir in sorted((ctx.outputs_dir / model).iterdir(), key=_label_order):
        mcq = label_dir / "AV_CAPTION" / "mcq.jsonl"
        if mcq.is_file():
            overall = accuracy_on(None, mcq)
            name = "zero-shot" if label_dir.name == "base" else label_dir.name
            rows.append(f"| {model} {name} | {pct(overall)} | {pct(accuracy_on(wrong, mcq))} |")
            per_question[name] = accuracy_by_question(mcq)
    pool = demo_pool(ctx.sizes.questions)
    q_rows = [f"| {q.id} | {q.category} | {q.question} | {pct(blind['prior_accuracy_by_question'].get(q.id))} | "
              + " | ".join(pct(acc.get(q.id)) for acc in per_question.values()) + " |" for q in pool.questions]

    s = ctx.sizes
    t = ctx.cfg.train
    b = markers.get("bench", {}).get("result", {})
    c = markers.get("curate", {}).get("result", {})
    n_params = markers.get("model", {}).get("result", {}).get("parameters", 0)
    weights = dict(zip(ctx.cfg.custom.dataset.subdirectories, ctx.cfg.custom.dataset.normalized_weights()))
    preview = preview_png
    dist = ", ".join(f"{k} {100 * v / max(1, blind['pairs']):.0f}%" for k, v in blind["eval_letters"].items())
    lingo = ("LingoQA is not scored: its judge (`wayveai/Lingo-Judge`, [avcap.metrics] lingoqa_judge) is a hub "
             "model and the demo runs offline; with a local copy of the judge the demo also runs and scores LingoQA."
             if not lingoqa_judge_available(ctx.cfg) else "LingoQA is scored with the local Lingo-Judge.")
    lines = [
        "## This run",
        "",
        f"`avcap demo{' --quick' if ctx.quick else ''}`, offline on a CPU: a tiny Qwen3-VL ({n_params:,} parameters, "
        "random weights, locally trained tokenizer) is evaluated zero-shot, fine-tuned on the procedural dash-cam "
        "world and re-evaluated at every checkpoint. "
        f"{3 * s.train_videos} training videos ({s.train_videos} per recipe source), {s.eval_videos} held-out "
        f"evaluation videos, {s.width}x{s.height}, {s.seconds:g} s at {s.fps:g} fps, {s.nframes} frames per video; "
        f"SFT {t.max_num_steps} steps of {t.train_batch_per_replica} samples, AdamW lr {t.optm_lr:g}, "
        f"checkpoints every {t.ckpt.save_freq} steps. Recipe TOML: "
        f"[`config.toml`]({os.path.relpath(config_path, report_dir)}). {lingo}",
        "",
        "**Benchmark build (recipe section 1.2).** Annotation side: the world truth; video side: "
        f"{b.get('answerers', {}).get('video', {}).get('description', 'a simulated video answerer')}. "
        f"{b.get('pairs', '?')} pairs: {b.get('agreed', '?')} agreed, {b.get('reviewed', '?')} disagreed and were "
        f"reviewed automatically from the world truth (decisions {b.get('review_outcomes', {})}), "
        f"{b.get('verified', '?')} verified pairs. Correct letters: {dist}.",
        "",
        f"**Training data.** The recipe's three caption sources plus `synth_vqa`, "
        f"{c.get('synth_vqa_pairs', '?')} four-choice questions on the training videos answered from the world "
        "truth (the benchmark builder run over the training videos); blend "
        + ", ".join(f"{k} {100 * w:.0f}%" for k, w in weights.items())
        + (f". Preview of 100 random training samples: [`{Path(preview).name}`]({os.path.relpath(preview, report_dir)})."
           if preview else "."),
        "",
        "**What answering without the video scores.** Every MCQ prompt is the pool question with its fixed "
        "choices and the same suffix (nothing video-specific) and the evaluation videos are never trained on, "
        "so the video is the only thing that differs between two answers to one question. Without it: "
        f"chance 25.0%; always answering the most frequent training letter ({blind['letter']}) "
        f"{pct(blind['letter_accuracy'])}; answering each question with its most frequent training answer "
        f"(*blind prior*) {pct(blind['prior_accuracy'])}. A model that beats these answerers, overall and on the "
        f"{len(wrong)} pairs where the blind prior is wrong, answers from the pixels:",
        "",
        "| Answerer | MCQ accuracy | Where the blind prior is wrong |",
        "| --- | ---: | ---: |",
        *rows,
        "",
        "**Per question** (MCQ accuracy on the held-out videos): where the model beats the blind prior it "
        "reads the answer from the pixels. The demo pool holds one or two questions per category, chosen "
        "from the packaged 50 by what a tiny model can learn in minutes on a CPU (avcap.demo.run.DEMO_QUESTIONS "
        "says what was measured); large, global cues (light, weather, visibility) are learned first, small "
        "or temporal ones (a vehicle's colour, people on foot, a turn) stay at their prior at this budget.",
        "",
        "| Question | Category | Text | Blind prior | " + " | ".join(per_question) + " |",
        "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in per_question) + " |",
        *q_rows,
        "",
    ]
    return {"lines": lines, "blind": blind | {"prior_wrong": len(wrong)}, "per_question": per_question}


def _label_order(p: Path) -> tuple:
    st = label_step(p.name)
    return (-1 if st is None else st, p.name)


# ----------------------------------------------------------------------------- driver

STEPS: list[tuple[str, str, Callable[[Ctx], dict]]] = [
    ("synth", "render the synthetic world", step_synth),
    ("model", "build the tiny base model", step_model),
    ("bench", "build and review the AV-VQA benchmark", step_bench),
    ("zero-shot", "evaluate the base model zero-shot", step_zero_shot),
    ("curate", "curate and blend the training data, preview grid", step_curate),
    ("train", "SFT with checkpoints", step_train),
    ("evaluate", "evaluate every checkpoint", step_evaluate),
    ("scenarios", "label the held-out clips, index and search them", step_scenarios),
    ("report", "plots and report", step_report),
]


def run_demo(workdir: str | Path = "avcap-demo", *, quick: bool = False, seed: int = 0,
             echo: Callable[[str], None] = print, publish_to: Optional[str | Path] = None) -> dict:
    """Run (or resume) every step; returns {"report": path, "steps": {name: marker}, "seconds": total}."""

    workdir = Path(workdir).resolve()
    sizes = QUICK if quick else DEFAULT
    prepare_workdir(workdir, sizes, seed, quick)
    prog = Progress(echo, len(STEPS))
    ctx = Ctx(workdir=workdir, sizes=sizes, quick=quick, seed=seed, progress=prog)
    ctx.cfg = load_config(ctx.config_path)
    echo(f"avcap demo{' --quick' if quick else ''}: workdir {workdir}")
    markers = {}
    for n, (name, what, fn) in enumerate(STEPS, 1):
        marker = ctx.marker(n, name)
        if marker.exists():
            markers[name] = read_json(marker)
            prog.banner(n, name, f"done earlier ({markers[name]['seconds']:.0f} s), reused")
            continue
        prog.banner(n, name, what)
        t0 = time.perf_counter()
        result = fn(ctx)
        secs = time.perf_counter() - t0
        markers[name] = {"step": name, "seconds": round(secs, 1), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                         "result": result}
        write_json_atomic(marker, markers[name])
        prog.line(f"{name} done in {secs:.0f} s")
    total = sum(m["seconds"] for m in markers.values())
    report = markers["report"]["result"]["report"]
    _print_summary(echo, markers, total)
    if publish_to is not None:
        echo(f"published: {publish(ctx, Path(publish_to))}")
    return {"report": report, "steps": markers, "seconds": total}


def _print_summary(echo: Callable[[str], None], markers: dict, total: float) -> None:
    r = markers["report"]["result"]
    echo("")
    echo(f"report: {r['report']}")
    names = {"vqa_accuracy": "MCQ-VQA accuracy", "bleu": "BLEU-4", "lingoqa": "LingoQA"}
    for metric, h in r["headlines"].items():
        echo(f"  {names.get(metric, metric)}: zero-shot {fmt_value(metric, h['zero_shot'])} -> "
             f"{h['best_label']} {fmt_value(metric, h['best'])} "
             f"({fmt_delta(metric, None if h['zero_shot'] is None else h['best'] - h['zero_shot'], h['zero_shot'])})")
    b = r.get("blind") or {}
    if b.get("prior_accuracy") is not None:
        echo(f"  without the video: chance 25.0%, always '{b['letter']}' {100 * b['letter_accuracy']:.1f}%, "
             f"blind prior (most frequent training answer per question) {100 * b['prior_accuracy']:.1f}%")
    echo("  step times: " + ", ".join(f"{k} {v['seconds']:.0f}s" for k, v in markers.items()) + f"; total {total:.0f} s")


def main(
    workdir: Path = typer.Option(Path("avcap-demo"), "--workdir", help="Where everything goes; a rerun reuses finished steps."),
    quick: bool = typer.Option(False, "--quick", help="Smaller world and fewer steps (about 2 minutes on 2 cores; what CI runs)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the world, the model and the benchmark."),
    publish_to: Optional[Path] = typer.Option(None, "--publish", help="Also copy the report, its plots and the "
                                              "metrics.json files it cites into this directory (e.g. docs/demo)."),
) -> None:
    """Run the whole recipe on the embedded default, offline, on CPU: synth, tiny model, benchmark, zero-shot
    evaluation, curation, SFT, checkpoint evaluation, plots and report."""
    try:
        run_demo(workdir, quick=quick, seed=seed, echo=typer.echo, publish_to=publish_to)
    except DemoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
