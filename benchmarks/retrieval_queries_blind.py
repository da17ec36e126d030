"""Blind held-out queries for the scenario-search retrieval benchmark.

Written 2026-12-06 by a helper session of the avcap project, as an independent check on the
search feature (query understanding / synonym lexicon) that another session is building.

Written BLIND: the author did not open benchmarks/query_understanding.py,
benchmarks/retrieval_queries.py, benchmarks/bench_retrieval.py, benchmarks/RESULTS.md, anything
under benchmarks/runs/, any file under src/avcap/scenarios/, or any file whose name contains
"lexicon", "synonym" or "alias", and ran no `git log -p` / `git show` on them. So these queries
know neither the search code nor the other query set. What was read: src/avcap/bench/pool.json
(the attribute questions), src/avcap/demo/truth.py (how the world truth answers them),
src/avcap/demo/synth/world.py, scene.py and annotate.py (what scenes exist, the caption wording)
and benchmarks/scenario_data.py (how the benchmark's records are made).

Each query is typed the way an ML engineer on an AV data team would search for scenarios: short
keyword strings and sentences, British and American words, some slang. Its fact words are NOT the
reference caption generator's words for those facts (annotate.py; checked against the vocabulary
of the captions of the 3,000 benchmark scenes, variants 0-3): "motorway"/"freeway" not "highway",
"downpour" not "rain", "mist" not "fog", "small hours" not "night", "sundown" not "dusk",
"stoplight" not "traffic light", "peds"/"foot traffic" not "pedestrians", "kids" not "children",
"pylons" not "cones", "curb" not "kerb" and so on. Generic words (ego, lane, road, car, left ...)
are unavoidable and left in.

`where` is the query's meaning as a predicate over the world-truth answers of the packaged pool
(attribute name -> the letters that match; several attributes: all must match). A clip is
relevant iff its world-truth letters satisfy `where`.

The count after each query is the number of the 3,000 benchmark scenes (`sample_scene(seed)`,
seeds 7_000_000 + i as benchmarks/scenario_data.py makes them, the demo's 160x96 4 s 4 fps
settings) whose world truth matches; each is at least 40. Recount with

    python benchmarks/retrieval_queries_blind.py [--scenes 3000]
"""

from __future__ import annotations

