"""A small world for `avcap serve`: rendered clips, a scenario database on them and a benchmark with
a review queue. Used by tests/test_serve.py, benchmarks/serve_screenshots.py and (on request)
benchmarks/bench_serve.py.

    python3 benchmarks/serve_data.py --out /tmp/serve-world --videos 12

writes

    OUT/synth/eval/AV_CAPTION/      `avcap synth` clips (H.264 MP4), annotations, world truth
    OUT/label/questions.json        the packaged pool's questions under their attribute names
    OUT/label/scenarios.jsonl       one `avcap.scenario/1` record per clip: the reference caption,
                                    the world truth's answer to every question, clip info,
                                    thumbnail and preview strip (avcap.label.thumbs) in OUT/label/pictures
    OUT/db/                         the scenario database (`avcap index` of OUT/label)
    OUT/synth/eval/AV_CAPTION/bench the benchmark: annotation side = world truth, video side = world
                                    truth with a seeded share of wrong answers (the demo's simulated
                                    VLM), so that some pairs disagree; bench/review.csv is their queue

The records' labeller says what made them (`synthetic-annotator`, checkpoint `reference`, engine
`world-truth`): nothing here runs a model.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from avcap.bench import build_benchmark, write_review_file
from avcap.bench.answerers import TruthAnswerer
from avcap.bench.pool import PACKAGED, load_pool
from avcap.core.config import load_config
from avcap.demo.run import SimulatedVideoAnswerer
from avcap.demo.synth import synthesize
from avcap.demo.synth.scene import SceneRecord
from avcap.demo.truth import SyntheticWorld, answer
from avcap.label.assemble import clip_info
from avcap.label.thumbs import write_pictures
from avcap.scenarios.db import open_db
from avcap.scenarios.record import (
    QUESTIONS_FILE,
    RECORDS_FILE,
    QuestionSet,
    ScenarioRecord,
)


def question_set() -> QuestionSet:
    pool = load_pool()
    return QuestionSet.model_validate({
        "schema": "avcap.scenario-questions/1", "pool": PACKAGED,
        "attributes": [{"name": q.attribute_name, "question_id": q.id, "question": q.question,
                        "choices": dict(q.choices)} for q in pool.questions],
    })


def label_from_truth(dataset: Path, out: Path) -> int:
    """Scenario records for every clip of `dataset` from its reference captions and world truth."""
    qs = question_set()
    out.mkdir(parents=True, exist_ok=True)
    (out / QUESTIONS_FILE).write_text(json.dumps(qs.model_dump(mode="json", by_alias=True), indent=2) + "\n")
    captions = {}
    for line in (dataset / "captions.jsonl").read_text().splitlines():
        if line.strip():
            obj = json.loads(line)
            captions[obj["video_id"]] = obj["caption"]
    who = {"model_name": "synthetic-annotator", "checkpoint": "reference", "checkpoint_path": "",
           "engine": "world-truth", "fingerprint": "serve-data-1"}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = []
    for video in sorted((dataset / "videos").glob("*.mp4")):
        vid = video.stem
        world = SceneRecord.model_validate_json((dataset / "world" / f"{vid}.json").read_bytes())
        thumb, preview = out / "pictures" / f"{vid}.jpg", out / "pictures" / f"{vid}.preview.jpg"
        write_pictures(video, thumb, preview, thumbnail_width=320, preview_frames=6, preview_height=72)
        info, _ = clip_info(video)
        attrs = {}
        for a in qs.attributes:
            letter = answer(world, a.question_id)
            attrs[a.name] = {"letter": letter, "answer": a.choices[letter]}
        rec = ScenarioRecord.model_validate({
            "schema": "avcap.scenario/1", "clip_id": vid, "source": str(video.resolve()), "caption": captions[vid],
            "attributes": attrs, "clip": info.model_dump(), "thumbnail": str(thumb.resolve()),
            "preview": str(preview.resolve()), "labeller": who, "labelled_at": now})
        lines.append(json.dumps(rec.to_json(), ensure_ascii=False))
    (out / RECORDS_FILE).write_text("\n".join(lines) + "\n")
    return len(lines)


def build_review_queue(dataset: Path, *, error_rate: float = 0.35, seed: int = 0) -> tuple[Path, int]:
    """`avcap bench build` with the world truth on the annotation side and the demo's simulated
    video answerer (world truth, `error_rate` of the answers wrong) on the other; then the review file."""
    cfg = load_config(None)
    build_benchmark(cfg, dataset, answerers={"annotation": TruthAnswerer("annotation", SyntheticWorld()),
                                             "video": SimulatedVideoAnswerer(error_rate, seed)},
                    log=lambda s: None)
    return write_review_file(dataset, world=SyntheticWorld(), force=True)


def build(out: Path, *, videos: int = 8, seed: int = 0, width: int = 320, height: int = 192, seconds: float = 3.0,
          fps: float = 8.0, workers: int = 2, bench: bool = True) -> dict[str, Path]:
    out = Path(out)
    synthesize(out / "synth", videos=videos, train_videos=0, lingoqa_segments=0, seed=seed, width=width,
               height=height, seconds=seconds, fps=fps, workers=workers)
    dataset = out / "synth" / "eval" / "AV_CAPTION"
    label_from_truth(dataset, out / "label")
    db = open_db(out / "db", create=True)
    db.ingest([out / "label"])
    paths = {"dataset": dataset, "label": out / "label", "db": out / "db"}
    if bench:
        paths["review"], _ = build_review_queue(dataset, seed=seed)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = build(args.out, videos=args.videos, seed=args.seed)
    for k, v in paths.items():
        print(f"{k}: {v}")
    print(f"avcap serve --db {paths['db']} --bench {paths['dataset']}")


if __name__ == "__main__":
    main()
