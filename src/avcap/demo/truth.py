"""The synthetic world's answer to every packaged pool question, read from its `SceneRecord`.

One rule per question id, returning the letter of the choice the record makes true. The rules
follow the choice texts of `pool.json` literally (where a question could have several answers, the
choice text states the precedence, e.g. "most of the pedestrians"). A user pool's own questions
have no rule: the truth answerer refuses them up front.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Optional

from avcap.demo.synth.scene import SceneRecord, Vehicle

Rule = Callable[[SceneRecord], str]
RULES: dict[str, Rule] = {}


def rule(qid: str):
    def register(fn: Rule) -> Rule:
        RULES[qid] = fn
        return fn

    return register


def answer(record: SceneRecord, question_id: str) -> str:
    try:
        fn = RULES[question_id]
    except KeyError:
        raise KeyError(f"no world-truth rule for question {question_id!r}") from None
    return fn(record)


def _pick(table: dict, key) -> str:
    return table[key]


def _first(items, key=lambda o: o.start_s):
    return min(items, key=key) if items else None


def _maneuver_time(v: Vehicle) -> float:
    return v.maneuver_start_s if v.maneuver_start_s is not None else v.start_s


def _lateral(side: str, position: Optional[str] = None) -> str:
    """left | right | ahead from a record's side (and position, for 'ahead' objects)."""
    if side in ("left", "right"):
        return side
    if position in ("ahead_left", "left"):
        return "left"
    if position in ("ahead_right", "right"):
        return "right"
    return "ahead"


TURNS = ("turning_left", "turning_right")
LANE_CHANGES = ("lane_change_left", "lane_change_right")
SIZE_CLASS = {  # ko09: choice letter of each drawn vehicle type
    "motorcycle": "A", "sedan": "A", "police_car": "A",
    "suv": "B", "pickup": "B", "van": "B", "ambulance": "B",
    "bus": "C", "truck": "C", "fire_truck": "C",
}

# ----------------------------------------------------------------------------- Scene Description


@rule("sd01")
def _sd01(r: SceneRecord) -> str:
    return _pick({"urban": "A", "suburban": "B", "rural": "C", "highway": "D"}, r.road.environment)


@rule("sd02")
def _sd02(r: SceneRecord) -> str:
    c = r.conditions
    if c.time_of_day == "day":
        return "A" if c.weather == "clear" else "B"
    return "C" if c.time_of_day == "dusk" else "D"


@rule("sd03")
def _sd03(r: SceneRecord) -> str:
    return _pick({"clear": "A", "overcast": "B", "rain": "C", "fog": "D"}, r.conditions.weather)


@rule("sd04")
def _sd04(r: SceneRecord) -> str:
    return "ABCD"[min(r.road.lanes_ego_direction, 4) - 1]


@rule("sd05")
def _sd05(r: SceneRecord) -> str:
    return _pick({"dry": "A", "wet": "B"}, r.conditions.road_condition)


@rule("sd06")
def _sd06(r: SceneRecord) -> str:
    if r.road.junction == "t_junction":
        return "C" if r.road.junction_side == "left" else "D"
    return _pick({"none": "A", "four_way": "B"}, r.road.junction)


@rule("sd07")
def _sd07(r: SceneRecord) -> str:
    kinds = {s.kind for s in r.signs}
    if r.traffic_light is not None:
        return "A"
    if "stop" in kinds:
        return "B"
    return "C" if "yield" in kinds else "D"


@rule("sd08")
def _sd08(r: SceneRecord) -> str:
    if r.road.lanes_oncoming == 0:
        return "A"
    if r.road.divided:
        return "D"
    return "B" if r.road.lanes_oncoming == 1 else "C"


@rule("sd09")
def _sd09(r: SceneRecord) -> str:
    return {(True, True): "A", (False, True): "B", (True, False): "C", (False, False): "D"}[
        (r.road.crosswalk, r.road.sidewalk)
    ]


@rule("sd10")
def _sd10(r: SceneRecord) -> str:
    return _pick({"none": "A", "houses": "B", "shops": "C", "high_rise": "D"}, r.road.buildings)