QUERIES: list[dict] = [
    # ------------------------------------------------------------------ single attribute
    {"id": "b01", "split": "blind", "kind": "single", "text": "motorway footage",
     "where": {"area": ["D"]}},  # 689 / 3000
    {"id": "b02", "split": "blind", "kind": "single", "text": "skyscraper canyons, tower blocks either side",
     "where": {"buildings": ["D"]}},  # 392 / 3000
    {"id": "b03", "split": "blind", "kind": "single", "text": "golden hour or sundown drives",
     "where": {"lighting": ["C"]}},  # 1026 / 3000
    {"id": "b04", "split": "blind", "kind": "single", "text": "any blues-and-twos on screen? squad cars, ambos",
     "where": {"emergency_vehicle": ["A", "B", "C"]}},  # 361 / 3000
    {"id": "b05", "split": "blind", "kind": "single",
     "text": "show me clips where we're stuck in a tailback, queue at a standstill",
     "where": {"traffic_flow": ["C"]}},  # 278 / 3000
    {"id": "b06", "split": "blind", "kind": "single", "text": "ego hangs a left",
     "where": {"ego_turn": ["A"]}},  # 344 / 3000
    {"id": "b07", "split": "blind", "kind": "single", "text": "Find drives on slippery tarmac",
     "where": {"road_surface": ["B"]}},  # 1368 / 3000
    {"id": "b08", "split": "blind", "kind": "single", "text": "sweeping right-hander",
     "where": {"road_bend": ["C"]}},  # 329 / 3000
    {"id": "b09", "split": "blind", "kind": "single", "text": "I want scenes with a motorbike directly in front of us",
     "where": {"lead_vehicle": ["C"]}},  # 208 / 3000
    {"id": "b10", "split": "blind", "kind": "single", "text": "high street shopfronts",
     "where": {"buildings": ["C"]}},  # 361 / 3000
    {"id": "b11", "split": "blind", "kind": "single", "text": "clips with kids around",
     "where": {"child": ["A", "B"]}},  # 583 / 3000
    # ------------------------------------------------------------------ 2-3 attributes
    {"id": "b12", "split": "blind", "kind": "conjunction", "text": "peds out in a downpour in the small hours",
     "where": {"lighting": ["D"], "weather": ["C"], "pedestrian_groups": ["A", "B", "C"]}},  # 128 / 3000
    {"id": "b13", "split": "blind", "kind": "conjunction", "text": "expressway in bright sunshine",
     "where": {"area": ["D"], "lighting": ["A"]}},  # 58 / 3000
    {"id": "b14", "split": "blind", "kind": "conjunction", "text": "ego halts at a stoplight on slick roads",
     "where": {"ego_stop": ["A"], "road_surface": ["B"]}},  # 232 / 3000
    {"id": "b15", "split": "blind", "kind": "conjunction", "text": "bikes in the suburbs",
     "where": {"area": ["B"], "cyclist": ["A", "B"]}},  # 150 / 3000
    {"id": "b16", "split": "blind", "kind": "conjunction",
     "text": "ego held up at a 4-way the whole clip, never gets going",
     "where": {"junction": ["B"], "ego_moving": ["D"]}},  # 169 / 3000
    {"id": "b17", "split": "blind", "kind": "conjunction", "text": "freeway, ego shifts one lane leftwards",
     "where": {"area": ["D"], "ego_lane_change": ["A"]}},  # 184 / 3000
    {"id": "b18", "split": "blind", "kind": "conjunction", "text": "ego gives way to peds at the xing",
     "where": {"ego_stop": ["C"], "pedestrian_crossing": ["A"]}},  # 154 / 3000
    {"id": "b19", "split": "blind", "kind": "conjunction", "text": "wooded backroads at sundown",
     "where": {"area": ["C"], "roadside": ["C"], "lighting": ["C"]}},  # 172 / 3000
    {"id": "b20", "split": "blind", "kind": "conjunction", "text": "gridlock in the town centre",
     "where": {"area": ["A"], "traffic_flow": ["C"]}},  # 48 / 3000
    {"id": "b21", "split": "blind", "kind": "conjunction", "text": "gloomy, sunless afternoon on the motorway",
     "where": {"area": ["D"], "weather": ["B"], "lighting": ["B"]}},  # 54 / 3000
    {"id": "b22", "split": "blind", "kind": "conjunction", "text": "cars sat along the curb in the 'burbs",
     "where": {"area": ["B"], "parked_vehicles": ["A", "B", "C"]}},  # 348 / 3000
    {"id": "b23", "split": "blind", "kind": "conjunction", "text": "Ego sets off from a stoplight once it flips",
     "where": {"traffic_light": ["A"], "ego_moving": ["C"]}},  # 301 / 3000
    # ------------------------------------------------------------------ rare events
    {"id": "b24", "split": "blind", "kind": "rare", "text": "cop car with its blues on coming our way",
     "where": {"emergency_vehicle": ["A"], "emergency_lights": ["A"]}},  # 131 / 3000
    {"id": "b25", "split": "blind", "kind": "rare", "text": "roadworks with a hi-vis crew on site",
     "where": {"road_workers": ["B", "C", "D"]}},  # 202 / 3000
    {"id": "b26", "split": "blind", "kind": "rare", "text": "cut-ins: another car barging in just ahead of ego",
     "where": {"lane_change_other": ["A"]}},  # 68 / 3000
    {"id": "b27", "split": "blind", "kind": "rare", "text": "bicycle coming at us head-on in the mist",
     "where": {"cyclist": ["B"], "weather": ["D"]}},  # 41 / 3000
    {"id": "b28", "split": "blind", "kind": "rare", "text": "misty motorway in the small hours",
     "where": {"area": ["D"], "weather": ["D"], "lighting": ["D"]}},  # 55 / 3000
    {"id": "b29", "split": "blind", "kind": "rare", "text": "youngster stepping out into the road ahead",
     "where": {"child": ["A", "B"], "nearest_person": ["C"]}},  # 91 / 3000
    {"id": "b30", "split": "blind", "kind": "rare", "text": "pylons down the LHS of ego's lane",
     "where": {"cones": ["A"]}},  # 79 / 3000
]


def count_matches(scenes: int = 3000) -> list[int]:
    """How many of the first `scenes` benchmark scenes match each query's `where` (world truth)."""
    from avcap.bench.pool import load_pool
    from avcap.demo.synth.world import sample_scene
    from avcap.demo.truth import answer

    scene = {"duration_s": 4.0, "fps": 4.0, "width": 160, "height": 96}  # benchmarks/scenario_data.py SCENE
    seed0 = 7_000_000  # benchmarks/scenario_data.py SEED0
    qid = {q.attribute_name: q.id for q in load_pool().questions}
    for q in QUERIES:
        for name in q["where"]:
            if name not in qid:
                raise SystemExit(f"benchmarks/retrieval_queries_blind.py: query {q['id']} field where: "
                                 f"unknown attribute {name!r}")
    names = sorted({n for q in QUERIES for n in q["where"]})
    counts = [0] * len(QUERIES)
    for i in range(scenes):
        rec = sample_scene(seed0 + i, **scene)
        letters = {n: answer(rec, qid[n]) for n in names}
        for k, q in enumerate(QUERIES):
            if all(letters[n] in allowed for n, allowed in q["where"].items()):
                counts[k] += 1
    return counts


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Count the benchmark scenes each blind query matches.")
    ap.add_argument("--scenes", type=int, default=3000)
    a = ap.parse_args(argv)
    for q, n in zip(QUERIES, count_matches(a.scenes)):
        print(f"{q['id']}  {q['kind']:11s} {n:5d}  {q['text']!r}  {q['where']}")


if __name__ == "__main__":
    main()
