"""Text from a `SceneRecord`: the recipe's three annotation shapes, reference captions, LingoQA QA.

Every sentence is built from fields of the record (which holds only what the renderer draws), with
several phrasings per fact and a seeded choice among them and among sentence orders, so that the
texts are varied natural language rather than one template. The same record and `variant` give the
same bytes.

- `human_annotation(rec)`  — `human_annotated/` shape (weather … critical_object with pixel boxes)
- `cv_annotation(rec)`     — `cv_annotated/` shape (event_start_frame, final_content.ego_behavior_schema)
- `reason_annotation(rec)` — `reason1_sft/` shape (response.description, "driving difficulty explanation", notice)
- `caption(rec)`           — the reference caption (= the human annotation's safety_analysis)
- `lingoqa_questions(rec)` — [(question, [answer 1, answer 2])], two differently phrased references
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Optional

import numpy as np

from avcap.demo.synth import geometry as G
from avcap.demo.synth.scene import VEHICLE_TYPE_TEXT, Pedestrian, SceneRecord, Vehicle

NUMBER = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
_PURPOSE = {"human": 1, "cv": 2, "reason": 3, "caption": 4, "lingoqa": 5}
EPOCH_US = 1_640_995_200_000_000  # 2022-01-01T00:00:00Z in microseconds: base of synthetic timestamps


class _Say:
    """Seeded phrasing choices."""

    def __init__(self, rec: SceneRecord, purpose: str, variant: int = 0):
        self.g = np.random.default_rng([rec.seed, _PURPOSE[purpose], variant])

    def __call__(self, *options: str) -> str:
        return options[int(self.g.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.g.random() < p)

    def shuffle(self, items: list) -> list:
        items = list(items)
        idx = self.g.permutation(len(items))
        return [items[i] for i in idx]


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _num(n: int) -> str:
    return NUMBER.get(n, str(n))


def vehicle_phrase(v: Vehicle, article: bool = True) -> str:
    """'a red sedan', 'an ambulance', 'a white police car'."""
    t = VEHICLE_TYPE_TEXT[v.type]
    words = t if v.is_emergency and v.type != "police_car" else f"{v.color} {t}"
    return _a(words) if article else words


def _the(v: Vehicle) -> str:
    return "the " + vehicle_phrase(v, article=False)


def person_phrase(p: Pedestrian) -> str:
    base = {"adult": "pedestrian", "child": "child", "worker": "construction worker"}[p.kind]
    extra = {"umbrella": " with an umbrella", "bag": " carrying a bag", "nothing": ""}[p.carrying]
    return _a(base) + extra


def _plural(n: int, one: str, many: str) -> str:
    return f"{_num(n)} {one if n == 1 else many}"


# ---------------------------------------------------------------------------------------------
# fact phrasings shared by every text
# ---------------------------------------------------------------------------------------------


def road_words(rec: SceneRecord, say: _Say) -> str:
    r = rec.road
    env = r.environment
    lanes = r.lane_count
    lane_w = {1: "single-lane", 2: "two-lane", 3: "three-lane", 4: "four-lane", 5: "five-lane", 6: "six-lane"}[lanes]
    if env == "highway":
        return say(f"a divided {lane_w} highway", "a multi-lane highway", f"a {lane_w} divided highway")
    if env == "urban":
        base = say("city street", "urban street", "downtown street")
    elif env == "suburban":
        base = say("residential street", "suburban street", "suburban road")
    else:
        base = say("rural road", "country road", "two-lane country road" if lanes == 2 else "rural road")
    if r.lanes_oncoming == 0:
        return say(f"a one-way {base}", f"a one-way {base} with {_plural(r.lanes_ego_direction, 'lane', 'lanes')}")
    if "two-lane" in base:
        return _a(base)
    return say(_a(f"{lane_w} {base}"), _a(base))


def conditions_sentence(rec: SceneRecord, say: _Say) -> str:
    c = rec.conditions
    tod = {"day": say("during the day", "in daylight", "in the daytime"),
           "dusk": say("at dusk", "around sunset", "in the evening twilight"),
           "night": say("at night", "after dark", "at nighttime")}[c.time_of_day]
    sky = {
        "clear": say("under a clear sky", "with clear weather", "in clear conditions"),
        "overcast": say("under an overcast sky", "with grey, overcast skies", "in cloudy weather"),
        "rain": say("in the rain", "while it is raining", "in rainy weather"),
        "fog": say("in dense fog", "in thick fog", "with fog limiting visibility"),
    }[c.weather]
    road = say("the road is wet", "the road surface is wet", "the asphalt is wet") if c.road_condition == "wet" else say(
        "the road is dry", "the road surface is dry", "the asphalt is dry")
    return say(
        f"The scene takes place {tod} {sky}, and {road}.",
        f"It is {'daytime' if c.time_of_day == 'day' else c.time_of_day if c.time_of_day == 'dusk' else 'night'} {sky}; {road}.",
        f"{_cap(tod)}, {sky}, {road}.",
    )


def environment_sentence(rec: SceneRecord, say: _Say) -> Optional[str]:
    r = rec.road
    b = {
        "shops": say("lined with shops and low commercial buildings", "with storefronts on both sides"),
        "high_rise": say("between tall buildings", "lined with high-rise buildings"),
        "houses": say("lined with houses", "past residential houses"),
        "none": "",
    }[r.buildings]
    trees = " and trees" if r.trees and r.buildings != "none" else ""
    if r.environment == "highway":
        return say("A median barrier separates the two directions of the highway.",
                   "The highway has a concrete median barrier between the carriageways.")
    if r.environment == "rural" and r.buildings == "none":
        return say("The road runs through open countryside with trees along the verge.",
                   "Fields and trees surround the road.") if r.trees else "The road runs through open countryside."
    if not b:
        return None
    area = {"urban": say("an urban area", "a city area"), "suburban": say("a residential neighbourhood", "a suburban area"),
            "rural": say("a rural area", "the countryside")}[r.environment]
    return say(f"The road passes through {area}, {b}{trees}.", f"This is {area}, {b}{trees}.")


def junction_phrase(rec: SceneRecord, say: _Say) -> Optional[str]:
    r = rec.road
    if r.junction == "four_way":
        return say("a four-way intersection", "a crossroads", "a four-way junction")
    if r.junction == "t_junction":
        return say(f"a T-junction where a side road joins from the {r.junction_side}",
                   f"a T-junction with a side road on the {r.junction_side}")
    return None


def light_sentence(rec: SceneRecord, say: _Say) -> Optional[str]:
    tl = rec.traffic_light
    if tl is None:
        return None
    states = [p.state for p in tl.phases]
    if len(states) == 1:
        return say(f"The traffic light ahead is {states[0]}.", f"A traffic light ahead shows {states[0]}.",
                   f"The signal at the intersection stays {states[0]}.")
    seq = " to ".join(states)
    if len(states) == 2:
        return say(f"The traffic light ahead turns from {states[0]} to {states[1]}.",
                   f"The signal changes from {states[0]} to {states[1]}.",
                   f"The traffic light is {states[0]} at first and then turns {states[1]}.")
    return say(f"The traffic light ahead changes from {seq}.", f"The signal cycles from {seq}.")


def ego_sentence(rec: SceneRecord, say: _Say) -> str:
    e, r = rec.ego, rec.road
    road = road_words(rec, say)
    lead = rec.lead_vehicle()
    jp = junction_phrase(rec, say)
    subj = say("The ego vehicle", "The ego car", "The ego vehicle")
    m = e.maneuver
    if m == "straight":
        s = say(f"{subj} is driving straight on {road}", f"{subj} drives straight along {road}",
                f"{subj} travels straight ahead on {road}")
        if lead is not None and e.following_lead:
            s += say(f", following {vehicle_phrase(lead)}", f" behind {vehicle_phrase(lead)}")
        if e.rule_violation == "ran_red_light":
            s += say(" and passes through the intersection as the light turns red", " and runs the red light at the intersection")
        return s + "."
    if m in ("left_turn", "right_turn"):
        d = e.turn_direction
        where = f" at {jp}" if jp else ""
        if e.stop_reason == "stop_sign":
            return say(f"{subj} stops at the stop sign and then turns {d}{where} on {road}.",
                       f"After stopping at the stop sign, {subj.lower().replace('the ', 'the ', 1)} turns {d}{where}.")
        if e.stop_reason == "red_light":
            return say(f"{subj} waits at the red light and turns {d}{where} once it turns green.",
                       f"{subj} pulls away on the green light and turns {d}{where}.")
        s = say(f"{subj} slows down and turns {d}{where}", f"{subj} makes a {d} turn{where}",
                f"{subj} turns {d}{where} from {road}")
        if lead is not None:
            s += say(f", following {vehicle_phrase(lead)}", f" behind {vehicle_phrase(lead)}")
        return s + "."
    if m.startswith("lane_change"):
        d = e.lane_change_direction
        s = say(f"{subj} changes lanes to the {d} on {road}", f"{subj} moves into the {d} lane on {road}",
                f"On {road}, {subj.lower()} changes into the lane on its {d}")
        if lead is not None:
            s += say(f" to pass a slower {vehicle_phrase(lead, False)}", f", overtaking {vehicle_phrase(lead)} that is driving slower")
        elif rec.construction is not None and rec.construction.lane_closed:
            s += say(" because cones close its lane ahead", " to avoid a lane closed by construction cones")
        return s + "."
    if m == "slowing":
        why = {
            "red_light": say(" for the red light", " as the traffic light turns red"),
            "stop_sign": say(" at the stop sign", " for the stop sign"),
            "pedestrian": say(" to let a pedestrian cross", " for a pedestrian on the crosswalk"),
            "lead_vehicle": f" behind {vehicle_phrase(lead)}" if lead else "",
            "none": "",
        }[e.stop_reason]
        if e.stops:
            return say(f"{subj} slows down and comes to a stop{why} on {road}.", f"{subj} brakes to a stop{why}.",
                       f"Driving on {road}, {subj.lower()} decelerates and stops{why}.")
        if lead is not None:
            return say(f"{subj} slows down on {road} as {vehicle_phrase(lead)} ahead brakes.",
                       f"{subj} decelerates behind {vehicle_phrase(lead)} that is braking.")
        return say(f"{subj} slows down on {road}.", f"{subj} decelerates on {road}.")
    if m == "stopped":
        why = {
            "red_light": say("at a red light", "waiting for the red light"),
            "stop_sign": say("at a stop sign", "at the stop line of a stop sign"),
            "pedestrian": say("while pedestrians cross in front", "to let pedestrians cross"),
            "lead_vehicle": say(f"in traffic behind {vehicle_phrase(lead)}", f"behind {vehicle_phrase(lead)}") if lead else "in traffic",
            "none": "",
        }[e.stop_reason]
        return say(f"{subj} is stopped {why} on {road}.", f"{subj} remains stationary {why}.",
                   f"{subj} stays stopped {why} on {road}.")
    # accelerating
    if e.stop_reason == "red_light":
        return say(f"{subj} waits at the red light and accelerates away when it turns green.",
                   f"{subj} starts from a stop and speeds up once the light turns green.")
    if e.stop_reason == "lead_vehicle" and lead is not None:
        return say(f"{subj} starts moving from a stop and accelerates behind {vehicle_phrase(lead)}.",
                   f"Traffic clears and {subj.lower()} pulls away behind {vehicle_phrase(lead)}.")
    return say(f"{subj} accelerates on {road}.", f"{subj} speeds up on {road}.", f"{subj} picks up speed along {road}.")


def vehicles_sentences(rec: SceneRecord, say: _Say) -> list[str]:
    out = []
    lead = rec.lead_vehicle()
    e = rec.ego
    if lead is not None and e.maneuver in ("slowing", "accelerating", "stopped") and lead.behavior in ("braking", "accelerating"):
        if lead.behavior == "braking":
            out.append(say(f"{_cap(_the(lead))} ahead brakes, its brake lights on.", f"{_cap(_the(lead))} in front slows down."))
        else:
            out.append(say(f"{_cap(_the(lead))} ahead pulls away first.", f"{_cap(_the(lead))} in front starts moving first."))
    elif lead is not None and lead.behavior in ("turning_left", "turning_right") and e.maneuver not in ("left_turn", "right_turn"):
        d = lead.behavior.split("_")[1]
        out.append(say(f"{_cap(_the(lead))} ahead slows down and turns {d} at the junction.",
                       f"{_cap(_the(lead))} in front leaves the road, turning {d} into the side street."))
    elif lead is not None and e.maneuver in ("stopped",):
        out.append(say(f"{_cap(vehicle_phrase(lead))} is stopped directly ahead.", f"{_cap(vehicle_phrase(lead))} waits in front of the ego vehicle."))
    onc = [v for v in rec.vehicles if v.role == "oncoming" and not v.is_emergency]
    if onc:
        if len(onc) == 1:
            v = onc[0]
            verb = {"stopped": say("waits", "is stopped"), "accelerating": say("starts moving", "pulls away")}.get(v.behavior, say("passes", "approaches"))
            out.append(say(f"{_cap(vehicle_phrase(v))} {verb} in the oncoming lane.", f"In the opposite lane, {vehicle_phrase(v)} {verb}."))
        else:
            kinds = ", ".join(vehicle_phrase(v) for v in onc[:-1]) + " and " + vehicle_phrase(onc[-1])
            if all(v.behavior == "stopped" for v in onc):
                out.append(say(f"{_cap(_num(len(onc)))} vehicles wait in the oncoming lane: {kinds}.", f"Oncoming traffic is stopped: {kinds}."))
            else:
                out.append(say(f"{_cap(_num(len(onc)))} vehicles pass in the oncoming lane: {kinds}.", f"Oncoming traffic includes {kinds}."))
    em = [v for v in rec.vehicles if v.is_emergency]
    for v in em:
        where = "in the oncoming lane" if v.role == "oncoming" else "in the left lane"
        out.append(say(f"{_cap(vehicle_phrase(v))} with flashing emergency lights passes {where}.",
                       f"An emergency vehicle, {vehicle_phrase(v)} with its lights flashing, drives by {where}."))
    parked = [v for v in rec.vehicles if v.role == "parked"]
    if parked:
        if len(parked) == 1:
            out.append(say(f"{_cap(vehicle_phrase(parked[0]))} is parked on the right side of the road.",
                           f"On the right, {vehicle_phrase(parked[0])} is parked at the kerb."))
        else:
            out.append(say(f"{_cap(_num(len(parked)))} vehicles are parked along the right side of the street.",
                           "Several cars are parked on the right side of the road.",
                           f"On the right side of the road, {_num(len(parked))} vehicles are parked in the parking lane."))
    adj = [v for v in rec.vehicles if v.role == "adjacent" and not v.is_emergency]
    for v in adj:
        side = "left" if v.lane_offset < 0 else "right"
        if v.behavior.startswith("lane_change"):
            d = v.behavior.rsplit("_", 1)[1]
            out.append(say(f"{_cap(vehicle_phrase(v))} in the {side} lane changes lanes to the {d} ahead of the ego vehicle.",
                           f"Ahead, {vehicle_phrase(v)} moves over from the {side} lane into the ego's lane."))
        elif v.behavior in ("stopped",):
            out.append(say(f"{_cap(vehicle_phrase(v))} is also stopped in the {side} lane.", f"In the {side} lane, {vehicle_phrase(v)} waits as well."))
        else:
            out.append(say(f"{_cap(vehicle_phrase(v))} drives in the {side} lane.", f"In the adjacent {side} lane there is {vehicle_phrase(v)}."))
    cross = [v for v in rec.vehicles if v.role == "cross_traffic"]
    for v in cross[:2]:
        out.append(say(f"{_cap(vehicle_phrase(v))} crosses the intersection ahead.",
                       f"Cross traffic passes in front: {vehicle_phrase(v)} drives through the junction."))
    return out


def people_sentences(rec: SceneRecord, say: _Say) -> list[str]:
    out = []
    crossing = [p for p in rec.pedestrians if p.action == "crossing"]
    waiting = [p for p in rec.pedestrians if p.action == "waiting"]
    walking = [p for p in rec.pedestrians if p.action == "walking"]
    workers = [p for p in rec.pedestrians if p.kind == "worker"]
    if crossing:
        if len(crossing) == 1:
            p = crossing[0]
            d = p.crossing_direction.replace("_", " ") if p.crossing_direction else ""
            out.append(say(f"{_cap(person_phrase(p))} crosses the road in front of the ego vehicle on the crosswalk.",
                           f"{_cap(person_phrase(p))} walks across the crosswalk from {d}.",
                           f"On the crosswalk ahead, {person_phrase(p)} crosses from {d}."))
        else:
            kids = sum(p.kind == "child" for p in crossing)
            extra = f", including {_plural(kids, 'child', 'children')}" if kids else ""
            out.append(say(f"{_cap(_num(len(crossing)))} pedestrians cross the road on the crosswalk ahead{extra}.",
                           f"A group of {_num(len(crossing))} pedestrians{extra} walks across the crosswalk in front of the ego vehicle."))
    for side in ("left", "right"):
        w = [p for p in waiting if p.start_side == side]
        if w:
            if len(w) == 1:
                out.append(say(f"{_cap(person_phrase(w[0]))} waits at the kerb on the {side}.",
                               f"On the {side}, {person_phrase(w[0])} stands at the edge of the road."))
            else:
                out.append(say(f"{_cap(_num(len(w)))} pedestrians wait at the kerb on the {side}.",
                               f"On the {side} side, {_num(len(w))} people stand waiting to cross."))
    for side in ("left", "right"):
        w = [p for p in walking if p.start_side == side]
        if w:
            if len(w) == 1:
                out.append(say(f"{_cap(person_phrase(w[0]))} walks along the pavement on the {side}.",
                               f"On the {side} sidewalk, {person_phrase(w[0])} is walking."))
            else:
                out.append(say(f"{_cap(_num(len(w)))} pedestrians walk along the {side} sidewalk.",
                               f"On the {side}, {_num(len(w))} people walk along the pavement."))
    for c in rec.cyclists:
        where = {"riding_same_direction": say("rides ahead at the right edge of the lane", "rides in the same direction on the right"),
                 "riding_oncoming": say("rides towards the ego vehicle on the left", "approaches in the oncoming lane"),
                 "crossing": "crosses the road ahead"}[c.action]
        out.append(say(f"A cyclist in {_a(c.shirt_color)} top {where}.", f"A cyclist {where}."))
    if rec.construction is not None:
        k = rec.construction
        cones = say("Orange traffic cones", "A row of orange cones")
        where = f"along the {k.side} side of the road" if not k.lane_closed else f"close the {'ego' if rec.ego.maneuver.startswith('lane_change') else ''} lane ahead".replace("  ", " ")
        s = f"{cones} {'line' if not k.lane_closed else ''} {where}".replace("  ", " ")
        s = s.replace("cones line", "cones line").replace("cones close", "cones close")
        if workers:
            s += say(f", where {_plural(len(workers), 'construction worker', 'construction workers')} in orange vests {'stands' if len(workers) == 1 else 'stand'}",
                     f" in a work zone with {_plural(len(workers), 'worker', 'workers')}")
        out.append(s.strip() + ".")
    return out


def infrastructure_sentences(rec: SceneRecord, say: _Say) -> list[str]:
    out = []
    r = rec.road
    lt = light_sentence(rec, say)
    if lt:
        out.append(lt)
    for s in rec.signs:
        if s.kind == "stop":
            out.append(say("A stop sign stands on the right at the intersection.", "A red stop sign is visible on the right side."))
        elif s.kind == "speed_limit":
            out.append(say("A speed limit sign is visible on the right.", "There is a speed limit sign on the right side of the road."))
        elif s.kind == "yield":
            out.append(say("A yield sign is visible on the right.", "A triangular yield sign stands on the right."))
        elif s.kind == "pedestrian_crossing":
            out.append(say("A blue pedestrian crossing sign marks the crosswalk.", "A pedestrian crossing sign is on the right."))
        elif s.kind == "road_work":
            out.append(say("An orange road work sign warns of the construction zone.", "A diamond-shaped road work sign stands on the right."))
        elif s.kind == "no_parking":
            out.append(say("A no-parking sign is on the right.", "A blue and red no-parking sign stands by the kerb."))
    if r.crosswalk:
        where = " at the intersection" if r.junction != "none" else ""
        out.append(say(f"Pedestrian crosswalk markings are visible ahead{where}.", f"A zebra crosswalk is painted across the road{where}."))
    jp = junction_phrase(rec, say)
    if jp and rec.ego.maneuver not in ("left_turn", "right_turn"):
        out.append(say(f"The road ahead reaches {jp}.", f"Ahead there is {jp}."))
    if r.curve != "straight" and rec.ego.maneuver not in ("left_turn", "right_turn"):
        d = "left" if r.curve == "curves_left" else "right"
        out.append(say(f"The road curves to the {d}.", f"The road bends gently to the {d} ahead."))
    return out


def caption(rec: SceneRecord, variant: int = 0) -> str:
    """The reference caption: ego behaviour first, then a seeded order of the other facts."""
    say = _Say(rec, "caption", variant)
    first = ego_sentence(rec, say)
    rest_groups = [
        [conditions_sentence(rec, say)],
        [s for s in [environment_sentence(rec, say)] if s],
        vehicles_sentences(rec, say),
        people_sentences(rec, say),
        infrastructure_sentences(rec, say),
    ]
    groups = [g for g in rest_groups if g]
    head = groups[:1]
    tail = say.shuffle(groups[1:])
    if say.chance(0.35):
        # sometimes lead with the conditions, then the ego sentence
        sentences = head[0] + [first] + [s for g in tail for s in g]
    else:
        sentences = [first] + [s for g in head + tail for s in g]
    return " ".join(sentences)


# ---------------------------------------------------------------------------------------------
# human annotation
# ---------------------------------------------------------------------------------------------

OBJECT_TYPE = {
    "sedan": "Vehicles - Passenger cars",
    "police_car": "Vehicles - Emergency vehicles",
    "ambulance": "Vehicles - Emergency vehicles",
    "fire_truck": "Vehicles - Emergency vehicles",
    "suv": "Vehicles - Light trucks & SUVs",
    "pickup": "Vehicles - Light trucks & SUVs",
    "van": "Vehicles - Light trucks & SUVs",
    "bus": "Vehicles - Buses",
    "truck": "Vehicles - Heavy trucks",
    "motorcycle": "Vehicles - Motorcycles",
}


def object_box(rec: SceneRecord, oid: str, t: float, width: Optional[int] = None, height: Optional[int] = None):
    """Pixel box (x1, y1, x2, y2) of object `oid` at time t in a width x height frame, or None."""
    obj = rec.object_by_id(oid)
    if obj is None or not hasattr(obj, "track"):
        return None
    cam = G.Camera(int(width or rec.render.width), int(height or rec.render.height))
    ego = G.pose_at(np.array(rec.ego.track, np.float64), t)
    x, z, h = G.pose_at(np.array(obj.track, np.float64), t)
    if isinstance(obj, Vehicle):
        L, W, H = G.VEHICLE_SIZE[obj.type]
    elif isinstance(obj, Pedestrian):
        L, W, H = 0.45, 0.5, G.PERSON_HEIGHT[obj.kind]
    else:
        L, W, H = 1.8, 0.6, 1.75
    b = G.screen_box(G.box_corners(x, z, h, L, W, 0.0, H), ego, cam)
    return None if b is None else b[:4]


def _box_time(rec: SceneRecord, oid: str, start: float, end: float):
    mid = (start + end) / 2
    cands = [float(s) for s in range(int(math.ceil(start)), int(math.floor(end)) + 1)]
    cands.sort(key=lambda s: abs(s - mid))
    cands += [round(mid, 1), round(start, 1), round(end, 1)]
    for t in cands:
        b = object_box(rec, oid, t)
        if b is not None and (b[3] - b[1]) >= 2:
            return (int(t) if float(t).is_integer() else t), b
    return None, None


def critical_objects(rec: SceneRecord, say: _Say) -> list[dict]:
    oid = rec.critical_object_id
    if oid is None:
        return []
    obj = rec.object_by_id(oid)
    t, b = _box_time(rec, oid, obj.start_s, obj.end_s)
    if b is None:
        return []
    e = rec.ego
    if isinstance(obj, Vehicle):
        name = vehicle_phrase(obj, article=False)
        otype = OBJECT_TYPE[obj.type]
        if obj.role == "lead" and e.following_lead:
            if obj.behavior == "braking":
                why = say(f"The {name} ahead is braking, forcing the ego vehicle to slow down, and thus it is a critical object.",
                          f"The ego vehicle must slow down because the {name} in front brakes, so it is a critical object.")
            elif e.maneuver.startswith("lane_change"):
                why = say(f"The {name} ahead is slower, so the ego vehicle changes lanes to pass it; it is a critical object.",
                          f"The ego vehicle overtakes the slower {name}, which makes it a critical object.")
            else:
                why = say(f"The ego vehicle is following the {name}, and thus it is a critical object.",
                          f"The {name} is directly ahead of the ego vehicle, which follows it, so it is a critical object.")
        elif obj.role == "cross_traffic":
            why = say(f"The ego vehicle must wait for the {name} crossing the intersection, so it is a critical object.",
                      f"The {name} crosses in front of the ego vehicle, and thus it is a critical object.")
        elif obj.is_emergency:
            why = say(f"The {name} with flashing lights requires attention, and thus it is a critical object.",
                      f"An emergency vehicle ({name}) is passing, so it is a critical object.")
        else:
            why = f"The {name} is close to the ego vehicle's path, and thus it is a critical object."
    elif isinstance(obj, Pedestrian):
        who = {"adult": "pedestrian", "child": "child", "worker": "construction worker"}[obj.kind]
        otype = "Pedestrians - Children" if obj.kind == "child" else "Pedestrians - Adults"
        why = say(f"The ego vehicle yields to the {who} crossing in front of it, and thus it is a critical object.",
                  f"The {who} on the crosswalk makes the ego vehicle stop, so it is a critical object.")
    else:
        otype = "Cyclists"
        why = say("The cyclist rides close to the ego vehicle's lane, and thus it is a critical object.",
                  "The ego vehicle has to keep a safe distance from the cyclist, so it is a critical object.")
    x1, y1, x2, y2 = (round(float(v), 2) for v in b)
    return [{"box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "box_time": t, "critical_reasoning": why, "object_type": otype}]


def _metaactions(rec: SceneRecord) -> tuple[Optional[list[str]], Optional[list[str]]]:
    e = rec.ego
    inter: list[str] = []
    non: list[str] = []
    if e.following_lead:
        inter.append("Vehicle following")
    if e.stop_reason == "red_light":
        inter.append("Stop for traffic light")
    if e.stop_reason == "stop_sign":
        inter.append("Stop at stop sign")
    if e.stop_reason == "pedestrian":
        inter.append("Yield to pedestrian")
    if e.yields_to and e.yields_to.startswith("v"):
        inter.append("Yield to crossing vehicle")
    if e.maneuver.startswith("lane_change") and rec.lead_vehicle() is not None:
        inter.append("Overtake slower vehicle")
    m = {
        "straight": "Go straight",
        "left_turn": "Turn left",
        "right_turn": "Turn right",
        "lane_change_left": "Lane change left",
        "lane_change_right": "Lane change right",
        "slowing": "Decelerate",
        "stopped": "Keep stationary",
        "accelerating": "Accelerate",
    }[e.maneuver]
    non.append(m)
    if e.stops and e.maneuver not in ("stopped",):
        non.append("Stop")
    if e.stop_end_s is not None and e.maneuver != "accelerating":
        non.append("Start from stop")
    return (inter or None), (non or None)


def human_annotation(rec: SceneRecord, variant: int = 0) -> dict:
    say = _Say(rec, "human", variant)
    c, r = rec.conditions, rec.road
    weather = {"clear": say("Clear", "Clear sky") if c.time_of_day != "day" else say("Clear", "Sunny", "Clear sky"),
               "overcast": say("Overcast", "Cloudy"), "rain": say("Rainy", "Rain"), "fog": say("Foggy", "Dense fog")}[c.weather]
    if c.time_of_day == "day":
        lighting = "Daytime (direct sunlight)" if c.weather == "clear" else "Daytime (diffused light)"
    elif c.time_of_day == "dusk":
        lighting = say("Dusk (low sun)", "Dusk (fading light)")
    else:
        lighting = "Night (street lights)" if c.streetlights else "Night (headlights only)"
    road_cond = say("Dry, clean asphalt", "Dry asphalt") if c.road_condition == "dry" else say("Wet asphalt", "Wet, reflective asphalt")
    tl = light_sentence(rec, say) or "No traffic light is visible."
    signs = []
    for s in rec.signs:
        signs.append({
            "stop": "A stop sign is visible on the right side at the intersection.",
            "speed_limit": "A speed limit sign is visible on the right side of the road.",
            "yield": "A yield sign is visible on the right side.",
            "pedestrian_crossing": "A pedestrian crossing sign is visible on the right side.",
            "road_work": "A road work sign is visible on the right side.",
            "no_parking": "A no-parking sign is visible on the right side of the street.",
        }[s.kind])
    traffic_sign = " ".join(dict.fromkeys(signs)) if signs else "No traffic signs are visible."
    rules = []
    if r.crosswalk:
        rules.append("Pedestrian crosswalk markings are visible ahead" + (" at the intersection." if r.junction != "none" else "."))
    if r.stop_line_distance_m is not None and (r.junction != "none" or r.crosswalk):
        rules.append("A stop line is painted across the ego lane.")
    if rec.construction is not None:
        rules.append("A construction zone marked by cones " + ("closes a lane." if rec.construction.lane_closed else "lines the road edge."))
    road_type = {
        "urban": "Urban street – low‑speed, mixed commercial access.",
        "suburban": "Local street – low‑speed, residential access.",
        "rural": "Rural road – moderate‑speed, two‑way traffic.",
        "highway": "Highway – high‑speed, divided carriageway.",
    }[r.environment]
    junction_type = {
        "none": "Straight segment - uninterrupted roadway with no intersections or turns" if r.curve == "straight"
        else f"Curved segment - the road bends to the {'left' if r.curve == 'curves_left' else 'right'} with no intersections",
        "four_way": "Four-way intersection - two roads cross",
        "t_junction": f"T-junction - a side road joins from the {r.junction_side}",
    }[r.junction]
    if r.lanes_oncoming == 0:
        lane_type = "A single unidirectional lane." if r.lanes_ego_direction == 1 else f"{_cap(_num(r.lanes_ego_direction))} unidirectional lanes."
    else:
        lane_type = (f"{_cap(_plural(r.lanes_ego_direction, 'lane', 'lanes'))} in the ego direction and "
                     f"{_plural(r.lanes_oncoming, 'oncoming lane', 'oncoming lanes')}" + (", separated by a median barrier." if r.divided else "."))
    maps = []
    if r.parking_lane:
        maps.append("Parking line markings are visible on the right side of the road.")
    if r.lanes_oncoming > 0 and not r.divided:
        maps.append("A double yellow centre line separates the two directions.")
    if r.divided:
        maps.append("A median barrier separates the two directions.")
    if r.lanes_ego_direction > 1:
        maps.append("Dashed white lines separate the lanes.")
    inter, non = _metaactions(rec)
    return {
        "weather": weather,
        "lighting": lighting,
        "road_conditions": road_cond,
        "traffic_light": tl,
        "traffic_sign": traffic_sign,
        "additional_traffic_rules": " ".join(rules) if rules else "None.",
        "road_type": road_type,
        "junction_type": junction_type,
        "lane_type": lane_type,
        "additional_map_rules": " ".join(maps) if maps else "None.",
        "interactive_expanded_metaaction": inter,
        "noninteractive_expanded_metaaction": non,
        "safety_analysis": caption(rec, variant),
        "driving_difficulty": int(rec.driving_difficulty),
        "rule_violation": "True" if rec.ego.rule_violation != "none" else "False",
        "interesting_scenario": "True" if rec.interesting_scenario else "False",
        "critical_object": critical_objects(rec, say),
    }


# ---------------------------------------------------------------------------------------------
# CV auto-label
# ---------------------------------------------------------------------------------------------


def _behaviour_core(rec: SceneRecord, say: _Say) -> tuple[str, str]:
    """(reasoning lead sentence, effect phrase) for the ego's behaviour."""
    e = rec.ego
    lead = rec.lead_vehicle()
    jp = junction_phrase(rec, say)
    m = e.maneuver
    if m == "straight":
        if lead is not None:
            return (f"Ego is driving straight at a steady speed, following {vehicle_phrase(lead)} in its lane.",
                    say("Maintaining speed and a safe following distance.", "Keeping a constant speed behind the lead vehicle."))
        return ("Ego is driving straight at a steady speed in its lane.", say("Maintaining speed and lane.", "Continuing straight at constant speed."))
    if m in ("left_turn", "right_turn"):
        d = e.turn_direction
        at = f" at {jp}" if jp else ""
        if e.stops:
            why = "the stop sign" if e.stop_reason == "stop_sign" else "the red light"
            return (f"Ego stops for {why} and then turns {d}{at}.", f"Stopping for {why}, then turning {d}.")
        return (f"Ego is decelerating and turning {d}{at}. The road layout indicates a {d} turn.",
                f"Decelerating and turning {d}" + (", paying attention to oncoming traffic." if any(v.role == "oncoming" for v in rec.vehicles) else "."))
    if m.startswith("lane_change"):
        d = e.lane_change_direction
        if lead is not None:
            return (f"Ego changes lanes to the {d} because {vehicle_phrase(lead)} ahead is driving slower.",
                    f"Changing lanes to the {d} to overtake the slower vehicle.")
        if rec.construction is not None and rec.construction.lane_closed:
            return (f"Ego changes lanes to the {d} because construction cones close its lane ahead.",
                    f"Changing lanes to the {d} to avoid the closed lane.")
        return (f"Ego changes lanes to the {d}; the target lane is clear.", f"Changing lanes to the {d}.")
    if m == "slowing":
        reason = {
            "red_light": "the traffic light turns red",
            "stop_sign": "there is a stop sign ahead",
            "pedestrian": "a pedestrian is crossing on the crosswalk",
            "lead_vehicle": f"{vehicle_phrase(lead)} ahead is braking" if lead else "traffic ahead slows",
            "none": f"{vehicle_phrase(lead)} ahead is braking" if lead else "of the road ahead",
        }[e.stop_reason]
        if e.stops:
            return (f"Ego is decelerating to a stop because {reason}.", say(f"Decelerating and stopping because {reason}.", "Braking to a full stop."))
        return (f"Ego is decelerating because {reason}.", "Decelerating to keep a safe distance.")
    if m == "stopped":
        reason = {
            "red_light": "the traffic light is red",
            "stop_sign": "it is waiting at a stop sign",
            "pedestrian": "pedestrians are crossing in front",
            "lead_vehicle": f"{vehicle_phrase(lead)} ahead is stopped" if lead else "traffic ahead is stopped",
            "none": "traffic ahead is stopped",
        }[e.stop_reason]
        return (f"Ego remains stopped because {reason}.", say("Remaining stationary.", "Staying stopped until the way is clear."))
    if e.stop_reason == "red_light":
        return ("Ego starts from a stop and accelerates because the traffic light turns green.", "Accelerating from a stop on the green light.")
    if e.stop_reason == "lead_vehicle" and lead is not None:
        return (f"Ego starts moving and accelerates as {vehicle_phrase(lead)} ahead pulls away.", "Accelerating behind the lead vehicle.")
    return ("Ego is accelerating; the road ahead is clear.", "Accelerating to cruising speed.")