@rule("sd11")
def _sd11(r: SceneRecord) -> str:
    return "A" if r.construction is not None else "D"


@rule("sd12")
def _sd12(r: SceneRecord) -> str:
    kinds = {s.kind for s in r.signs}
    return {(True, False): "A", (False, True): "B", (True, True): "C", (False, False): "D"}[
        ("stop" in kinds, "speed_limit" in kinds)
    ]


@rule("sd13")
def _sd13(r: SceneRecord) -> str:
    return {(True, True): "A", (True, False): "B", (False, True): "C", (False, False): "D"}[
        (r.road.buildings != "none", r.road.trees)
    ]


# ----------------------------------------------------------------------------- Key Objects


@rule("ko01")
def _ko01(r: SceneRecord) -> str:
    lead = r.lead_vehicle()
    if lead is None:
        return "D"
    if lead.type == "motorcycle":
        return "C"
    return "A" if lead.type in ("sedan", "suv", "pickup", "police_car") else "B"


@rule("ko02")
def _ko02(r: SceneRecord) -> str:
    lead = r.lead_vehicle()
    if lead is None:
        return "D"
    if lead.color in ("white", "black", "gray"):
        return "A"
    return "B" if lead.color in ("red", "orange", "yellow") else "C"


@rule("ko03")
def _ko03(r: SceneRecord) -> str:
    first = _first([v for v in r.vehicles if v.is_emergency])
    if first is None:
        return "D"
    return _pick({"police_car": "A", "ambulance": "B", "fire_truck": "C"}, first.type)


@rule("ko04")
def _ko04(r: SceneRecord) -> str:
    sides = {_lateral(v.side, v.position) for v in r.vehicles if v.role == "parked"}
    if not sides:
        return "D"
    if {"left", "right"} <= sides:
        return "C"
    return "B" if "left" in sides else "A"


@rule("ko05")
def _ko05(r: SceneRecord) -> str:
    if r.traffic_light is None:
        return "D"
    return _pick({"red": "A", "yellow": "B", "green": "C"}, r.traffic_light.state_at_start)


@rule("ko06")
def _ko06(r: SceneRecord) -> str:
    if r.construction is None:
        return "D"
    return "A" if r.construction.side == "left" else "B"


@rule("ko07")
def _ko07(r: SceneRecord) -> str:
    bus = _first([v for v in r.vehicles if v.type == "bus"])
    if bus is None:
        return "D"
    if bus.role == "lead":
        return "A"
    return "C" if bus.role == "parked" else "B"


@rule("ko08")
def _ko08(r: SceneRecord) -> str:
    types = {v.type for v in r.vehicles}
    return {(True, False): "A", (False, True): "B", (True, True): "C", (False, False): "D"}[
        ("van" in types, "truck" in types)
    ]


@rule("ko09")
def _ko09(r: SceneRecord) -> str:
    if not r.vehicles:
        return "D"
    return max(SIZE_CLASS[v.type] for v in r.vehicles)


@rule("ko10")
def _ko10(r: SceneRecord) -> str:
    sign = _first(r.signs, key=lambda s: s.distance_m)
    if sign is None:
        return "D"
    return {"stop": "A", "speed_limit": "B"}.get(sign.kind, "C")


# ----------------------------------------------------------------------------- Characters & Interactions


def _pedestrians(r: SceneRecord):
    return r.non_workers()


@rule("ci01")
def _ci01(r: SceneRecord) -> str:
    n = len(r.pedestrians)
    return "A" if n == 0 else "B" if n == 1 else "C" if n <= 4 else "D"


@rule("ci02")
def _ci02(r: SceneRecord) -> str:
    p = _first(r.pedestrians, key=lambda p: p.distance_m)
    if p is None:
        return "D"
    return _pick({"left": "A", "right": "B", "ahead": "C"}, p.side)


@rule("ci03")
def _ci03(r: SceneRecord) -> str:
    c = _first(r.cyclists, key=lambda c: c.distance_start_m)
    if c is None:
        return "D"
    return _pick({"riding_same_direction": "A", "riding_oncoming": "B", "crossing": "C"}, c.action)


