"""`SceneRecord`: the ground truth of one synthetic dash-cam video.

Everything avcap emits for a synthetic video — the pixels, the three training annotation shapes, the
reference caption, the LingoQA answers and the benchmark answers — is derived from one
`SceneRecord`. The record states only what the renderer draws: if a field says a cyclist rides on
the right, the frames show one there.

Conventions
- Times are seconds from the first frame of the rendered video (`0 <= t <= duration_s`).
  An interval `[start_s, end_s]` is when the thing is *visible* / *happening*.
- Sides are from the ego driver's point of view: `"left"`, `"right"`, `"ahead"` (in front, in or
  across the ego's path). Lanes are counted from the right edge of the ego's carriageway:
  `ego_lane = 0` is the rightmost lane of the ego's direction of travel (traffic drives on the right).
- Distances are metres along the road ahead of the ego's camera.
- Every enum is a `Literal` of lowercase snake_case strings; `*_TEXT` maps give the human phrase.
- The record is declarative: summary fields that a question needs (`moving_at_start`,
  `state_at_end`, `nearest_vehicle_position`, ...) are stored explicitly, and consistent with the
  detailed fields (the world sampler guarantees it; `SceneRecord.check()` verifies it).

Reading a record to answer a question (examples)
- "What colour is the lead vehicle?"      -> `record.lead_vehicle().color` (None: no lead vehicle)
- "Is there a traffic light? What colour?" -> `record.traffic_light` and `.state_at_start/_end`
- "What does the ego do first?"           -> `record.events_sorted()[0]`
- "Which of these is absent?"             -> `record.present_elements()` (a set of `Element`)
- "Where is the nearest vehicle?"         -> `record.nearest_vehicle_position`
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

# ---------------------------------------------------------------------------------------------
# enums
# ---------------------------------------------------------------------------------------------

Environment = Literal["urban", "suburban", "rural", "highway"]
Buildings = Literal["none", "houses", "shops", "high_rise"]
"""What lines the road: nothing (fields/highway), detached houses, low shop fronts, tall towers."""
TimeOfDay = Literal["day", "dusk", "night"]
Weather = Literal["clear", "overcast", "rain", "fog"]
RoadCondition = Literal["dry", "wet"]
Visibility = Literal["good", "reduced", "poor"]
"""good: clear/overcast day or dusk; reduced: rain, or night; poor: fog."""
RoadCurve = Literal["straight", "curves_left", "curves_right"]
"""Direction of the road ahead (independent of the ego's own turn/lane change)."""
JunctionType = Literal["none", "four_way", "t_junction"]
"""none: straight segment with no junction; four_way: crossroads; t_junction: a side road joins
from the left or the right (`junction_side`)."""
Side = Literal["left", "right", "ahead"]
LateralSide = Literal["left", "right"]
Color = Literal["red", "blue", "green", "yellow", "white", "black", "gray", "orange"]
VehicleType = Literal[
    "sedan", "suv", "pickup", "van", "bus", "truck", "motorcycle", "ambulance", "police_car", "fire_truck"
]
"""Drawn sizes: motorcycle < sedan < suv/pickup/police_car < van/ambulance < truck/bus/fire_truck."""
VehicleRole = Literal["lead", "adjacent", "oncoming", "parked", "cross_traffic"]
"""lead: ahead of the ego in the ego's lane; adjacent: ahead in a neighbouring same-direction lane;
oncoming: in an opposite-direction lane, driving towards the ego; parked: stationary at the kerb;
cross_traffic: crossing the junction ahead from one side to the other."""
VehicleBehavior = Literal[
    "steady",  # constant speed
    "braking",  # decelerating (brake lights on), possibly to a stop
    "accelerating",  # speeding up (e.g. pulling away at a green light)
    "stopped",  # stationary in traffic the whole clip (waiting at a light/sign)
    "parked",  # stationary at the kerb
    "turning_left",
    "turning_right",
    "lane_change_left",  # directions are the vehicle's own: an oncoming car's "left" is the ego's right
    "lane_change_right",
    "crossing",  # cross traffic passing through the junction ahead
]
Position = Literal["ahead", "ahead_left", "ahead_right", "left", "right"]
"""Where an object is relative to the ego: ahead (same lane / in the path), ahead_left/ahead_right
(further down the road, in a lane or at the kerb to that side), left/right (alongside, close)."""
LightState = Literal["red", "yellow", "green"]
PedestrianKind = Literal["adult", "child", "worker"]
"""worker: construction worker in a high-visibility orange vest (only in construction zones)."""
PedestrianAction = Literal["crossing", "waiting", "walking", "working"]
"""crossing: walking across the road ahead (on the crosswalk if there is one); waiting: standing at
the kerb next to the crossing point; walking: walking along the pavement; working: a worker standing
by the cones."""
CrossingDirection = Literal["left_to_right", "right_to_left"]
Carrying = Literal["nothing", "umbrella", "bag"]
CyclistAction = Literal["riding_same_direction", "riding_oncoming", "crossing"]
SignKind = Literal["stop", "speed_limit", "yield", "pedestrian_crossing", "road_work", "no_parking"]
"""Sign faces: stop = red octagon "STOP"; speed_limit = white rectangle with the limit;
yield = red-bordered white triangle; pedestrian_crossing = blue square; road_work = orange diamond;
no_parking = blue disc with a red ring."""
EgoManeuver = Literal[
    "straight",  # keeps lane at roughly constant speed
    "left_turn",  # turns left at the junction ahead
    "right_turn",  # turns right at the junction ahead
    "lane_change_left",
    "lane_change_right",
    "slowing",  # decelerates (to a stop or to a crawl) in its lane
    "stopped",  # stationary for the whole clip
    "accelerating",  # pulls away from a stop / speeds up in its lane
]
SpeedTrend = Literal["constant", "decelerating", "accelerating", "stationary", "stop_and_go"]
"""stop_and_go: decelerates to a stop, then pulls away again within the clip."""
StopReason = Literal["none", "red_light", "stop_sign", "pedestrian", "lead_vehicle"]
RuleViolation = Literal["none", "ran_red_light", "rolled_stop_sign"]
EventKind = Literal[
    "light_turns_green",
    "light_turns_yellow",
    "light_turns_red",
    "ego_starts_moving",
    "ego_stops",
    "ego_slows_down",
    "ego_speeds_up",
    "ego_turns_left",
    "ego_turns_right",
    "ego_changes_lane_left",
    "ego_changes_lane_right",
    "lead_vehicle_brakes",
    "lead_vehicle_accelerates",
    "lead_vehicle_turns_left",
    "lead_vehicle_turns_right",
    "vehicle_changes_lane_left",
    "vehicle_changes_lane_right",
    "vehicle_crosses_junction",
    "oncoming_vehicle_passes",
    "emergency_vehicle_passes",
    "pedestrian_crosses",
    "cyclist_crosses",
    "cyclist_passes",
    "ego_passes_stop_sign",
    "ego_passes_construction_zone",
]
Element = Literal[
    "lead_vehicle",
    "oncoming_vehicle",
    "parked_vehicle",
    "bus",
    "truck",
    "motorcycle",
    "emergency_vehicle",
    "pedestrian",
    "child",
    "cyclist",
    "worker",
    "traffic_light",
    "stop_sign",
    "speed_limit_sign",
    "yield_sign",
    "crosswalk",
    "intersection",
    "construction_cones",
    "buildings",
    "trees",
]
"""Vocabulary of `SceneRecord.present_elements()`, for presence / absence questions."""

# human phrases for the enums (used by annotate.py and handy for question pools)
VEHICLE_TYPE_TEXT: dict[str, str] = {
    "sedan": "sedan",
    "suv": "SUV",
    "pickup": "pickup truck",
    "van": "van",
    "bus": "bus",
    "truck": "box truck",
    "motorcycle": "motorcycle",
    "ambulance": "ambulance",
    "police_car": "police car",
    "fire_truck": "fire truck",
}
EMERGENCY_TYPES: tuple[str, ...] = ("ambulance", "police_car", "fire_truck")
MANEUVER_TEXT: dict[str, str] = {
    "straight": "driving straight",
    "left_turn": "turning left",
    "right_turn": "turning right",
    "lane_change_left": "changing lanes to the left",
    "lane_change_right": "changing lanes to the right",
    "slowing": "slowing down",
    "stopped": "stopped",
    "accelerating": "accelerating",
}
ENVIRONMENT_TEXT: dict[str, str] = {
    "urban": "urban",
    "suburban": "suburban",
    "rural": "rural",
    "highway": "highway",
}
JUNCTION_TEXT: dict[str, str] = {
    "none": "straight road segment with no intersection",
    "four_way": "four-way intersection",
    "t_junction": "T-junction",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# ---------------------------------------------------------------------------------------------
# parts
# ---------------------------------------------------------------------------------------------


class RenderSettings(_Model):
    """How the video of this record was rendered (the world itself does not depend on it)."""

    width: int = Field(description="frame width in pixels")
    height: int = Field(description="frame height in pixels")
    fps: float = Field(description="frames per second of the MP4")
    num_frames: int = Field(description="frames in the MP4 (= round(duration_s * fps))")


class Road(_Model):
    """The road the ego drives on and its surroundings (Scene Description)."""

    environment: Environment
    buildings: Buildings = Field(description="what lines the road; 'none' on highways and in rural scenes")
    trees: bool = Field(description="trees are drawn at the roadside")
    lanes_ego_direction: int = Field(ge=1, le=3, description="lanes in the ego's direction of travel")
    lanes_oncoming: int = Field(ge=0, le=3, description="lanes for oncoming traffic (0: one-way road)")
    lane_count: int = Field(ge=1, le=6, description="total lanes = lanes_ego_direction + lanes_oncoming")
    divided: bool = Field(description="a median barrier separates the directions (highways)")
    ego_lane: int = Field(ge=0, description="the ego's lane at the start, 0 = rightmost of its direction")
    curve: RoadCurve = Field(description="direction of the road ahead")
    junction: JunctionType
    junction_side: Optional[LateralSide] = Field(
        default=None, description="for a T-junction, the side the side road joins from; else None"
    )
    junction_distance_m: Optional[float] = Field(
        default=None, description="distance from the ego to the junction's near edge at t=0; None: no junction"
    )
    crosswalk: bool = Field(description="zebra crosswalk stripes are painted across the road ahead")
    crosswalk_distance_m: Optional[float] = Field(default=None, description="distance at t=0; None: none")
    parking_lane: bool = Field(description="a kerbside parking lane on the right (parked cars may stand there)")
    sidewalk: bool = Field(description="pavements on both sides (urban/suburban)")
    curvature_per_m: float = Field(
        default=0.0, description="road curvature (1/m; <0 bends left, >0 right); the centre line is "
        "X = curvature·Z²/2 in the world frame of geometry.py"
    )
    median_m: float = Field(default=0.0, description="width of the median strip between the directions (0: none)")
    cross_road_width_m: Optional[float] = Field(default=None, description="width of the crossing road; None: no junction")
    stop_line_distance_m: Optional[float] = Field(
        default=None, description="distance at t=0 to the ego's stop line at the junction / crosswalk; None: no stop line"
    )


class Conditions(_Model):
    """Lighting and weather (Scene Description)."""

    time_of_day: TimeOfDay
    weather: Weather
    road_condition: RoadCondition = Field(description="wet: rain, or a wet surface after rain (reflective)")
    visibility: Visibility
    headlights_on: bool = Field(description="vehicles show headlights (dusk, night, fog, rain)")
    streetlights: bool = Field(description="street lamps are lit (night/dusk in urban/suburban scenes)")


class LightPhase(_Model):
    state: LightState
    start_s: float
    end_s: float


class TrafficLight(_Model):
    """The traffic signal(s) controlling the ego's approach to the junction ahead."""

    heads: int = Field(ge=1, le=2, description="signal heads visible (1: right pole; 2: right pole + overhead)")
    side: Literal["right", "overhead"] = Field(description="where the main head stands")
    distance_m: float = Field(description="distance from the ego at t=0 (it is at the junction/stop line)")
    x_m: float = Field(description="world X of the pole (geometry.py frame)")
    z_m: float = Field(description="world Z of the pole and the overhead head")
    phases: list[LightPhase] = Field(description="contiguous phases covering [0, duration_s], in time order")
    state_at_start: LightState
    state_at_end: LightState
    changes: bool = Field(description="the state changes during the clip")
    start_s: float = Field(default=0.0, description="first visible (the main head is in the frame)")
    end_s: float = Field(default=0.0, description="last visible (< duration_s: it leaves the view, e.g. in a turn)")


class Vehicle(_Model):
    """Any other vehicle (Key Objects, Actions & Motion)."""

    id: str = Field(description="unique within the record, e.g. 'v0'")
    type: VehicleType
    color: Color = Field(description="body colour (emergency vehicles: their livery's main colour)")
    role: VehicleRole
    behavior: VehicleBehavior
    position: Position = Field(description="where it is relative to the ego when first visible")
    side: Side = Field(description="coarse side: ahead (in the ego lane/path), left or right")
    lane_offset: int = Field(
        description="lane relative to the ego's lane at t=0 (0 same lane, -1 one to the left, +1 one to "
        "the right; oncoming lanes are negative; parked vehicles: the kerb beyond the rightmost lane)"
    )
    distance_start_m: float = Field(description="distance ahead of the ego when first visible (start_s)")
    distance_end_m: float = Field(description="distance ahead of the ego at the end of the clip (<0: behind it)")
    start_s: float = Field(description="first visible")
    end_s: float = Field(description="last visible")
    maneuver_start_s: Optional[float] = Field(
        default=None, description="start of its braking/turn/lane change/crossing; None for steady/parked"
    )
    maneuver_end_s: Optional[float] = None
    brake_lights: bool = Field(description="brake lights shown (braking or stopped)")
    emergency_lights: bool = Field(description="roof lights flashing (emergency vehicles responding)")
    is_emergency: bool
    is_transit: bool = Field(description="a public-transit bus")
    is_commercial: bool = Field(description="truck, van or bus")
    track: list[tuple[float, float, float, float]] = Field(
        description="pose keyframes (t s, world X m, world Z m, heading deg), linear in between; "
        "the renderer draws from it"
    )


class Pedestrian(_Model):
    """A person on foot (Characters & Interactions)."""

    id: str
    kind: PedestrianKind
    action: PedestrianAction
    side: Side = Field(description="left/right kerb, or ahead while crossing the road")
    start_side: LateralSide = Field(description="kerb the person starts on")
    crossing_direction: Optional[CrossingDirection] = Field(default=None, description="for action=crossing")
    on_crosswalk: bool = Field(description="crossing on the painted crosswalk")
    carrying: Carrying
    shirt_color: Color
    group_id: Optional[int] = Field(default=None, description="people with the same group id walk together")
    distance_m: float = Field(description="distance ahead of the ego at t=0")
    start_s: float = Field(description="first visible")
    end_s: float = Field(description="last visible")
    cross_start_s: Optional[float] = Field(
        default=None, description="crossing: starts stepping onto the road (0.0: already crossing when the clip starts)"
    )
    cross_end_s: Optional[float] = Field(
        default=None, description="crossing: reaches the far kerb (> duration_s: still crossing at the end)"
    )
    track: list[tuple[float, float, float, float]] = Field(
        description="pose keyframes (t s, world X m, world Z m, heading deg), linear in between; "
        "the renderer draws from it"
    )


class Cyclist(_Model):
    id: str
    action: CyclistAction
    side: Side
    crossing_direction: Optional[CrossingDirection] = None
    shirt_color: Color
    distance_start_m: float
    distance_end_m: float
    start_s: float
    end_s: float
    track: list[tuple[float, float, float, float]] = Field(
        description="pose keyframes (t s, world X m, world Z m, heading deg), linear in between; "
        "the renderer draws from it"
    )


class Sign(_Model):
    id: str
    kind: SignKind
    side: LateralSide
    text: str = Field(description="text on the face ('STOP', '30', ''); legible only at high resolution")
    color: str = Field(description="dominant face colour in words, e.g. 'red', 'white', 'orange'")
    distance_m: float = Field(description="distance ahead at t=0 (= world Z of the sign)")
    x_m: float = Field(description="world X of the sign post")
    start_s: float = Field(default=0.0, description="first visible")
    end_s: float = Field(default=0.0, description="last visible")


class Construction(_Model):
    """A work zone: cones along the edge of a lane, optionally workers and a road-work sign."""

    side: LateralSide = Field(description="side of the ego lane the cones line")
    cones: int = Field(ge=3)
    workers: int = Field(ge=0, description="workers standing by the cones (also listed in pedestrians)")
    distance_start_m: float
    length_m: float
    lane_closed: bool = Field(description="the cones close a lane (the ego's lane: it changes lanes)")
    cone_positions: list[tuple[float, float]] = Field(description="world (X, Z) of every cone")


class Ego(_Model):
    """What the camera car does (Ego Vehicle Behavior)."""

    maneuver: EgoManeuver = Field(description="the primary maneuver of the clip")
    maneuver_start_s: Optional[float] = Field(default=None, description="start of the turn/lane change/slowdown")
    maneuver_end_s: Optional[float] = None
    speed_keyframes: list[tuple[float, float]] = Field(
        description="(t seconds, speed km/h), piecewise linear over [0, duration_s]; the renderer integrates it"
    )
    speed_start_kmh: float
    speed_end_kmh: float
    speed_trend: SpeedTrend
    moving_at_start: bool = Field(description="speed at t=0 above 1 km/h")
    moving_at_end: bool = Field(description="speed at the end above 1 km/h")
    stops: bool = Field(description="comes to a stop during the clip (or is stopped throughout)")
    stop_reason: StopReason
    stop_start_s: Optional[float] = Field(default=None, description="when the ego is first at rest")
    stop_end_s: Optional[float] = Field(default=None, description="when it pulls away again (None: stays)")
    following_lead: bool = Field(description="follows a lead vehicle in its lane")
    turn_direction: Optional[LateralSide] = Field(default=None, description="left_turn / right_turn")
    lane_change_direction: Optional[LateralSide] = None
    yields_to: Optional[str] = Field(default=None, description="id of the road user the ego waits for")
    rule_violation: RuleViolation
    lane_end: int = Field(description="lane index at the end (after a lane change)")
    track: list[tuple[float, float, float, float]] = Field(
        description="camera pose keyframes (t s, world X m, world Z m, heading deg), linear in between"
    )


class Event(_Model):
    """A timed happening; `events` lists every one, sorted by start_s."""

    kind: EventKind
    start_s: float
    end_s: float
    actor: Optional[str] = Field(default=None, description="id of the vehicle/pedestrian/cyclist; None: ego/light")
    text: str = Field(description="neutral short description, e.g. 'the traffic light turns green'")


# ---------------------------------------------------------------------------------------------
# the record
# ---------------------------------------------------------------------------------------------


class SceneRecord(_Model):
    """Ground truth of one synthetic video. See the module docstring for conventions."""

    schema_version: int = SCHEMA_VERSION
    video_id: str
    seed: int = Field(description="the seed that regenerates this record with world.sample_scene")
    duration_s: float
    render: RenderSettings
    scenery_seed: int = Field(description="seeds the placement of buildings, trees and rain streaks")
    road: Road
    conditions: Conditions
    traffic_light: Optional[TrafficLight] = Field(default=None, description="None: no traffic light visible")
    signs: list[Sign] = Field(default_factory=list)
    construction: Optional[Construction] = Field(default=None, description="None: no construction zone")
    vehicles: list[Vehicle] = Field(default_factory=list)
    pedestrians: list[Pedestrian] = Field(default_factory=list, description="includes workers")
    cyclists: list[Cyclist] = Field(default_factory=list)
    ego: Ego
    events: list[Event] = Field(default_factory=list, description="sorted by start_s")
    # summaries that questions ask for directly
    nearest_vehicle_id: Optional[str] = Field(
        default=None, description="closest vehicle at nearest_vehicle_time_s (the first moment any vehicle is visible)"
    )
    nearest_vehicle_time_s: Optional[float] = None
    nearest_vehicle_position: Optional[Position] = Field(default=None, description="None: no vehicles")
    driving_difficulty: int = Field(ge=1, le=5, description="1 trivial .. 5 very demanding")
    difficulty_reasons: list[str] = Field(default_factory=list, description="short phrases, e.g. 'heavy rain'")
    interesting_scenario: bool
    critical_object_id: Optional[str] = Field(
        default=None, description="id of the road user that most affects the ego (None: none)"
    )

    # ---- convenience accessors (pure functions of the fields) ----
    def lead_vehicle(self) -> Optional[Vehicle]:
        for v in self.vehicles:
            if v.role == "lead":
                return v
        return None

    def vehicles_with(self, role: Optional[str] = None, behavior: Optional[str] = None) -> list[Vehicle]:
        return [
            v
            for v in self.vehicles
            if (role is None or v.role == role) and (behavior is None or v.behavior == behavior)
        ]

    def object_by_id(self, oid: str):
        for group in (self.vehicles, self.pedestrians, self.cyclists, self.signs):
            for o in group:
                if o.id == oid:
                    return o
        return None

    def light_state_at(self, t: float) -> Optional[LightState]:
        if self.traffic_light is None:
            return None
        for p in self.traffic_light.phases:
            if p.start_s <= t < p.end_s:
                return p.state
        return self.traffic_light.phases[-1].state

    def events_sorted(self) -> list[Event]:
        return sorted(self.events, key=lambda e: (e.start_s, e.end_s, e.kind))

    def crossing_pedestrians(self) -> list[Pedestrian]:
        return [p for p in self.pedestrians if p.action == "crossing"]

    def non_workers(self) -> list[Pedestrian]:
        return [p for p in self.pedestrians if p.kind != "worker"]

    def present_elements(self) -> set[str]:
        """Which `Element`s are visible somewhere in the clip."""
        el: set[str] = set()
        for v in self.vehicles:
            el.add({"lead": "lead_vehicle", "oncoming": "oncoming_vehicle", "parked": "parked_vehicle"}.get(v.role, "vehicle"))
            if v.type == "bus":
                el.add("bus")
            if v.type in ("truck", "fire_truck"):
                el.add("truck")
            if v.type == "motorcycle":
                el.add("motorcycle")
            if v.is_emergency:
                el.add("emergency_vehicle")
        el.discard("vehicle")
        for p in self.pedestrians:
            el.add("worker" if p.kind == "worker" else "pedestrian")
            if p.kind == "child":
                el.add("child")
        if self.cyclists:
            el.add("cyclist")
        if self.traffic_light is not None:
            el.add("traffic_light")
        kinds = {s.kind for s in self.signs}
        if "stop" in kinds:
            el.add("stop_sign")
        if "speed_limit" in kinds:
            el.add("speed_limit_sign")
        if "yield" in kinds:
            el.add("yield_sign")
        if self.road.crosswalk:
            el.add("crosswalk")
        if self.road.junction != "none":
            el.add("intersection")
        if self.construction is not None:
            el.add("construction_cones")
        if self.road.buildings != "none":
            el.add("buildings")
        if self.road.trees:
            el.add("trees")
        return el

    def check(self) -> list[str]:
        """Internal-consistency problems (empty list: consistent)."""
        problems: list[str] = []
        r = self.road
        if r.lane_count != r.lanes_ego_direction + r.lanes_oncoming:
            problems.append("road.lane_count != lanes_ego_direction + lanes_oncoming")
        if not 0 <= r.ego_lane < r.lanes_ego_direction:
            problems.append("road.ego_lane out of range")
        if (r.junction == "t_junction") != (r.junction_side is not None):
            problems.append("road.junction_side must be set exactly for a T-junction")
        ids = [o.id for g in (self.vehicles, self.pedestrians, self.cyclists, self.signs) for o in g]
        if len(ids) != len(set(ids)):
            problems.append("duplicate object ids")
        if sum(v.role == "lead" for v in self.vehicles) > 1:
            problems.append("more than one lead vehicle")
        tl = self.traffic_light
        if tl is not None:
            if not tl.phases or tl.phases[0].start_s != 0.0:
                problems.append("traffic_light.phases must start at 0")
            if tl.phases and tl.phases[0].state != tl.state_at_start:
                problems.append("traffic_light.state_at_start mismatch")
            if tl.phases and tl.phases[-1].state != tl.state_at_end:
                problems.append("traffic_light.state_at_end mismatch")
            if tl.changes != (len(tl.phases) > 1):
                problems.append("traffic_light.changes mismatch")
        if self.ego.following_lead and self.lead_vehicle() is None:
            problems.append("ego.following_lead without a lead vehicle")
        if [e.start_s for e in self.events] != sorted(e.start_s for e in self.events):
            problems.append("events not sorted by start_s")
        for oid in [self.nearest_vehicle_id, self.critical_object_id]:
            if oid is not None and self.object_by_id(oid) is None:
                problems.append(f"unknown object id {oid}")
        return problems