def _context_sentence(rec: SceneRecord, say: _Say) -> str:
    bits = []
    if rec.conditions.weather in ("rain", "fog"):
        bits.append({"rain": "the rain and wet road reduce traction", "fog": "the fog limits visibility"}[rec.conditions.weather])
    if rec.conditions.time_of_day == "night":
        bits.append("it is dark")
    parked = [v for v in rec.vehicles if v.role == "parked"]
    if parked:
        bits.append("cars are parked on the right")
    if any(p.action == "waiting" for p in rec.pedestrians):
        bits.append("pedestrians wait at the kerb")
    if any(v.is_emergency for v in rec.vehicles):
        bits.append("an emergency vehicle with flashing lights is nearby")
    if rec.construction is not None:
        bits.append("a construction zone is marked by cones")
    if not bits:
        return say("No other road users are immediately relevant to the current driving behavior.",
                   "Nothing else affects the current driving behavior.")
    return _cap(", ".join(bits[:-1]) + (" and " if len(bits) > 1 else "") + bits[-1]) + "."


def cv_annotation(rec: SceneRecord, variant: int = 0) -> dict:
    say = _Say(rec, "cv", variant)
    lead_s, effect = _behaviour_core(rec, say)
    reasoning = " ".join([lead_s, _context_sentence(rec, say)])
    t = rec.ego.maneuver_start_s if rec.ego.maneuver_start_s is not None else (rec.events[0].start_s if rec.events else 0.0)
    frame = int(min(rec.render.num_frames - 1, max(0, round(t * rec.render.fps))))
    ts = EPOCH_US + (rec.seed % 10_000_000) * 60_000_000 + int(round(frame / rec.render.fps * 1e6))
    return {
        "event_start_frame": frame,
        "event_start_timestamp": ts,
        "final_content": {
            "ego_behavior_schema": {
                "ego_behavior_reasoning": reasoning,
                "effect_on_ego_behavior": effect,
                "difficulty_score": int(rec.driving_difficulty),
            }
        },
    }