@rule("ci04")
def _ci04(r: SceneRecord) -> str:
    n = sum(p.kind == "worker" for p in r.pedestrians)
    return "ABCD"[min(n, 3)]


@rule("ci05")
def _ci05(r: SceneRecord) -> str:
    peds = _pedestrians(r)
    if not peds:
        return "D"
    children = [p for p in peds if p.kind == "child"]
    if not children:
        return "C"
    adult_groups = {p.group_id for p in peds if p.kind == "adult" and p.group_id is not None}
    return "A" if any(c.group_id in adult_groups for c in children) else "B"


@rule("ci06")
def _ci06(r: SceneRecord) -> str:
    peds = _pedestrians(r)
    if not peds:
        return "D"
    groups = Counter(p.group_id for p in peds if p.group_id is not None)
    if any(n >= 2 for n in groups.values()):
        return "C"
    return "A" if len(peds) == 1 else "B"


# ----------------------------------------------------------------------------- Actions & Motion


@rule("am01")
def _am01(r: SceneRecord) -> str:
    lead = r.lead_vehicle()
    if lead is None:
        return "D"
    if lead.behavior in TURNS + LANE_CHANGES:
        return "C"
    return "B" if lead.behavior in ("braking", "stopped") else "A"


@rule("am02")
def _am02(r: SceneRecord) -> str:
    turning = _first([v for v in r.vehicles if v.behavior in TURNS], key=_maneuver_time)
    if turning is not None:
        return "A" if turning.behavior == "turning_left" else "B"
    return "C" if any(v.behavior == "crossing" for v in r.vehicles) else "D"


@rule("am03")
def _am03(r: SceneRecord) -> str:
    v = _first([v for v in r.vehicles if v.behavior in LANE_CHANGES], key=_maneuver_time)
    if v is None:
        return "D"
    if v.lane_offset == 0:
        return "B"
    into_ego = (v.lane_offset == 1 and v.behavior == "lane_change_left") or (
        v.lane_offset == -1 and v.behavior == "lane_change_right"
    )
    return "A" if into_ego else "C"


@rule("am04")
def _am04(r: SceneRecord) -> str:
    peds = _pedestrians(r)
    if not peds:
        return "D"
    crossing = _first([p for p in peds if p.action == "crossing"],
                      key=lambda p: p.cross_start_s if p.cross_start_s is not None else p.start_s)
    if crossing is None:
        return "C"
    return "A" if crossing.on_crosswalk else "B"


@rule("am05")
def _am05(r: SceneRecord) -> str:
    same = [v for v in r.vehicles if v.role in ("lead", "adjacent")]
    if not same:
        return "D"
    if any(v.behavior == "stopped" for v in same):
        return "C"
    return "B" if any(v.behavior == "braking" for v in same) else "A"


@rule("am06")
def _am06(r: SceneRecord) -> str:
    n = sum(v.role == "oncoming" for v in r.vehicles)
    return "A" if n == 0 else "B" if n == 1 else "C" if n <= 3 else "D"


@rule("am07")
def _am07(r: SceneRecord) -> str:
    emergency = [v for v in r.vehicles if v.is_emergency]
    flashing = _first([v for v in emergency if v.emergency_lights])
    if flashing is not None:
        return "A" if flashing.role == "oncoming" else "B"
    return "C" if emergency else "D"


@rule("am08")
def _am08(r: SceneRecord) -> str:
    peds = _pedestrians(r)
    if not peds:
        return "D"
    counts = Counter(p.action for p in peds)
    order = ("crossing", "waiting", "walking")  # ties: the more salient action
    best = max(order, key=lambda a: (counts[a], -order.index(a)))
    return "ABC"[order.index(best)]


# ----------------------------------------------------------------------------- Ego Vehicle Behavior


@rule("eb01")
def _eb01(r: SceneRecord) -> str:
    m = r.ego.maneuver
    if m in ("left_turn", "right_turn"):
        return "B"
    if m in ("lane_change_left", "lane_change_right"):
        return "C"
    return "D" if m == "stopped" else "A"


