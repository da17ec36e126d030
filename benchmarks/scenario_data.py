"""Scenario records of the synthetic world without rendering video: the data behind
benchmarks/bench_retrieval.py and benchmarks/bench_scale.py (issue 23, items 4 and 5).

    python3 benchmarks/scenario_data.py --out /work/scratch/scenarios/s3000 --scenes 3000
    python3 benchmarks/scenario_data.py --out /work/scratch/scenarios/m1100k --scenes 30000 \
        --records 1100000 --workers 2

writes a label output directory as `avcap label` does (docs/formats.md, "Scenario records"):

    questions.json              the packaged pool's questions, each under its attribute name
    scenarios/part-NNNNN.jsonl  one `avcap.scenario/1` record per clip
    truth/part-NNNNN.jsonl      {"seed", "variants", "attributes"} per scene: the world-truth letters

Each distinct scene is `avcap.demo.synth.world.sample_scene(seed)` (the demo's 160x96, 4 s, 4 fps
settings; ~10 ms each, nothing rendered). Its record holds the reference caption
(`annotate.caption(rec, variant=k)`) and the world-truth answer of every pool question
(`avcap.demo.truth.answer`, letter and choice text), labeller `synthetic-annotator` / engine
`world-truth`. With `--records` larger than `--scenes`, scene i gives several records, each with
another caption variant (other wording, other sentence order) and its own clip id
`<prefix><seed>-v<k>`: 1.1M records from 30k scenes are 30k distinct worlds, each described
~37 ways, not 1.1M distinct worlds. Generation is cached: a partition that exists is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from multiprocessing import Pool
from pathlib import Path

from avcap.bench.pool import PACKAGED, load_pool
from avcap.demo.synth.annotate import caption
from avcap.demo.synth.world import sample_scene
from avcap.demo.truth import answer
from avcap.scenarios.record import QUESTIONS_FILE, SCHEMA, QuestionSet, ScenarioRecord

SCENE = {"duration_s": 4.0, "fps": 4.0, "width": 160, "height": 96}  # the demo's clips
SEED0 = 7_000_000  # disjoint from the demo's video seeds (small) and the tokenizer corpus (>= 2**40)
SCENES_PER_PART = 1000


def question_set() -> QuestionSet:
    """Every packaged pool question under its attribute name (what `avcap label` asks by default)."""
    pool = load_pool()
    return QuestionSet.model_validate({
        "schema": "avcap.scenario-questions/1", "pool": PACKAGED,
        "attributes": [{"name": q.attribute_name, "question_id": q.id, "question": q.question,
                        "choices": dict(q.choices)} for q in pool.questions],
    })


def truth_attributes(rec, qs: QuestionSet) -> dict[str, str]:
    """attribute name -> the letter the world makes true."""
    return {a.name: answer(rec, a.question_id) for a in qs.attributes}


def labeller(model_name: str = "synthetic-annotator") -> dict:
    fp = hashlib.sha256(json.dumps(["avcap.demo.synth.annotate.caption", SCENE]).encode()).hexdigest()[:16]
    return {"model_name": model_name, "checkpoint": "reference", "checkpoint_path": "",
            "engine": "world-truth", "fingerprint": fp}


def record(clip_id: str, seed: int, text: str, letters: dict[str, str], qs: QuestionSet,
           labelled_at: str, who: dict) -> dict:
    """One scenario record as `ScenarioRecord.to_json()` writes it (nulls included)."""
    by_name = qs.by_name()
    return {
        "schema": SCHEMA, "clip_id": clip_id, "source": f"synthetic://avcap-world/{seed}",
        "error": None, "caption": text, "caption_json": None,
        "attributes": {n: {"letter": l, "answer": by_name[n].choices[l], "raw": None, "error": None}
                       for n, l in letters.items()},
        "clip": {"duration_s": SCENE["duration_s"], "width": SCENE["width"], "height": SCENE["height"],
                 "fps": SCENE["fps"], "frames": int(SCENE["duration_s"] * SCENE["fps"]), "size_bytes": None},
        "thumbnail": None, "preview": None, "labeller": who, "labelled_at": labelled_at,
    }


def clip_id(prefix: str, seed: int, variant: int) -> str:
    return f"{prefix}{seed}-v{variant}"


def _variants(scene_index: int, scenes: int, records: int) -> int:
    base, extra = divmod(records, scenes)
    return base + (1 if scene_index < extra else 0)


def _write_part(job: dict) -> dict:
    """Scenes [lo, hi) -> scenarios/part-NNNNN.jsonl and truth/part-NNNNN.jsonl (atomic; kept if present)."""
    out = Path(job["out"])
    name = f"part-{job['part']:05d}.jsonl"
    dst, tdst = out / "scenarios" / name, out / "truth" / name
    if dst.exists() and tdst.exists():
        return {"part": job["part"], "records": None, "seconds": 0.0, "cached": True}
    qs = question_set()
    who = labeller()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    n = 0
    tmp, ttmp = dst.with_suffix(".tmp"), tdst.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh, open(ttmp, "w", encoding="utf-8") as th:
        for i in range(job["lo"], job["hi"]):
            seed = job["seed0"] + i
            rec = sample_scene(seed, **SCENE)
            letters = truth_attributes(rec, qs)
            for k in range(_variants(i, job["scenes"], job["records"])):
                cid = clip_id(job["prefix"], seed, k)
                obj = record(cid, seed, caption(rec, variant=k), letters, qs, now, who)
                if n == 0:
                    ScenarioRecord.model_validate(obj)  # the dict is what the schema says
                fh.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
                n += 1
            th.write(json.dumps({"seed": seed, "variants": k + 1, "attributes": letters}, separators=(",", ":")) + "\n")
    os.replace(tmp, dst)
    os.replace(ttmp, tdst)
    return {"part": job["part"], "records": n, "seconds": time.perf_counter() - t0, "cached": False}


def generate(out: str | Path, scenes: int, records: int | None = None, workers: int = 1, seed0: int = SEED0,
             prefix: str = "syn", scenes_per_part: int = SCENES_PER_PART, quiet: bool = False) -> Path:
    """Write (or keep) a label output directory of `records` records from `scenes` distinct scenes."""
    out = Path(out)
    records = records or scenes
    if records < scenes:
        raise SystemExit(f"--records {records} < --scenes {scenes}: every scene gives at least one record")
    (out / "scenarios").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    meta = {"scenes": scenes, "records": records, "seed0": seed0, "prefix": prefix,
            "scenes_per_part": scenes_per_part, "scene": SCENE}
    mpath = out / "generator.json"
    if mpath.exists() and json.loads(mpath.read_text()) != meta:
        raise SystemExit(f"{mpath}: made with other settings ({json.loads(mpath.read_text())}); use another --out")
    mpath.write_text(json.dumps(meta, indent=2) + "\n")
    (out / QUESTIONS_FILE).write_text(json.dumps(question_set().model_dump(mode="json", by_alias=True), indent=2) + "\n")
    jobs = [{"out": str(out), "part": p, "lo": lo, "hi": min(lo + scenes_per_part, scenes), "scenes": scenes,
             "records": records, "seed0": seed0, "prefix": prefix}
            for p, lo in enumerate(range(0, scenes, scenes_per_part))]
    t0 = time.perf_counter()
    done = 0
    if workers > 1:
        with Pool(workers) as pool:
            results = pool.imap_unordered(_write_part, jobs)
            for r in results:
                done += 1
                if not quiet:
                    print(f"  part {r['part']:5d}: {'cached' if r['cached'] else str(r['records']) + ' records'} "
                          f"({done}/{len(jobs)}, {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    else:
        for j in jobs:
            r = _write_part(j)
            done += 1
            if not quiet:
                print(f"  part {r['part']:5d}: {'cached' if r['cached'] else str(r['records']) + ' records'} "
                      f"({done}/{len(jobs)}, {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return out


def read_truth(label_dir: str | Path) -> dict[str, dict[str, str]]:
    """clip_id -> attribute letters, from the truth/ partitions `generate` wrote."""
    prefix = json.loads((Path(label_dir) / "generator.json").read_text())["prefix"]
    out = {}
    for p in sorted((Path(label_dir) / "truth").glob("part-*.jsonl")):
        with open(p, encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                for k in range(r["variants"]):
                    out[clip_id(prefix, r["seed"], k)] = r["attributes"]
    return out


def simulated_labels(out: str | Path, scenes: int, error_rate: float, seed0: int = 8_000_000,
                     variant: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """A stand-in for (b) when no model's label output is at hand: `out/world/<clip_id>.json` (the
    truth SceneRecords, as the demo's data/eval/AV_CAPTION/world holds them) and `out/labels/`
    (a label output directory whose clip_id is the video id). Each record holds a reference
    caption (variant `variant`) and the world-truth answers with a seeded share `error_rate` of
    them replaced by another letter of the question, labeller "simulated-labeller". Not a model."""
    import random

    out = Path(out)
    world, labels = out / "world", out / "labels"
    world.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    qs = question_set()
    by_name = qs.by_name()
    who = {**labeller(f"simulated-labeller (world truth, {error_rate:.0%} of answers wrong)"), "engine": "simulated"}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rng = random.Random(seed)
    lines = []
    for i in range(scenes):
        vid = f"ev{seed0 + i}"
        rec = sample_scene(seed0 + i, video_id=vid, **SCENE)
        (world / f"{vid}.json").write_text(rec.model_dump_json())
        letters = truth_attributes(rec, qs)
        for name, letter in letters.items():
            if rng.random() < error_rate:
                letters[name] = rng.choice([x for x in by_name[name].choices if x != letter])
        obj = record(vid, seed0 + i, caption(rec, variant=variant), letters, qs, now, who)
        lines.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
    (labels / "scenarios.jsonl").write_text("\n".join(lines) + "\n")
    (labels / QUESTIONS_FILE).write_text(json.dumps(qs.model_dump(mode="json", by_alias=True), indent=2) + "\n")
    return labels, world


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the label output directory to write (kept parts are reused)")
    ap.add_argument("--scenes", type=int, required=True, help="distinct scenes (sample_scene calls)")
    ap.add_argument("--records", type=int, default=None, help="records in all (default: one per scene)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed0", type=int, default=SEED0)
    ap.add_argument("--prefix", default="syn", help="clip id prefix")
    ap.add_argument("--scenes-per-part", type=int, default=SCENES_PER_PART)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    generate(a.out, a.scenes, a.records, a.workers, a.seed0, a.prefix, a.scenes_per_part)
    print(f"{a.out}: {a.records or a.scenes} records from {a.scenes} scenes in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