# ---------------------------------------------------------------------------------------------
# reasoning SFT (first person)
# ---------------------------------------------------------------------------------------------


def _first_person(rec: SceneRecord, say: _Say) -> list[str]:
    e, r = rec.ego, rec.road
    env = {"urban": "a city area", "suburban": "a residential area", "rural": "a rural area", "highway": "on a highway"}[r.environment]
    out = [say(f"I'm driving in {env}." if r.environment != "highway" else "I'm driving on a highway.",
               f"I am driving through {env}." if r.environment != "highway" else "I am driving on a multi-lane highway.")]
    if rec.conditions.weather in ("rain", "fog") or rec.conditions.time_of_day != "day":
        w = {"rain": "it is raining", "fog": "it is foggy", "clear": "", "overcast": ""}[rec.conditions.weather]
        tod = {"night": "it is night", "dusk": "it is dusk", "day": ""}[rec.conditions.time_of_day]
        bits = [b for b in (tod, w) if b]
        out.append(_cap(" and ".join(bits)) + ", so I drive carefully.")
    lead = rec.lead_vehicle()
    jp = junction_phrase(rec, say)
    m = e.maneuver
    if m == "straight":
        out.append(say("I keep my lane and drive straight at a constant speed.", "I proceed straight ahead at a steady speed."))
        if lead is not None:
            out.append(f"I follow {vehicle_phrase(lead)} and keep a safe distance.")
        if jp:
            out.append(f"I pass through {jp}" + (" as the light turns red." if e.rule_violation == "ran_red_light" else "; the light is green." if rec.traffic_light else "."))
    elif m in ("left_turn", "right_turn"):
        d = e.turn_direction
        out.append(f"I approach {jp or 'the junction'}.")
        if e.stop_reason == "stop_sign":
            out.append("There is a stop sign. I stop the vehicle and check surroundings for any oncoming traffic.")
        elif e.stop_reason == "red_light":
            out.append("The light is red, so I wait at the stop line until it turns green.")
        else:
            out.append("I slow down and check surroundings for any oncoming traffic.")
        out.append(f"The junction is clear. I proceed to make a {d} turn.")
    elif m.startswith("lane_change"):
        d = e.lane_change_direction
        if lead is not None:
            out.append(f"{_cap(vehicle_phrase(lead))} ahead of me is slow.")
        elif rec.construction is not None and rec.construction.lane_closed:
            out.append("Cones close my lane ahead.")
        out.append(f"I check the {d} lane, signal and change lanes to the {d}.")
    elif m == "slowing":
        why = {"red_light": "the light turns red", "stop_sign": "there is a stop sign ahead", "pedestrian": "a pedestrian is crossing",
               "lead_vehicle": "the vehicle in front brakes", "none": "the vehicle in front brakes"}[e.stop_reason]
        out.append(f"I slow down because {why}." + (" I come to a full stop." if e.stops else ""))
    elif m == "stopped":
        why = {"red_light": "for the red light", "stop_sign": "at the stop sign", "pedestrian": "while pedestrians cross",
               "lead_vehicle": "behind the stopped vehicle ahead", "none": ""}[e.stop_reason]
        out.append(f"I am stopped {why} and wait.")
    else:
        if e.stop_reason == "red_light":
            out.append("I wait at the red light. When it turns green I accelerate.")
        elif e.stop_reason == "lead_vehicle":
            out.append("I am stopped in traffic. The vehicle in front moves, so I start moving and accelerate.")
        else:
            out.append("The road ahead is clear, so I speed up.")
    crossing = [p for p in rec.pedestrians if p.action == "crossing"]
    if crossing:
        out.append(say("I notice pedestrians crossing in front of me.", "I see a pedestrian crossing the road ahead.") if len(crossing) > 1 else "I see a pedestrian crossing the road ahead.")
    if any(v.role == "parked" for v in rec.vehicles):
        out.append(say("I notice vehicles parked on the right side of the road.", "I notice a few vehicles parked along the right kerb."))
    if rec.cyclists:
        out.append("I keep a safe distance from the cyclist.")
    if any(v.is_emergency for v in rec.vehicles):
        out.append("I notice an emergency vehicle with flashing lights.")
    if rec.construction is not None:
        out.append("I pass a construction zone with cones.")
    out.append(say("I keep a vigilant eye around for any sudden movements.", "I stay alert to the road users around me."))
    return out


