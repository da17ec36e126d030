"""The query set of benchmarks/bench_retrieval.py (issue 23, item 4).

Each query is what a person would type to find scenarios, written in wording the caption
generators (`avcap.demo.synth.annotate`) do not use for that fact: "downpour" where they say
"rain"/"raining"/"rainy weather", "motorway" for "highway", "kid" for "child", "squad car" for
"police car". `where` is the query's meaning as a predicate over the world-truth answers of the
pool's attribute questions (attribute name -> the letters that match; several attributes: all must
match), so the set of matching clips is computed from the truth, never listed by hand.

`split` was fixed when the set was written, before any search was run: "dev" queries may be looked
at while improving the search, "heldout" queries only measured. Both are reported.
"""

from __future__ import annotations

QUERIES: list[dict] = [
    # --- one attribute -------------------------------------------------------------------
    {"id": "q01", "split": "dev", "kind": "single",
     "text": "driving through mist so murky you can barely see ahead",
     "where": {"weather": ["D"]}},
    {"id": "q02", "split": "heldout", "kind": "single",
     "text": "a downpour, water pouring onto the windscreen",
     "where": {"weather": ["C"]}},
    {"id": "q03", "split": "dev", "kind": "single",
     "text": "motorway driving",
     "where": {"area": ["D"]}},
    {"id": "q04", "split": "heldout", "kind": "single",
     "text": "a lonely lane out in the farmland",
     "where": {"area": ["C"]}},
    {"id": "q05", "split": "dev", "kind": "single",
     "text": "a gloomy, sunless sky",
     "where": {"weather": ["B"]}},
    {"id": "q06", "split": "heldout", "kind": "single",
     "text": "pitch black, in the small hours",
     "where": {"lighting": ["D"]}},
    {"id": "q07", "split": "dev", "kind": "single",
     "text": "a bike rider sharing the tarmac",
     "where": {"cyclist": ["A", "B", "C"]}},
    {"id": "q08", "split": "heldout", "kind": "single",
     "text": "our car hangs a right",
     "where": {"ego_turn": ["B"]}},
    {"id": "q09", "split": "dev", "kind": "single",
     "text": "we swing over into the lane on our left",
     "where": {"ego_lane_change": ["A"]}},
    {"id": "q10", "split": "heldout", "kind": "single",
     "text": "a kid on foot near the kerbside",
     "where": {"child": ["A", "B"]}},
    {"id": "q11", "split": "dev", "kind": "single",
     "text": "halted at a stoplight",
     "where": {"ego_stop": ["A"]}},
    {"id": "q12", "split": "heldout", "kind": "single",
     "text": "a slick, soaked tarmac",
     "where": {"road_surface": ["B"]}},
    # --- two or three attributes ---------------------------------------------------------
    {"id": "q13", "split": "dev", "kind": "conjunction",
     "text": "someone on foot walking over to the far side in darkness during a downpour",
     "where": {"pedestrian_crossing": ["A", "B"], "lighting": ["D"], "weather": ["C"]}},
    {"id": "q14", "split": "heldout", "kind": "conjunction",
     "text": "a foggy motorway at sundown",
     "where": {"area": ["D"], "weather": ["D"], "lighting": ["C"]}},
    {"id": "q15", "split": "dev", "kind": "conjunction",
     "text": "a farm track at sundown with a bike rider",
     "where": {"area": ["C"], "lighting": ["C"], "cyclist": ["A", "B", "C"]}},
    {"id": "q16", "split": "heldout", "kind": "conjunction",
     "text": "a bright, sunny morning in the town centre",
     "where": {"lighting": ["A"], "area": ["A"]}},
    {"id": "q17", "split": "dev", "kind": "conjunction",
     "text": "standing still behind something big like a lorry or a coach",
     "where": {"ego_maneuver": ["D"], "lead_vehicle": ["B"]}},
    {"id": "q18", "split": "heldout", "kind": "conjunction",
     "text": "people on foot going over in front of us while we wait motionless",
     "where": {"pedestrian_crossing": ["A", "B"], "ego_maneuver": ["D"]}},
    {"id": "q19", "split": "dev", "kind": "conjunction",
     "text": "the car ahead of us slams on its anchors on a drizzly day",
     "where": {"lead_vehicle_action": ["B"], "weather": ["C"]}},
    {"id": "q20", "split": "heldout", "kind": "conjunction",
     "text": "a leafy suburb with family homes under a moonless sky",
     "where": {"area": ["B"], "lighting": ["D"]}},
    {"id": "q21", "split": "dev", "kind": "conjunction",
     "text": "hanging a left in murky mist",
     "where": {"ego_turn": ["A"], "weather": ["D"]}},
    {"id": "q22", "split": "heldout", "kind": "conjunction",
     "text": "we pull off as soon as the stoplight lets us go",
     "where": {"traffic_light": ["A"], "ego_moving": ["C"]}},
    # --- rare edge cases -------------------------------------------------------------------
    {"id": "q23", "split": "dev", "kind": "rare",
     "text": "paramedics rushing past with sirens and strobes",
     "where": {"emergency_vehicle": ["B"]}},
    {"id": "q24", "split": "heldout", "kind": "rare",
     "text": "a squad car with its blue beacons going",
     "where": {"emergency_vehicle": ["A"]}},
    {"id": "q25", "split": "dev", "kind": "rare",
     "text": "roadworks crew in hi-vis jackets beside a line of pylons",
     "where": {"road_workers": ["B", "C", "D"]}},
    {"id": "q26", "split": "heldout", "kind": "rare",
     "text": "another motorist swerves in front of us from the neighbouring lane",
     "where": {"lane_change_other": ["A"]}},
    {"id": "q27", "split": "dev", "kind": "rare",
     "text": "firefighters' engine racing by",
     "where": {"emergency_vehicle": ["C"]}},
    {"id": "q28", "split": "heldout", "kind": "rare",
     "text": "a building site by the tarmac with workmen in hi-vis gear, after nightfall",
     "where": {"road_workers": ["B", "C", "D"], "lighting": ["D"]}},
]


def matches(where: dict[str, list[str]], attributes: dict[str, str]) -> bool:
    """Whether a clip's attribute letters satisfy a query's predicate (every attribute, any letter)."""
    return all(attributes.get(name) in letters for name, letters in where.items())