@rule("eb02")
def _eb02(r: SceneRecord) -> str:
    return {"left": "A", "right": "B", None: "D"}[r.ego.turn_direction]


@rule("eb03")
def _eb03(r: SceneRecord) -> str:
    return _pick(
        {"constant": "A", "stationary": "A", "accelerating": "B", "decelerating": "C", "stop_and_go": "D"},
        r.ego.speed_trend,
    )


@rule("eb04")
def _eb04(r: SceneRecord) -> str:
    if not r.ego.stops:
        return "D"
    return _pick({"red_light": "A", "stop_sign": "B", "pedestrian": "C", "lead_vehicle": "C"}, r.ego.stop_reason)


@rule("eb05")
def _eb05(r: SceneRecord) -> str:
    return {"left": "A", "right": "B", None: "D"}[r.ego.lane_change_direction]


@rule("eb06")
def _eb06(r: SceneRecord) -> str:
    lead = r.lead_vehicle()
    if lead is None:
        return "D"
    if not r.ego.following_lead:
        return "C"
    return "B" if lead.behavior in TURNS + LANE_CHANGES else "A"


def distance_travelled_m(r: SceneRecord) -> float:
    """Integral of the ego's piecewise-linear speed profile (km/h keyframes) over the clip."""
    k = r.ego.speed_keyframes
    return sum((t1 - t0) * (v0 + v1) / 2 / 3.6 for (t0, v0), (t1, v1) in zip(k, k[1:]))


@rule("eb07")
def _eb07(r: SceneRecord) -> str:
    if r.road.junction == "none":
        return "D"
    if r.ego.stops:
        return "B" if r.ego.moving_at_end else "C"
    reaches = r.road.junction_distance_m is None or distance_travelled_m(r) >= r.road.junction_distance_m
    return "A" if reaches else "D"


# ----------------------------------------------------------------------------- Spatial & Temporal


@rule("st01")
def _st01(r: SceneRecord) -> str:
    return {None: "D", "ahead": "A", "ahead_left": "B", "left": "B", "ahead_right": "C", "right": "C"}[
        r.nearest_vehicle_position
    ]


@rule("st02")
def _st02(r: SceneRecord) -> str:
    return _pick({"straight": "A", "curves_left": "B", "curves_right": "C"}, r.road.curve)


@rule("st03")
def _st03(r: SceneRecord) -> str:
    return _pick({"good": "A", "reduced": "B", "poor": "C"}, r.conditions.visibility)


ST04_GROUPS = {
    "ego_slows_down": "A", "ego_stops": "A",
    "pedestrian_crosses": "B", "cyclist_crosses": "B",
    "light_turns_green": "C", "light_turns_yellow": "C", "light_turns_red": "C",
}


@rule("st04")
def _st04(r: SceneRecord) -> str:
    for e in r.events_sorted():
        if e.kind in ST04_GROUPS:
            return ST04_GROUPS[e.kind]
    return "D"


@rule("st05")
def _st05(r: SceneRecord) -> str:
    return {(True, True): "A", (True, False): "B", (False, True): "C", (False, False): "D"}[
        (r.ego.moving_at_start, r.ego.moving_at_end)
    ]


@rule("st06")
def _st06(r: SceneRecord) -> str:
    no_light = r.traffic_light is None
    no_peds = not _pedestrians(r)
    return {(True, False): "A", (False, True): "B", (True, True): "C", (False, False): "D"}[(no_light, no_peds)]


class SyntheticWorld:
    """The synthetic world as the benchmark's `WorldTruth` (avcap.bench.answerers): the letter a
    dataset's `world/<id>.json` (a SceneRecord) makes true for a packaged pool question."""

    name = "synthetic world (SceneRecord)"

    def __init__(self) -> None:
        self.questions = frozenset(RULES)
        self._records: dict[str, SceneRecord] = {}

    def answer(self, world_file, question_id: str) -> str:
        """Raises OSError / ValueError for an unreadable record, KeyError for a question without a rule."""
        key = str(world_file)
        if key not in self._records:
            with open(world_file, "rb") as fh:
                self._records[key] = SceneRecord.model_validate_json(fh.read())
        return answer(self._records[key], question_id)