def reason_annotation(rec: SceneRecord, variant: int = 0) -> dict:
    say = _Say(rec, "reason", variant)
    desc = " ".join(_first_person(rec, say))
    reasons = rec.difficulty_reasons
    if reasons:
        expl = "I'm driving with " + ", ".join(reasons[:-1]) + (" and " if len(reasons) > 1 else "") + reasons[-1] + "."
        expl = expl.replace("with rain", "in rain").replace("with darkness", "in darkness")
    else:
        expl = say("The drive is simple; the road is clear.", "It is an easy drive with little traffic.")
    notice = []
    for ev in rec.events_sorted():
        text = _notice_text(rec, ev)
        if text:
            notice.append({f"Between time {ev.start_s:.2f}s and {ev.end_s:.2f}s": text})
    return {"response": {"description": desc, "driving difficulty explanation": expl, "notice": notice[:6]}}


def _notice_text(rec: SceneRecord, ev) -> Optional[str]:
    k = ev.kind
    jp = {"four_way": "a four-way intersection", "t_junction": "a T junction", "none": "the road ahead"}[rec.road.junction]
    table = {
        "ego_turns_left": f"Approaching {jp}. I slow down the vehicle and make a left turn.",
        "ego_turns_right": f"Approaching {jp}. I slow down the vehicle and make a right turn.",
        "ego_changes_lane_left": "I change lanes to the left.",
        "ego_changes_lane_right": "I change lanes to the right.",
        "ego_stops": "I bring the vehicle to a stop.",
        "ego_starts_moving": "I start moving again.",
        "ego_slows_down": "I slow down.",
        "ego_speeds_up": "I accelerate.",
        "light_turns_green": "The traffic light turns green.",
        "light_turns_yellow": "The traffic light turns yellow.",
        "light_turns_red": "The traffic light turns red.",
        "lead_vehicle_brakes": "The vehicle in front brakes.",
        "lead_vehicle_accelerates": "The vehicle in front pulls away.",
        "pedestrian_crosses": "A pedestrian crosses in front of me.",
        "emergency_vehicle_passes": "An emergency vehicle with flashing lights passes.",
        "vehicle_crosses_junction": "A vehicle crosses the intersection ahead.",
        "ego_passes_construction_zone": "I pass a construction zone.",
        "cyclist_passes": "I pass a cyclist.",
    }
    return table.get(k)


# ---------------------------------------------------------------------------------------------
# LingoQA
# ---------------------------------------------------------------------------------------------


def segment_id(rec: SceneRecord) -> str:
    return hashlib.md5(f"avcap-synth-segment-{rec.seed}".encode()).hexdigest()


def question_id(seg: str, question: str) -> str:
    return hashlib.md5(f"{seg}|{question}".encode()).hexdigest()


def lingoqa_questions(rec: SceneRecord, k: int = 5, variant: int = 0) -> list[tuple[str, list[str]]]:
    """k questions with exactly two differently phrased reference answers each."""
    say = _Say(rec, "lingoqa", variant)
    c, e = rec.conditions, rec.ego
    pool: list[tuple[str, list[str], float]] = []  # (question, [a, b], weight)
    tl = rec.traffic_light
    if tl is None:
        la = ["No.", "There is no traffic light."]
    elif tl.changes:
        la = [f"Yes, it turns {tl.state_at_end}.", f"Yes, the traffic light changes from {tl.state_at_start} to {tl.state_at_end}."]
    else:
        la = [f"Yes, {tl.state_at_end}.", f"Yes, the traffic light is showing {tl.state_at_end}."]
    pool.append(("Is there a traffic light? If yes, what color is displayed?", la, 3.0))
    wmap = {
        "clear": ["It is clear.", "The weather is clear with no rain."],
        "overcast": ["It is overcast.", "Cloudy, the sky is grey."],
        "rain": ["It is raining.", "Rainy, and the road is wet."],
        "fog": ["It is foggy.", "There is thick fog that limits visibility."],
    }
    pool.append(("What is the weather like?", wmap[c.weather], 3.0))
    tmap = {"day": ["It is daytime.", "Day."], "dusk": ["It is dusk.", "Early evening, around sunset."],
            "night": ["It is night.", "Nighttime, it is dark."]}
    pool.append(("What time of day is it?", tmap[c.time_of_day], 1.5))
    n_ped = len(rec.non_workers())
    pa = ["None.", "No pedestrian can be seen."] if n_ped == 0 else (
        ["One.", "There is one pedestrian."] if n_ped == 1 else [f"{_cap(_num(n_ped))}.", f"There are {_num(n_ped)} pedestrians."])
    pool.append(("How many pedestrians can be seen?", pa, 2.0))
    lead = rec.lead_vehicle()
    if lead is not None:
        pool.append(("What is the colour of the vehicle in front of you?",
                     [f"{_cap(lead.color)}.", f"The vehicle in front is {_a(lead.color)} {VEHICLE_TYPE_TEXT[lead.type]}."], 2.0))
    else:
        pool.append(("Is there a vehicle directly in front of you?", ["No.", "No, the lane ahead is clear."], 1.0))
    action, just, alt = _action(rec)
    pool.append(("What is the current action and its justification? Answer in the form \"action, justification\".",
                 [f"{action}, because {just}.", alt], 3.0))
    pool.append(("What should the driver do?", _should(rec), 2.0))
    pool.append(("Are there any cyclists?", ["No.", "There are no cyclists."] if not rec.cyclists else
                 ["Yes.", f"Yes, there {'is a cyclist' if len(rec.cyclists) == 1 else 'are ' + _num(len(rec.cyclists)) + ' cyclists'}."], 1.0))
    pool.append(("Is the road wet?", ["Yes.", "Yes, the road surface is wet."] if c.road_condition == "wet" else ["No.", "No, the road is dry."], 1.0))
    if e.stops:
        why = {"red_light": ["Because the traffic light is red.", "The light is red."],
               "stop_sign": ["Because of the stop sign.", "There is a stop sign."],
               "pedestrian": ["To let a pedestrian cross.", "A pedestrian is crossing the road."],
               "lead_vehicle": ["Because the vehicle in front is stopped.", "Traffic ahead is stopped."],
               "none": ["Traffic.", "The road ahead is blocked."]}[e.stop_reason]
        pool.append(("Why are we stopped?" if e.maneuver == "stopped" else "Why does the car stop?", why, 1.5))
    em = any(v.is_emergency for v in rec.vehicles)
    pool.append(("Are there any emergency vehicles?", ["Yes.", "Yes, there is an emergency vehicle with flashing lights."] if em else
                 ["No.", "No emergency vehicles are visible."], 1.0))
    pool.append(("Is there a crosswalk ahead?", ["Yes.", "Yes, there is a zebra crossing ahead."] if rec.road.crosswalk else
                 ["No.", "No crosswalk is visible."], 1.0))
    env_ans = {"urban": ["A city street.", "An urban road with buildings."], "suburban": ["A residential street.", "A suburban road."],
               "rural": ["A rural road.", "A country road."], "highway": ["A highway.", "A multi-lane divided highway."]}
    pool.append(("What kind of road are we driving on?", env_ans[rec.road.environment], 1.0))
    qs = [p[0] for p in pool]
    w = np.array([p[2] for p in pool], np.float64)
    idx = say.g.choice(len(pool), size=min(k, len(pool)), replace=False, p=w / w.sum())
    return [(pool[i][0], list(pool[i][1])) for i in sorted(idx)]


def _action(rec: SceneRecord) -> tuple[str, str, str]:
    e = rec.ego
    lead = rec.lead_vehicle()
    m = e.maneuver
    if m == "straight":
        return ("Keeping a steady speed", "the road ahead is clear" if lead is None else "it is following the vehicle in front",
                "Driving straight at constant speed as there is nothing blocking the lane.")
    if m in ("left_turn", "right_turn"):
        d = e.turn_direction
        return (f"Turning {d}", "the route goes through the junction", f"Slowing down and turning {d} at the junction.")
    if m.startswith("lane_change"):
        d = e.lane_change_direction
        why = "the vehicle in front is slower" if lead else ("the lane is closed by cones" if rec.construction and rec.construction.lane_closed else "the lane to the " + d + " is clear")
        return (f"Changing lanes to the {d}", why, f"Moving into the {d} lane, as {why}.")
    if m == "slowing":
        why = {"red_light": "the traffic light turned red", "stop_sign": "there is a stop sign", "pedestrian": "a pedestrian is crossing",
               "lead_vehicle": "the car in front is braking", "none": "the car in front is braking"}[e.stop_reason]
        return ("Slowing down" + (" to a stop" if e.stops else ""), why, f"Decelerating, as {why}.")
    if m == "stopped":
        why = {"red_light": "the traffic light is red", "stop_sign": "it is waiting at a stop sign", "pedestrian": "pedestrians are crossing",
               "lead_vehicle": "the vehicle in front is stopped", "none": "traffic is stopped"}[e.stop_reason]
        return ("Staying stopped", why, f"Remaining stationary, as {why}.")
    why = {"red_light": "the traffic light turned green", "lead_vehicle": "the vehicle in front is moving off"}.get(e.stop_reason, "the road ahead is clear")
    return ("Accelerating", why, f"Speeding up, as {why}.")


def _should(rec: SceneRecord) -> list[str]:
    e = rec.ego
    tl = rec.traffic_light
    if tl is not None and tl.state_at_end == "red" and e.rule_violation == "none":
        return ["Stop and wait for the light to turn green.", "The driver should remain stopped at the red light."]
    if any(p.action == "crossing" for p in rec.pedestrians) and e.stops:
        return ["Wait for the pedestrians to finish crossing.", "The driver should stay stopped and let the pedestrian cross."]
    if e.maneuver == "stopped":
        return ["Stay stopped until the way ahead is clear.", "The driver should wait behind the vehicle in front."]
    if e.maneuver == "slowing":
        return ["Slow down and keep a safe distance.", "The driver should reduce speed and be ready to stop."]
    if e.maneuver in ("left_turn", "right_turn"):
        return [f"Complete the {e.turn_direction} turn carefully.", f"The driver should turn {e.turn_direction} while watching for other road users."]
    if e.maneuver.startswith("lane_change"):
        return [f"Change lanes to the {e.lane_change_direction} once it is safe.", "The driver should check mirrors and merge into the free lane."]
    if rec.conditions.weather in ("rain", "fog"):
        return ["Drive slowly and keep a larger distance because of the weather.", "The driver should be cautious and reduce speed in the poor weather."]
    return ["Keep driving at a steady speed.", "The driver should continue straight and keep the lane."]


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------


def texts_for(rec: SceneRecord) -> list[str]:
    """Every text avcap emits for one record (for tokenizer training)."""

    out = [caption(rec)]
    out.append(json.dumps(human_annotation(rec), ensure_ascii=False, indent=4))
    out.append(json.dumps(cv_annotation(rec), ensure_ascii=False, indent=4))
    out.append(json.dumps(reason_annotation(rec), ensure_ascii=False, indent=4))
    for q, refs in lingoqa_questions(rec):
        out.append(f"Question: {q}\nAnswer: {refs[0]}\nAnswer: {refs[1]}")
    return out
