"""Sample a `SceneRecord` from a seed: the story of one synthetic dash-cam clip.

`sample_scene(seed, duration_s=..., fps=..., width=..., height=...)` draws the ego's primary
maneuver uniformly from the eight `EgoManeuver`s, then an environment compatible with it (weighted
so that every environment is equally likely overall), lighting and weather independently and
uniformly, a road layout, the ego's speed profile and path, the traffic-light phases, and the other
road users — each placed so that the story is physically consistent (nobody drives through anybody,
pedestrians cross only in front of a stopped ego, cross traffic moves only while the ego's light is
red). Every actor's pose is then sampled into keyframes (`track`), and what is actually visible
from the camera decides which actors are kept and their visible intervals; events, summaries and
difficulty are derived last.

Only a `numpy.random.Generator` seeded from `seed` is used: the same arguments give the same record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from avcap.demo.synth import geometry as G
from avcap.demo.synth.scene import (
    EMERGENCY_TYPES,
    Conditions,
    Construction,
    Cyclist,
    Ego,
    Event,
    LightPhase,
    Pedestrian,
    RenderSettings,
    Road,
    SceneRecord,
    Sign,
    TrafficLight,
    Vehicle,
)

MANEUVERS = (
    "straight",
    "left_turn",
    "right_turn",
    "lane_change_left",
    "lane_change_right",
    "slowing",
    "stopped",
    "accelerating",
)
# close to uniform; stopping stories a little more often so that "is the ego moving at the end?"
# is not almost always yes
MANEUVER_WEIGHTS = (0.115, 0.12, 0.12, 0.11, 0.11, 0.14, 0.145, 0.14)
ENVIRONMENTS = ("urban", "suburban", "rural", "highway")
# environment weights per maneuver: every environment has probability 1/4 overall
_ENV_WEIGHTS = {
    "turn": {"urban": 0.25, "suburban": 0.25, "rural": 0.5, "highway": 0.0},
    "lane_change": {"urban": 0.25, "suburban": 0.25, "rural": 0.0, "highway": 0.5},
    "other": {"urban": 0.25, "suburban": 0.25, "rural": 0.25, "highway": 0.25},
}
COLORS = ("red", "blue", "green", "yellow", "white", "black", "gray", "orange")
LEAD_TYPES = ("sedan", "suv", "pickup", "van", "truck", "bus", "motorcycle")
OTHER_TYPES = ("sedan", "sedan", "suv", "suv", "pickup", "van", "truck", "bus", "motorcycle")
PARKED_TYPES = ("sedan", "suv", "pickup", "van")
CRUISE_KMH = {"urban": (30, 45), "suburban": (30, 50), "rural": (50, 80), "highway": (80, 110)}
EMERGENCY_COLOR = {"ambulance": "white", "police_car": "black", "fire_truck": "red"}
MIN_BOX_FRAC = 0.02  # an actor is visible when its box is at least this tall (fraction of height)


# ---------------------------------------------------------------------------------------------
# kinematics
# ---------------------------------------------------------------------------------------------


class Profile:
    """Piecewise-linear speed (km/h) over time; constant outside its keyframes."""

    def __init__(self, keyframes: list[tuple[float, float]]):
        kf = sorted(keyframes)
        self.kf = [(round(float(t), 3), round(float(v), 2)) for t, v in kf]
        self.t = np.array([k[0] for k in self.kf], dtype=np.float64)
        self.v = np.array([k[1] for k in self.kf], dtype=np.float64) / 3.6
        seg = np.diff(self.t) * (self.v[:-1] + self.v[1:]) / 2
        self.cum = np.concatenate([[0.0], np.cumsum(seg)])

    def speed(self, t: float) -> float:
        """m/s"""
        return float(np.interp(t, self.t, self.v))

    def kmh(self, t: float) -> float:
        return self.speed(t) * 3.6

    def dist(self, t: float) -> float:
        """metres travelled from time self.t[0] to t (negative before the first keyframe)."""
        t0 = self.t[0]
        if t <= t0:
            return self.v[0] * (t - t0)
        if t >= self.t[-1]:
            return float(self.cum[-1] + self.v[-1] * (t - self.t[-1]))
        i = int(np.searchsorted(self.t, t, side="right")) - 1
        dt = t - self.t[i]
        span = self.t[i + 1] - self.t[i]
        a = (self.v[i + 1] - self.v[i]) / span if span > 0 else 0.0
        return float(self.cum[i] + self.v[i] * dt + 0.5 * a * dt * dt)

    def time_at_dist(self, d: float) -> float:
        """First time at which dist(t) >= d (inf if never)."""
        lo, hi = self.t[0], self.t[-1] + 1e4
        if self.dist(hi) < d:
            return math.inf
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.dist(mid) >= d:
                hi = mid
            else:
                lo = mid
        return hi


def smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


@dataclass
class StraightPath:
    """Along the main road (direction +1) or against it (-1) at lateral offset `u` from the centre
    line; path position s is world Z travelled in the direction of motion."""

    u: float
    direction: int = 1
    curvature: float = 0.0
    z0: float = 0.0

    def pose(self, s: float) -> tuple[float, float, float]:
        z = self.z0 + self.direction * s
        x = G.road_centre_x(z, self.curvature) + self.u
        hdg = G.road_heading_deg(z, self.curvature) + (0.0 if self.direction > 0 else 180.0)
        return x, z, hdg


@dataclass
class TurnPath:
    """Straight along the main road at lateral `u` until Z = z_a, a quarter circle of radius R,
    then straight along the cross road."""

    u: float
    z_a: float
    radius: float
    turn: str  # "left" | "right"

    @property
    def arc_len(self) -> float:
        return math.pi * self.radius / 2

    def pose(self, s: float) -> tuple[float, float, float]:
        sgn = 1.0 if self.turn == "right" else -1.0
        if s <= self.z_a:
            return self.u, s, 0.0
        q = s - self.z_a
        if q <= self.arc_len:
            th = q / self.radius
            return self.u + sgn * self.radius * (1 - math.cos(th)), self.z_a + self.radius * math.sin(th), sgn * math.degrees(th)
        rest = q - self.arc_len
        return self.u + sgn * (self.radius + rest), self.z_a + self.radius, sgn * 90.0


@dataclass
class CrossPath:
    """Along the cross road at world Z = z_lane, moving towards +X (direction +1) or -X."""

    z_lane: float
    direction: int
    x0: float

    def pose(self, s: float) -> tuple[float, float, float]:
        return self.x0 + self.direction * s, self.z_lane, 90.0 * self.direction


@dataclass
class Mover:
    """An actor's motion: path position s(t) = s0 + P(t + lag) - P(lag), plus a lateral shift."""

    path: object
    profile: Profile
    s0: float = 0.0
    lag: float = 0.0
    lat_from: float = 0.0  # lateral shift (m, + right) reached smoothly over [lat_t0, lat_t1]
    lat_to: float = 0.0
    lat_t0: float = 0.0
    lat_t1: float = 0.0

    def s(self, t: float) -> float:
        return self.s0 + self.profile.dist(t + self.lag) - self.profile.dist(self.lag)

    def speed(self, t: float) -> float:
        return self.profile.speed(t + self.lag)

    def lateral(self, t: float) -> float:
        if self.lat_t1 <= self.lat_t0:
            return self.lat_from
        return self.lat_from + (self.lat_to - self.lat_from) * smoothstep((t - self.lat_t0) / (self.lat_t1 - self.lat_t0))

    def pose(self, t: float) -> tuple[float, float, float]:
        x, z, hdg = self.path.pose(self.s(t))
        lat = self.lateral(t)
        if lat:
            psi = math.radians(hdg)
            x += lat * math.cos(psi)
            z -= lat * math.sin(psi)
        if self.lat_t1 > self.lat_t0 and self.lat_t0 < t < self.lat_t1:
            # heading follows the lateral motion during a lane change
            v = max(self.speed(t), 1.0)
            dt = 0.05
            dl = (self.lateral(t + dt) - self.lateral(t - dt)) / (2 * dt)
            hdg += math.degrees(math.atan2(dl, v))
        return x, z, hdg


@dataclass
class Static:
    x: float
    z: float
    hdg: float = 0.0

    def pose(self, t: float) -> tuple[float, float, float]:
        return self.x, self.z, self.hdg


@dataclass
class Walker:
    """Piecewise-linear walk through (t, X, Z) waypoints, facing the direction of motion."""

    points: list[tuple[float, float, float]]
    face: float = 0.0  # heading when standing still

    def pose(self, t: float) -> tuple[float, float, float]:
        pts = self.points
        if t <= pts[0][0]:
            return pts[0][1], pts[0][2], self._hdg(0)
        for i in range(len(pts) - 1):
            t0, x0, z0 = pts[i]
            t1, x1, z1 = pts[i + 1]
            if t <= t1:
                a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                return x0 + a * (x1 - x0), z0 + a * (z1 - z0), self._hdg(i)
        return pts[-1][1], pts[-1][2], self._hdg(len(pts) - 1)

    def _hdg(self, i: int) -> float:
        pts = self.points
        if i < len(pts) - 1:
            dx, dz = pts[i + 1][1] - pts[i][1], pts[i + 1][2] - pts[i][2]
            if abs(dx) + abs(dz) > 1e-6:
                return math.degrees(math.atan2(dx, dz))
        return self.face


def sample_track(motion, duration: float, dt: float) -> list[tuple[float, float, float, float]]:
    n = max(2, int(math.ceil(duration / dt)) + 1)
    out = []
    prev_h = None
    for t in np.linspace(0.0, duration, n):
        x, z, h = motion.pose(float(t))
        if prev_h is not None:  # unwrap so linear interpolation never spins the wrong way
            while h - prev_h > 180:
                h -= 360
            while h - prev_h < -180:
                h += 360
        prev_h = h
        out.append((round(float(t), 3), round(x, 3), round(z, 3), round(h, 2)))
    return out


# ---------------------------------------------------------------------------------------------
# the sampler
# ---------------------------------------------------------------------------------------------


class _Rng:
    """Thin helpers over numpy's Generator returning plain Python values."""

    def __init__(self, seed: int):
        self.g = np.random.default_rng(seed)

    def u(self, a: float = 0.0, b: float = 1.0) -> float:
        return float(self.g.uniform(a, b))

    def chance(self, p: float) -> bool:
        return bool(self.g.random() < p)

    def pick(self, seq, p=None):
        seq = list(seq)
        if p is not None:
            p = np.asarray(p, dtype=np.float64)
            p = p / p.sum()
        return seq[int(self.g.choice(len(seq), p=p))]

    def int(self, a: int, b: int) -> int:
        """inclusive"""
        return int(self.g.integers(a, b + 1))


@dataclass
class _Actor:
    kind: str  # vehicle | pedestrian | cyclist
    id: str
    motion: object
    attrs: dict
    size: tuple[float, float, float]  # length, width, height


class _Story:
    """Mutable state while sampling one scene."""

    def __init__(self, seed: int, duration: float, fps: float, width: int, height: int):
        self.seed = seed
        self.T = float(duration)
        self.fps = float(fps)
        self.width = width
        self.height = height
        self.r = _Rng(seed)
        self.actors: list[_Actor] = []
        self.events: list[Event] = []
        self.signs: list[Sign] = []
        self.next_id = {"vehicle": 0, "pedestrian": 0, "cyclist": 0, "sign": 0}
        self.light: Optional[dict] = None
        self.construction: Optional[dict] = None
        self.ego_info: dict = {}
        self.difficulty_reasons: list[str] = []

    def new_id(self, kind: str) -> str:
        prefix = {"vehicle": "v", "pedestrian": "p", "cyclist": "c", "sign": "s"}[kind]
        i = self.next_id[kind]
        self.next_id[kind] += 1
        return f"{prefix}{i}"

    def event(self, kind: str, start: float, end: float, text: str, actor: Optional[str] = None) -> None:
        start = min(max(0.0, start), self.T)
        end = min(max(start, end), self.T)
        self.events.append(Event(kind=kind, start_s=round(start, 2), end_s=round(end, 2), actor=actor, text=text))


def sample_scene(
    seed: int,
    *,
    duration_s: float = 4.0,
    fps: float = 4.0,
    width: int = 320,
    height: int = 200,
    video_id: Optional[str] = None,
) -> SceneRecord:
    """The ground-truth record of the clip that `seed` describes (pure function of its arguments)."""
    st = _Story(seed, duration_s, fps, width, height)
    r, T = st.r, st.T

    maneuver = r.pick(MANEUVERS, p=MANEUVER_WEIGHTS)
    group = "turn" if maneuver.endswith("_turn") else "lane_change" if maneuver.startswith("lane_change") else "other"
    w = _ENV_WEIGHTS[group]
    env = r.pick(list(w), p=list(w.values()))
    st.maneuver, st.env = maneuver, env

    # ---- conditions
    tod = r.pick(("day", "dusk", "night"))
    weather = r.pick(("clear", "overcast", "rain", "fog"))
    wet = weather == "rain" or (weather == "overcast" and r.chance(0.4)) or (weather == "fog" and r.chance(0.4))
    visibility = "poor" if weather == "fog" else "reduced" if (weather == "rain" or tod == "night") else "good"
    cond = Conditions(
        time_of_day=tod,
        weather=weather,
        road_condition="wet" if wet else "dry",
        visibility=visibility,
        headlights_on=tod != "day" or weather in ("rain", "fog"),
        streetlights=tod != "day" and env in ("urban", "suburban"),
    )
    st.cond = cond
    if weather in ("rain", "fog"):
        st.difficulty_reasons.append({"rain": "rain", "fog": "fog limiting visibility"}[weather])
    if tod == "night":
        st.difficulty_reasons.append("darkness")

    _sample_road(st)
    _sample_ego(st)
    _sample_light_and_signs(st)
    _sample_others(st)
    return _finish(st, video_id or f"synth_{seed:08d}")


# ---------------------------------------------------------------------------------------------
# road


def _sample_road(st: _Story) -> None:
    r, env, man = st.r, st.env, st.maneuver
    if env == "highway":
        ego_l, onc_l = r.int(2, 3), r.int(2, 3)
    elif env == "urban":
        ego_l = r.pick((1, 2))
        onc_l = r.pick((0, 1, 2), p=(0.2, 0.5, 0.3))
    elif env == "suburban":
        ego_l, onc_l = r.pick((1, 2), p=(0.6, 0.4)), 1
    else:
        ego_l, onc_l = 1, 1
    if man.startswith("lane_change") and ego_l < 2:
        ego_l = 2
    divided = env == "highway"
    median = 2.0 if divided else 0.0
    # junction
    needs_junction = man.endswith("_turn")
    if needs_junction:
        junction = r.pick(("four_way", "t_junction"))
    elif env == "highway":
        junction = "none"
    elif env == "urban":
        junction = r.pick(("none", "four_way", "t_junction"), p=(0.15, 0.65, 0.2))
    elif env == "suburban":
        junction = r.pick(("none", "four_way", "t_junction"), p=(0.2, 0.55, 0.25))
    else:
        junction = r.pick(("none", "t_junction", "four_way"), p=(0.45, 0.3, 0.25))
    junction_side = None
    if junction == "t_junction":
        junction_side = {"left_turn": "left", "right_turn": "right"}.get(man) or r.pick(("left", "right"))
    # control of the ego's approach: light | stop | none
    if junction == "none":
        control = "none"
    elif env == "urban":
        control = r.pick(("light", "stop", "none"), p=(0.8, 0.15, 0.05))
    elif env == "suburban":
        control = r.pick(("light", "stop", "none"), p=(0.65, 0.3, 0.05))
    else:
        control = r.pick(("light", "stop", "none"), p=(0.35, 0.45, 0.2))
    curve = "straight"
    curvature = 0.0
    if junction == "none" and r.chance(0.6):
        curve = r.pick(("curves_left", "curves_right"))
        k = r.u(1 / 320, 1 / 180)
        curvature = -k if curve == "curves_left" else k
    parking = env in ("urban", "suburban") and r.chance(0.55)
    crosswalk = False
    if env in ("urban", "suburban"):
        crosswalk = r.chance(0.75) if junction != "none" else r.chance(0.45)
    buildings = {
        "urban": r.pick(("shops", "high_rise")),
        "suburban": "houses",
        "rural": "houses" if r.chance(0.3) else "none",
        "highway": "none",
    }[env]
    trees = {"urban": r.chance(0.4), "suburban": True, "rural": True, "highway": r.chance(0.6)}[env]
    st.layout = dict(
        ego_l=ego_l,
        onc_l=onc_l,
        divided=divided,
        median=median,
        junction=junction,
        junction_side=junction_side,
        control=control,
        curve=curve,
        curvature=curvature,
        parking=parking,
        crosswalk=crosswalk,
        buildings=buildings,
        trees=trees,
        cross_w=(14.0 if env == "urban" else 7.0) if junction != "none" else None,
    )


def lane_u(layout: dict, lane: int) -> float:
    """Lateral centre (from the centre line) of the ego-direction lane `lane` (0 = rightmost)."""
    return layout["median"] / 2 + (layout["ego_l"] - lane - 0.5) * G.LANE_W


def onc_lane_u(layout: dict, k: int) -> float:
    """Lateral centre of oncoming lane k (0 = next to the centre line)."""
    return -layout["median"] / 2 - (k + 0.5) * G.LANE_W


def right_edge_u(layout: dict) -> float:
    return layout["median"] / 2 + layout["ego_l"] * G.LANE_W


def left_edge_u(layout: dict) -> float:
    return -layout["median"] / 2 - layout["onc_l"] * G.LANE_W


# ---------------------------------------------------------------------------------------------
# ego


def _cruise(st: _Story) -> float:
    lo, hi = CRUISE_KMH[st.env]
    return round(st.r.u(lo, hi), 1)


def _sample_ego(st: _Story) -> None:
    """Ego speed profile and path; places the junction / stop line so the story fits the clip."""
    r, T, L, man = st.r, st.T, st.layout, st.maneuver
    info: dict = dict(stop_reason="none", stops=False, stop_start=None, stop_end=None, violation="none",
                      turn=None, lane_change=None, m_start=None, m_end=None, yields_to=None)
    # the lead vehicle is drawn up front: where the ego stops depends on it
    lead_type = r.pick(LEAD_TYPES)
    if st.env == "highway" and lead_type == "bus":
        lead_type = "truck"
    lead_len = G.VEHICLE_SIZE[lead_type][0]
    lead_gap0 = lead_len / 2 + 4.5 + r.u(0.5, 2.0)  # centre distance when queued behind it
    st.lead_type, st.lead_gap0 = lead_type, lead_gap0
    cw = 5.0 if L["crosswalk"] else 2.0  # stop line this far before the junction
    ego_lane = r.int(0, L["ego_l"] - 1)
    variant = "flow"
    junction_z = None
    stop_line = None
    cam_stop = None
    lat_shift = 0.0
    lc_t0 = lc_t1 = 0.0
    lead_p = 0.6
    st.follow_lag = r.u(0.7, 1.3)

    def place_junction(z_j: float) -> None:
        nonlocal junction_z, stop_line
        junction_z = z_j
        stop_line = z_j - cw

    def junction_for_rest(z_rest: float, with_lead: bool) -> float:
        """Junction Z such that the ego (camera at z_rest) waits at the stop line, or behind the lead."""
        if with_lead:
            return z_rest + lead_gap0 + lead_len / 2 + 0.5 + cw
        return z_rest + 4.0 + cw

    if man == "straight":
        v = _cruise(st)
        prof = Profile([(0, v), (T, round(v + r.u(-3, 3), 1))])
        if L["junction"] != "none":
            place_junction(r.u(0.35, 1.1) * prof.dist(T) + 6)
            if L["control"] == "stop":
                L["control"] = "none"  # the ego's road has priority
            if L["control"] == "light" and r.chance(0.4):
                variant = "ran_red"
                info["violation"] = "ran_red_light"
        elif L["crosswalk"] and r.chance(0.5):
            stop_line = r.u(0.3, 1.0) * prof.dist(T) + 8
        else:
            L["crosswalk"] = False
        path = StraightPath(lane_u(L, ego_lane), 1, L["curvature"])
        st.lead_wanted = r.chance(0.6)
    elif man.endswith("_turn"):
        turn = "left" if man == "left_turn" else "right"
        info["turn"] = turn
        ego_lane = L["ego_l"] - 1 if turn == "left" else 0
        u = lane_u(L, ego_lane)
        W = L["cross_w"]
        if L["control"] == "stop" and turn == "left" and L["ego_l"] > 1:
            L["control"] = "light"  # a kerb-side stop sign would be out of view from the left lane
        if L["control"] == "light":
            variant = r.pick(("flow", "from_red"))
        elif L["control"] == "stop":
            variant = "stop_sign"
        if variant != "flow" and T < 8:
            L["crosswalk"] = False  # a short clip has no room for the extra distance
            cw = 2.0
        v0 = min(_cruise(st), 45.0)
        if turn == "right":
            radius, target_z = 5.0, G.LANE_W / 2
        else:
            radius, target_z = W / 2 + 2.75 + (u - G.LANE_W / 2), W / 2 + G.LANE_W / 2
        arc_len = math.pi * radius / 2
        # turning speed: 16-22 km/h, faster when needed so the turn fits in about half the clip
        v_turn = min(32.0, max(r.u(16, 22), arc_len / (0.5 * T) * 3.6))
        t_arc = arc_len / (v_turn / 3.6)
        if variant == "flow":
            t_a = r.u(0.15, 0.3) * T if T < 10 else r.u(0.3, 0.5) * T
            t_b = max(0.0, t_a - min(3.0, 0.3 * T))
            v_end = min(v0, v_turn + r.u(5, 15))
            prof = Profile([(0, v0), (t_b, v0), (t_a, v_turn), (t_a + t_arc, v_turn), (max(T, t_a + t_arc + 0.1), v_end)])
            z_a = prof.dist(t_a)
            place_junction(z_a - target_z + radius)
            st.lead_wanted = r.chance(0.45)
        else:
            if variant == "from_red":
                approach = [(0.0, 0.0)]
                t_rest0 = 0.0
                t_go = r.u(0.05, 0.15) * T + 0.2
            else:  # stop sign: roll up, stop, go
                t_rest0 = r.u(0.08, 0.15) * T
                t_go = t_rest0 + max(0.4, r.u(0.06, 0.12) * T)
                approach = [(0.0, min(v0, 25.0)), (t_rest0, 0.0)]
            z_rest = Profile(approach + [(t_go, 0.0)]).dist(t_go)
            place_junction(junction_for_rest(z_rest, False))
            z_a = junction_z + target_z - radius
            gap = max(0.5, z_a - z_rest)
            # pull away at about 3 m/s² and enter the arc at the speed reached (at most 25 km/h)
            v_in = min(7.0, max(3.0, math.sqrt(2 * 3.0 * gap)))
            acc = 2 * gap / v_in
            v_turn = v_in * 3.6
            t_arc = arc_len / v_in
            prof = Profile(approach + [(t_go, 0.0), (t_go + acc, v_turn), (t_go + acc + t_arc, v_turn),
                                       (max(T, t_go + acc + t_arc + 0.1), v_turn + r.u(3, 10))])
            t_a = t_go + acc
            info.update(stops=True, stop_start=t_rest0, stop_end=t_go,
                        stop_reason="red_light" if variant == "from_red" else "stop_sign")
            cam_stop = z_rest
            st.lead_wanted = False
        info["m_start"], info["m_end"] = t_a, min(T, t_a + t_arc)
        path = TurnPath(u, z_a, radius, turn)
    elif man.startswith("lane_change"):
        d = "left" if man == "lane_change_left" else "right"
        info["lane_change"] = d
        ego_lane = r.int(0, L["ego_l"] - 2) if d == "left" else r.int(1, L["ego_l"] - 1)
        v = _cruise(st)
        prof = Profile([(0, v), (T, round(v + r.u(-2, 4), 1))])
        dur = min(max(1.2, 0.35 * T), 4.5)
        lc_t0 = r.u(0.15, 0.45) * T
        if lc_t0 + dur > T - 0.1:
            lc_t0 = max(0.05, T - 0.1 - dur)
        lc_t1 = lc_t0 + dur
        lat_shift = -G.LANE_W if d == "left" else G.LANE_W
        info["m_start"], info["m_end"] = lc_t0, min(T, lc_t1)
        variant = r.pick(("slow_lead", "construction", "free"), p=(0.45, 0.25, 0.3))
        path = StraightPath(lane_u(L, ego_lane), 1, L["curvature"])
        if L["junction"] != "none":
            place_junction(prof.dist(T) * r.u(0.8, 1.3) + 15)
            if L["control"] == "stop":
                L["control"] = "none"
        st.lead_wanted = variant == "slow_lead"
    elif man == "slowing":
        if st.env in ("urban", "suburban") and r.chance(0.5):
            L["crosswalk"] = True
            cw = 5.0 if L["junction"] != "none" else cw
        v0 = _cruise(st)
        reasons = ["lead"]
        if L["junction"] != "none" and L["control"] == "light":
            reasons += ["red", "red"]
        if L["junction"] != "none" and L["control"] == "stop":
            reasons += ["stop_sign", "stop_sign"]
        if L["crosswalk"]:
            reasons += ["pedestrian", "pedestrian"]
        if st.env == "highway":
            reasons = ["lead"]
        variant = reason = r.pick(reasons)
        if reason == "stop_sign":
            ego_lane = 0  # the stop sign stands at the right kerb: keep it in view
        st.lead_wanted = True if reason == "lead" else (False if reason == "pedestrian" else r.chance(0.4))
        t_stop = r.u(0.72, 0.9) * T
        t_brake = max(0.05 * T, t_stop - min(0.6 * T, 7.0))
        if reason == "lead" and r.chance(0.35 if st.env != "highway" else 0.5):
            v_end = round(v0 * r.u(0.3, 0.5), 1)  # slows to a crawl, does not stop
            prof = Profile([(0, v0), (t_brake, v0), (t_stop, v_end), (T, v_end)])
        else:
            prof = Profile([(0, v0), (t_brake, v0), (t_stop, 0), (T, 0)])
            info.update(stops=True, stop_start=t_stop, stop_reason={"lead": "lead_vehicle", "red": "red_light",
                        "stop_sign": "stop_sign", "pedestrian": "pedestrian"}[reason])
            cam_stop = prof.dist(T)
            if reason in ("red", "stop_sign"):
                place_junction(junction_for_rest(cam_stop, st.lead_wanted))
            elif reason == "pedestrian":
                if L["junction"] != "none":
                    place_junction(junction_for_rest(cam_stop, False))
                else:
                    stop_line = cam_stop + 4.0
        if junction_z is None and L["junction"] != "none":
            place_junction(prof.dist(T) + (st.lead_gap0 if st.lead_wanted else 0) + r.u(25, 40))
            if L["control"] == "stop":
                L["control"] = "none"
        info["m_start"], info["m_end"] = t_brake, t_stop
        path = StraightPath(lane_u(L, ego_lane), 1, L["curvature"])
        st.follow_lag = r.u(0.5, 1.0)
    elif man == "stopped":
        if st.env in ("urban", "suburban") and r.chance(0.5):
            L["crosswalk"] = True
            cw = 5.0 if L["junction"] != "none" else cw
        prof = Profile([(0, 0), (T, 0)])
        reasons = ["jam"]
        if L["junction"] != "none" and L["control"] == "light":
            reasons += ["red", "red", "red"]
        if L["junction"] != "none" and L["control"] == "stop":
            reasons += ["stop_sign", "stop_sign"]
        if L["crosswalk"]:
            reasons += ["pedestrian", "pedestrian"]
        variant = reason = r.pick(reasons)
        if reason == "stop_sign":
            ego_lane = 0  # the stop sign stands at the right kerb: keep it in view
        info.update(stops=True, stop_start=0.0, stop_reason={"jam": "lead_vehicle", "red": "red_light",
                    "stop_sign": "stop_sign", "pedestrian": "pedestrian"}[reason])
        st.lead_wanted = True if reason == "jam" else (r.chance(0.35) if reason == "red" else False)
        if reason in ("red", "stop_sign"):
            place_junction(junction_for_rest(0.0, st.lead_wanted))
        elif reason == "pedestrian":
            if L["junction"] != "none":
                place_junction(junction_for_rest(0.0, False))
            else:
                stop_line = 4.0
        elif L["junction"] != "none":
            place_junction(r.u(35, 60))
            if L["control"] == "stop":
                L["control"] = "none"
        cam_stop = 0.0
        path = StraightPath(lane_u(L, ego_lane), 1, L["curvature"])
        st.follow_lag = 0.0
    else:  # accelerating
        reasons = ["from_slow", "jam_clears"]
        if L["junction"] != "none" and L["control"] == "light":
            reasons += ["green", "green", "green"]
        variant = reason = r.pick(reasons)
        v1 = _cruise(st)
        st.follow_lag = r.u(0.5, 1.0)
        if reason == "from_slow":
            v0 = round(v1 * r.u(0.35, 0.55), 1)
            t_acc = r.u(0.1, 0.3) * T
            prof = Profile([(0, v0), (t_acc, v0), (T, v1)])
            info["m_start"], info["m_end"] = t_acc, T
            st.lead_wanted = r.chance(0.5)
        else:
            t_go = r.u(0.15, 0.35) * T + (0.5 if reason == "green" else 0.0)
            v_end = min(v1, 25 + 2 * T)
            prof = Profile([(0, 0), (t_go, 0), (T, v_end)])
            info.update(stops=True, stop_start=0.0, stop_end=t_go,
                        stop_reason="red_light" if reason == "green" else "lead_vehicle")
            info["m_start"], info["m_end"] = t_go, T
            cam_stop = 0.0
            st.lead_wanted = True if reason == "jam_clears" else r.chance(0.5)
            if reason == "green":
                place_junction(junction_for_rest(0.0, st.lead_wanted))
        if junction_z is None and L["junction"] != "none":
            place_junction(prof.dist(T) + (st.lead_gap0 if st.lead_wanted else 0) + r.u(15, 35))
            if L["control"] == "stop":
                L["control"] = "none"
        path = StraightPath(lane_u(L, ego_lane), 1, L["curvature"])

    if L["junction"] != "none" and junction_z is None:
        # a junction the story did not place: somewhere ahead
        place_junction(prof.dist(T) * r.u(0.5, 1.2) + 10)
    if L["junction"] != "none" and L["control"] == "stop" and not info["stops"]:
        L["control"] = "none"
    if L["junction"] == "none":
        L["control"] = "none"

    st.ego = Mover(path, prof, lat_from=0.0, lat_to=lat_shift, lat_t0=lc_t0, lat_t1=lc_t1)
    st.ego_prof = prof
    st.ego_lane = ego_lane
    st.variant = variant
    st.junction_z = junction_z
    st.stop_line = stop_line
    st.cam_stop = cam_stop
    st.info = info


def _ego_events(st: _Story) -> None:
    info, prof, T = st.info, st.ego_prof, st.T
    man = st.maneuver
    if info["turn"]:
        d = info["turn"]
        st.event(f"ego_turns_{d}", info["m_start"], info["m_end"], f"the ego vehicle turns {d} at the junction")
    if info["lane_change"]:
        d = info["lane_change"]
        st.event(f"ego_changes_lane_{d}", info["m_start"], info["m_end"], f"the ego vehicle changes into the {d} lane")
    # stops and starts from the profile
    kf = prof.kf
    for (t0, v0), (t1, v1) in zip(kf, kf[1:]):
        if t0 >= T:
            break
        if v0 > 1 and v1 <= 1:
            st.event("ego_stops", t0, t1, "the ego vehicle comes to a stop")
        elif v0 <= 1 and v1 > 1:
            st.event("ego_starts_moving", t0, min(t1, T), "the ego vehicle starts moving")
        elif v1 < v0 - 4 and man in ("slowing", "left_turn", "right_turn"):
            st.event("ego_slows_down", t0, t1, "the ego vehicle slows down")
        elif v1 > v0 + 4 and v0 > 1 and man == "accelerating":
            st.event("ego_speeds_up", t0, min(t1, T), "the ego vehicle speeds up")


# ---------------------------------------------------------------------------------------------
# traffic light and signs


def _sample_light_and_signs(st: _Story) -> None:
    r, T, L, info = st.r, st.T, st.layout, st.info
    man, variant = st.maneuver, st.variant
    zj = st.junction_z
    if L["junction"] != "none" and L["control"] == "light":
        # phases that agree with what the ego does
        yellow = min(3.0, max(0.5, 0.15 * T))
        if man == "straight" and variant == "ran_red":
            # the light turns yellow, then red just before the ego crosses the stop line
            t_cross = st.ego_prof.time_at_dist(st.stop_line - 2.0)
            if not math.isfinite(t_cross) or t_cross > T - 0.2:
                variant = st.variant = "flow"
                info["violation"] = "none"
                phases = [("green", 0, T)]
            else:
                t_red = max(0.2, t_cross - r.u(0.2, 0.6))
                t_y = max(0.05, t_red - yellow)
                phases = [("green", 0, t_y), ("yellow", t_y, t_red), ("red", t_red, T)]
                st.difficulty_reasons.append("the ego runs a red light")
        elif man == "slowing" and variant == "red":
            t_y = max(0.05, info["m_start"] - r.u(0.1, 0.4))
            t_red = t_y + yellow
            phases = [("green", 0, t_y), ("yellow", t_y, min(t_red, T))]
            if t_red < T:
                phases.append(("red", t_red, T))
        elif man == "stopped" and variant == "red":
            if r.chance(0.4) and T >= 2.0:
                t_g = r.u(0.82, 0.92) * T
                phases = [("red", 0, t_g), ("green", t_g, T)]
            else:
                phases = [("red", 0, T)]
        elif (man == "accelerating" and variant == "green") or (man.endswith("_turn") and variant == "from_red"):
            t_go = info["stop_end"]
            t_g = max(0.1, t_go - r.u(0.4, 0.8) - (st.follow_lag if st.lead_wanted else 0.0))
            phases = [("red", 0, t_g), ("green", t_g, T)]
        elif man == "slowing" or man == "stopped":
            # the ego stops for something else; the signal ahead shows red (it is near) or green
            phases = [("red", 0, T)] if r.chance(0.5) else [("green", 0, T)]
            if st.cam_stop is not None and man == "slowing" and info["stop_reason"] == "lead_vehicle":
                phases = [("red", 0, T)]
        else:
            phases = [("green", 0, T)]
        phases = [(s, round(a, 2), round(b, 2)) for s, a, b in phases if b - a > 1e-3]
        W = L["cross_w"]
        x_pole = right_edge_u(L) + (1.2 if not L["parking"] else 1.2)
        st.light = dict(phases=phases, x=x_pole, z=zj + W + 1.0, heads=r.pick((1, 2), p=(0.35, 0.65)))
        prev = phases[0][0]
        for s, a, b in phases[1:]:
            st.event(f"light_turns_{s}", a, b, f"the traffic light turns {s}")
            prev = s
        st.light_phases = phases
    else:
        st.light_phases = []
    # signs
    if L["junction"] != "none" and L["control"] == "stop":
        st.signs.append(Sign(id=st.new_id("sign"), kind="stop", side="right", text="STOP", color="red",
                             distance_m=round(zj + 0.5, 2), x_m=round(right_edge_u(L) + 1.0, 2)))
    if L["junction"] == "t_junction" and L["control"] == "none" and r.chance(0.4) and info["stops"] is False:
        # the side road yields; a yield sign faces it (drawn on our right for visibility)
        st.signs.append(Sign(id=st.new_id("sign"), kind="yield", side="right", text="", color="red and white",
                             distance_m=round(zj + L["cross_w"] + 1.0, 2), x_m=round(right_edge_u(L) + 1.2, 2)))
    if r.chance(0.45):
        lim = {"urban": (25, 30, 40), "suburban": (30, 40), "rural": (50, 60, 70), "highway": (90, 100, 110)}[st.env]
        z = r.u(12, 45)
        if st.junction_z is None or abs(z - st.junction_z) > 12:
            st.signs.append(Sign(id=st.new_id("sign"), kind="speed_limit", side="right", text=str(r.pick(lim)),
                                 color="white", distance_m=round(z, 2), x_m=round(right_edge_u(L) + (3.7 if L["parking"] else 1.2), 2)))
    if L["crosswalk"] and r.chance(0.6):
        zc = _crosswalk_z(st)
        if zc is not None:
            st.signs.append(Sign(id=st.new_id("sign"), kind="pedestrian_crossing", side="right", text="",
                                 color="blue", distance_m=round(zc + 3.5, 2), x_m=round(right_edge_u(L) + 1.2, 2)))
    if L["parking"] and r.chance(0.3):
        st.signs.append(Sign(id=st.new_id("sign"), kind="no_parking", side="right", text="", color="blue and red",
                             distance_m=round(r.u(50, 70), 2), x_m=round(right_edge_u(L) + 3.7, 2)))


def _crosswalk_z(st: _Story) -> Optional[float]:
    """Near edge (world Z) of the crosswalk, or None."""
    L = st.layout
    if not L["crosswalk"]:
        return None
    if st.junction_z is not None:
        return st.junction_z - 4.0
    if st.stop_line is not None:
        return st.stop_line + 1.0
    return None


# ---------------------------------------------------------------------------------------------
# other road users


def _vehicle_attrs(st: _Story, vtype: str, color: str, role: str, behavior: str, **kw) -> dict:
    a = dict(type=vtype, color=color, role=role, behavior=behavior, emergency_lights=False,
             maneuver_start_s=None, maneuver_end_s=None, brake_lights=behavior in ("braking", "stopped"))
    a.update(kw)
    return a


def _add_vehicle(st: _Story, motion, attrs: dict) -> str:
    vid = st.new_id("vehicle")
    size = G.VEHICLE_SIZE[attrs["type"]]
    st.actors.append(_Actor("vehicle", vid, motion, attrs, size))
    return vid


def _sample_others(st: _Story) -> None:
    r, T, L, info = st.r, st.T, st.layout, st.info
    man, variant, env = st.maneuver, st.variant, st.env
    ego, prof = st.ego, st.ego_prof
    zj = st.junction_z
    W = L["cross_w"]
    red_at = lambda t: bool(st.light_phases) and _state_at(st.light_phases, t) == "red"  # noqa: E731
    ever_red = bool(st.light_phases) and any(p[0] == "red" for p in st.light_phases)
    start_red = bool(st.light_phases) and st.light_phases[0][0] == "red"
    st.lead_id = None

    # ---- lead vehicle (type and queue gap were drawn with the ego's story)
    if st.lead_wanted:
        vtype = st.lead_type
        color = r.pick(COLORS)
        size = G.VEHICLE_SIZE[vtype]
        lag = st.follow_lag
        lane_path = StraightPath(lane_u(L, st.ego_lane), 1, L["curvature"])
        if man == "stopped":
            motion = Mover(lane_path, Profile([(0, 0), (T, 0)]), s0=st.lead_gap0)
            attrs = _vehicle_attrs(st, vtype, color, "lead", "stopped")
            if variant == "red" and len(st.light_phases) > 1:
                # the light turns green near the end: the lead pulls away, the ego has not yet
                t_g = st.light_phases[-1][1]
                motion = Mover(lane_path, Profile([(0, 0), (t_g + 0.3, 0), (t_g + 2.3, 15)]), s0=st.lead_gap0)
                attrs = _vehicle_attrs(st, vtype, color, "lead", "accelerating", brake_lights=False,
                                       maneuver_start_s=round(min(T, t_g + 0.3), 2), maneuver_end_s=T)
        elif man.startswith("lane_change"):
            # a slower vehicle ahead that the ego passes after changing lanes
            v_e = prof.kmh(0)
            v_l = max(10.0, v_e - r.u(12, 25))
            gap_at_change = r.u(9, 16) + size[0] / 2 + 2
            gap0 = gap_at_change + (v_e - v_l) / 3.6 * info["m_start"]
            motion = Mover(lane_path, Profile([(0, v_l), (T, v_l)]), s0=gap0)
            attrs = _vehicle_attrs(st, vtype, color, "lead", "steady")
        elif man == "straight" and zj is not None and variant != "ran_red" and r.chance(0.5) and \
                (turning := _lead_turn_off(st, size)) is not None:
            motion, d, t_a, t_b = turning
            attrs = _vehicle_attrs(st, vtype, color, "lead", f"turning_{d}", maneuver_start_s=round(t_a, 2),
                                   maneuver_end_s=round(min(T, t_b), 2))
        else:
            # follows the ego's own speed profile `lag` seconds ahead of it, on the same path
            motion = Mover(st.ego.path, prof, s0=st.lead_gap0 + prof.dist(lag), lag=lag)
            behavior = {
                "straight": "steady",
                "slowing": "braking",
                "accelerating": "accelerating",
                "left_turn": "turning_left",
                "right_turn": "turning_right",
            }[man]
            attrs = _vehicle_attrs(st, vtype, color, "lead", behavior)
            if man in ("slowing", "accelerating") or man.endswith("_turn"):
                attrs.update(maneuver_start_s=round(max(0.0, info["m_start"] - lag), 2),
                             maneuver_end_s=round(min(T, max(0.0, info["m_end"] - lag)), 2))
            if man == "slowing":
                attrs["brake_lights"] = True
            if man == "accelerating" and info["stops"]:
                attrs["brake_lights"] = False
        st.lead_id = _add_vehicle(st, motion, attrs)

    # ---- parked vehicles on the right kerb
    if L["parking"]:
        n = r.pick((0, 1, 2, 3, 4), p=(0.2, 0.25, 0.25, 0.15, 0.15))
        z = r.u(4, 12)
        u = right_edge_u(L) + 1.25
        for _ in range(n):
            vtype = r.pick(PARKED_TYPES)
            size = G.VEHICLE_SIZE[vtype]
            z += size[0] / 2
            if zj is not None and zj - 8 < z < zj + W + 8:
                z = zj + W + 8 + size[0] / 2
            _add_vehicle(st, Static(G.road_centre_x(z, L["curvature"]) + u, z, G.road_heading_deg(z, L["curvature"])),
                         _vehicle_attrs(st, vtype, r.pick(COLORS), "parked", "parked"))
            z += size[0] / 2 + r.u(1.5, 12)

    # ---- oncoming traffic
    light_scene = bool(st.light_phases)
    stop_scene = L["control"] == "stop" and zj is not None
    if L["onc_l"] > 0:
        n = r.pick((0, 1, 2, 3), p=(0.2, 0.35, 0.3, 0.15))
        for k in range(n):
            lane = r.int(0, L["onc_l"] - 1)
            u = onc_lane_u(L, lane)
            vtype = r.pick(OTHER_TYPES)
            color = r.pick(COLORS)
            lo, hi = CRUISE_KMH[env]
            v = r.u(lo, hi)
            if light_scene and start_red and zj is not None and man == "left_turn":
                continue  # they would drive straight into the ego's left turn on the green
            if light_scene and start_red and zj is not None:
                # queued at the far stop line while red, pulling away when green
                size = G.VEHICLE_SIZE[vtype]
                z_stop = zj + W + 4.0 + size[0] / 2 + k * (size[0] + 3)
                greens = [p for p in st.light_phases if p[0] == "green"]
                if greens:
                    t_g = greens[0][1] + 0.5 + 0.8 * k
                    vp = Profile([(0, 0), (t_g, 0), (t_g + 4, min(v, 35))])
                    beh = "accelerating"
                else:
                    vp = Profile([(0, 0), (T, 0)])
                    beh = "stopped"
                motion = Mover(StraightPath(u, -1, L["curvature"], z0=z_stop), vp)
                attrs = _vehicle_attrs(st, vtype, color, "oncoming", beh)
                if beh == "accelerating":
                    attrs.update(maneuver_start_s=round(t_g, 2), maneuver_end_s=T)
                _add_vehicle(st, motion, attrs)
                continue
            if stop_scene:
                continue
            # flowing: passes the ego at t_p (before any red phase begins)
            t_hi = T * 1.1
            if ever_red:
                t_hi = min(t_hi, next(p[1] for p in st.light_phases if p[0] != "green"))
            if man == "left_turn":
                t_hi = min(t_hi, info["m_start"] - 0.3)
            if t_hi <= 0.15 * T:
                continue
            t_p = r.u(0.15 * T, t_hi)
            vp = Profile([(0, v), (T, v)])
            z_ego = ego.pose(t_p)[1]
            z0 = z_ego + vp.dist(t_p)
            if L["onc_l"] >= 2 and r.chance(0.35) and t_p > 0.4 * T:
                # changes to the other oncoming lane well before it passes the ego
                k2 = 1 if lane == 0 else lane - 1
                shift = -(onc_lane_u(L, k2) - u)  # its right is -X
                dur = min(max(1.0, 0.3 * T), 3.5)
                t0 = max(0.0, t_p - dur - r.u(0.2, 0.6) * T)
                motion = Mover(StraightPath(u, -1, L["curvature"], z0=z0), vp, lat_from=0.0, lat_to=shift, lat_t0=t0, lat_t1=t0 + dur)
                d = "right" if shift > 0 else "left"
                _add_vehicle(st, motion, _vehicle_attrs(st, vtype, color, "oncoming", f"lane_change_{d}",
                                                        maneuver_start_s=round(t0, 2), maneuver_end_s=round(min(T, t0 + dur), 2)))
                continue
            motion = Mover(StraightPath(u, -1, L["curvature"], z0=z0), vp)
            _add_vehicle(st, motion, _vehicle_attrs(st, vtype, color, "oncoming", "steady"))

    # ---- emergency vehicle (oncoming with lights, or overtaking on the left on multi-lane roads)
    if r.chance(0.25) and (L["onc_l"] > 0 or L["ego_l"] > 1):
        etype = r.pick(EMERGENCY_TYPES)
        v = CRUISE_KMH[env][1] + r.u(5, 20)
        if L["onc_l"] > 0 and not (man == "left_turn"):
            vp = Profile([(0, v), (T, v)])
            t_p = r.u(0.4 * T, 0.95 * T)
            z0 = ego.pose(t_p)[1] + vp.dist(t_p)
            motion = Mover(StraightPath(onc_lane_u(L, 0), -1, L["curvature"], z0=z0), vp)
            role = "oncoming"
        elif L["ego_l"] > 1 and st.ego_lane < L["ego_l"] - 1 and not man.startswith("lane_change") and not man.endswith("_turn"):
            # overtakes from behind in the left lane
            vp = Profile([(0, v), (T, v)])
            t_p = r.u(0.2 * T, 0.5 * T)
            s0 = ego.pose(t_p)[1] - vp.dist(t_p)
            motion = Mover(StraightPath(lane_u(L, L["ego_l"] - 1), 1, L["curvature"]), vp, s0=s0)
            role = "adjacent"
        else:
            motion = None
        if motion is not None:
            attrs = _vehicle_attrs(st, etype, EMERGENCY_COLOR[etype], role, "steady", emergency_lights=True)
            _add_vehicle(st, motion, attrs)
            st.difficulty_reasons.append("an emergency vehicle with flashing lights")

    # ---- same-direction vehicles in the other lanes
    if L["ego_l"] > 1:
        others = [k for k in range(L["ego_l"]) if k != st.ego_lane]
        if info["lane_change"]:
            target = st.ego_lane + (1 if info["lane_change"] == "left" else -1)
            others = [k for k in others if k != target]
        n = r.pick((0, 1, 2), p=(0.3, 0.4, 0.3)) if others else 0
        for i in range(n):
            lane = r.pick(others)
            vtype = r.pick(OTHER_TYPES)
            color = r.pick(COLORS)
            size = G.VEHICLE_SIZE[vtype]
            u = lane_u(L, lane)
            path = StraightPath(u, 1, L["curvature"])
            if st.cam_stop is not None and prof.kmh(T) < 1 or (st.cam_stop is not None and prof.kmh(0) < 1):
                # queued beside the ego: same speed profile, stopping at the same line
                s0 = r.u(-2, 8) + size[0] / 2 + i * 9
                if st.stop_line is not None or zj is not None:
                    line = st.stop_line if st.stop_line is not None else zj - 2
                    final = s0 + prof.dist(T + 5) - prof.dist(0)
                    if final > line - 1 - size[0] / 2:
                        s0 -= final - (line - 1 - size[0] / 2)
                lag = r.u(-0.3, 0.5)
                motion = Mover(path, prof, s0=s0 + prof.dist(lag), lag=lag)
                beh = "stopped" if prof.kmh(T) < 1 and prof.kmh(0) < 1 else ("braking" if prof.kmh(T) < 1 else "accelerating")
                attrs = _vehicle_attrs(st, vtype, color, "adjacent", beh)
            else:
                v = max(10.0, prof.kmh(0) + r.u(-8, 12))
                vp = Profile([(0, v), (T, v)])
                s0 = r.u(12, 45)
                motion = Mover(path, vp, s0=s0)
                beh = "steady"
                attrs = _vehicle_attrs(st, vtype, color, "adjacent", beh)
                # a lane change by the other vehicle (never into the ego's lane or path)
                if not info["lane_change"] and L["ego_l"] == 3 and abs(lane - st.ego_lane) == 2 and r.chance(0.6):
                    # moves into the middle lane (next to the ego's lane, never into it)
                    t0 = r.u(0.1, 0.4) * T
                    dur = min(max(1.2, 0.35 * T), 4.0)
                    mid_lane = (lane + st.ego_lane) // 2
                    shift = lane_u(L, mid_lane) - u
                    motion = Mover(path, vp, s0=s0, lat_from=0.0, lat_to=shift, lat_t0=t0, lat_t1=t0 + dur)
                    d = "right" if shift > 0 else "left"
                    attrs = _vehicle_attrs(st, vtype, color, "adjacent", f"lane_change_{d}", maneuver_start_s=round(t0, 2),
                                           maneuver_end_s=round(min(T, t0 + dur), 2))
                elif not info["lane_change"] and st.lead_id is None and r.chance(0.45) and abs(lane - st.ego_lane) == 1 and not man.endswith("_turn") and man != "stopped":
                    # cuts into the ego's lane well ahead, faster than the ego
                    v = prof.kmh(0) + r.u(8, 15)
                    vp = Profile([(0, v), (T, v)])
                    t0 = r.u(0.15, 0.4) * T
                    dur = min(max(1.2, 0.35 * T), 4.0)
                    s0 = r.u(22, 35)
                    shift = (u - lane_u(L, st.ego_lane))
                    motion = Mover(path, vp, s0=s0, lat_from=0.0, lat_to=-shift, lat_t0=t0, lat_t1=t0 + dur)
                    d = "left" if shift > 0 else "right"
                    beh = f"lane_change_{d}"
                    attrs = _vehicle_attrs(st, vtype, color, "adjacent", beh, maneuver_start_s=round(t0, 2),
                                           maneuver_end_s=round(min(T, t0 + dur), 2))
            _add_vehicle(st, motion, attrs)

    # ---- cross traffic at a four-way junction while the ego waits
    if L["junction"] == "four_way" and zj is not None and info["violation"] == "none":
        windows = []
        if light_scene:
            for s, a, b in st.light_phases:
                if s == "red":
                    windows.append((a + 0.3, b - 0.3))
        elif stop_scene and info["stop_start"] is not None:
            a = info["stop_start"]
            b = info["stop_end"] if info["stop_end"] is not None else T
            windows.append((a - 0.5, b - 0.5))
        windows = [(a, b) for a, b in windows if b - a > 0.3]
        if windows and r.chance(0.75):
            n = r.pick((1, 2), p=(0.6, 0.4))
            for k in range(n):
                a, b = windows[0]
                t_c = r.u(a, b)
                direction = r.pick((1, -1))
                z_lane = zj + (G.LANE_W / 2 if direction > 0 else W - G.LANE_W / 2)
                v = r.u(28, 45)
                vp = Profile([(0, v), (T, v)])
                x0 = -direction * vp.dist(t_c)
                vtype = r.pick(OTHER_TYPES[:7])
                motion = Mover(CrossPath(z_lane, direction, x0), vp)
                attrs = _vehicle_attrs(st, vtype, r.pick(COLORS), "cross_traffic", "crossing",
                                       maneuver_start_s=None, maneuver_end_s=None)
                vid = _add_vehicle(st, motion, attrs)
                st.actors[-1].attrs["cross_dir"] = "left_to_right" if direction > 0 else "right_to_left"
                st.actors[-1].attrs["t_c"] = t_c
                if stop_scene and info.get("yields_to") is None:
                    info["yields_to"] = vid

    _sample_people(st)
    _sample_cyclists(st)
    _sample_construction(st)


def _lead_turn_off(st: _Story, size) -> Optional[tuple]:
    """The lead vehicle turns off into the side road while the ego goes straight on; None when it
    cannot without the ego catching up with it."""
    r, T, L = st.r, st.T, st.layout
    zj, W = st.junction_z, L["cross_w"]
    if L["junction"] == "t_junction":
        d = L["junction_side"]
    else:
        d = r.pick(("left", "right"))
    lane = L["ego_l"] - 1 if d == "left" else 0
    if lane != st.ego_lane:
        return None
    u = lane_u(L, lane)
    if d == "right":
        radius, target_z = 5.0, G.LANE_W / 2
    else:
        radius, target_z = W / 2 + 2.75 + (u - G.LANE_W / 2), W / 2 + G.LANE_W / 2
    z_a = zj + target_z - radius
    v0 = st.ego_prof.kmh(0)
    v_t = r.u(18, 24)
    arc = math.pi * radius / 2
    t_a = r.u(0.3, 0.55) * T
    t_b0 = max(0.0, t_a - min(2.5, 0.3 * T))
    lp = Profile([(0, v0), (t_b0, v0), (t_a, v_t), (t_a + arc / (v_t / 3.6), v_t), (T + 5, v_t + 10)])
    s0 = z_a - lp.dist(t_a)
    path = TurnPath(u, z_a, radius, d)
    m = Mover(path, lp, s0=s0)
    # the gap to the ego must stay above a car length until the lead has left the ego's path
    for t in np.linspace(0, min(T, t_a + 0.6 * arc / (v_t / 3.6)), 25):
        gap = m.s(float(t)) - st.ego_prof.dist(float(t))
        if gap < size[0] / 2 + 6.0:
            return None
    if s0 < 8:
        return None
    return m, d, t_a, t_a + arc / (v_t / 3.6)


def _state_at(phases, t):
    for s, a, b in phases:
        if a <= t < b:
            return s
    return phases[-1][0]


def _sample_people(st: _Story) -> None:
    r, T, L, info = st.r, st.T, st.layout, st.info
    env = st.env
    if env == "highway":
        return
    zc = _crosswalk_z(st)
    x_right = right_edge_u(L) + (2.5 if L["parking"] else 0.0) + 1.2
    x_left = left_edge_u(L) - 1.2
    rain = st.cond.weather == "rain"

    def person_attrs(kind: str) -> dict:
        carrying = "umbrella" if rain and r.chance(0.7) else ("bag" if r.chance(0.25) else "nothing")
        return dict(kind=kind, carrying=carrying, shirt_color=r.pick(COLORS))

    def add(motion, attrs) -> str:
        pid = st.new_id("pedestrian")
        h = G.PERSON_HEIGHT[attrs["kind"]]
        st.actors.append(_Actor("pedestrian", pid, motion, attrs, (0.45, 0.5, h)))
        return pid

    # crossing in front of the ego (only while it waits)
    cross_ok = zc is not None and st.cam_stop is not None and info["stops"]
    n_cross = 0
    if cross_ok:
        if info["stop_reason"] == "pedestrian":
            n_cross = r.pick((1, 2, 3), p=(0.5, 0.3, 0.2))
        elif info["stop_reason"] in ("red_light", "stop_sign") and r.chance(0.85):
            n_cross = r.pick((1, 2), p=(0.7, 0.3))
    if n_cross:
        t_rest = info["stop_start"] if info["stop_start"] is not None else 0.0
        t_go = info["stop_end"] if info["stop_end"] is not None else math.inf
        z_walk = zc + 1.5
        for k in range(n_cross):
            kind = "child" if r.chance(0.3) else "adult"
            speed = 1.3 if kind == "adult" else 1.1
            # when the ego pulls away later, walk right to left: the ego's lanes (X > 0) are
            # crossed first, and the walker may still be on the oncoming side when it moves
            direction = "right_to_left" if math.isfinite(t_go) else r.pick(("left_to_right", "right_to_left"))
            xs, xe = (x_left, x_right) if direction == "left_to_right" else (x_right, x_left)
            width = abs(xe - xs)
            if info["stop_reason"] == "pedestrian" and st.maneuver == "stopped":
                t0 = -r.u(0.25, 0.5) * width / speed  # already on the crosswalk when the clip starts
            elif info["stop_reason"] == "pedestrian":
                t0 = max(0.0, (info["m_start"] or 0.0) - r.u(0.3, 1.0))  # steps out, the ego reacts
            else:
                t0 = t_rest + r.u(0.0, 0.3) * max(0.5, min(T, t_go) - t_rest)
            t0 += k * 0.6
            if math.isfinite(t_go):
                # must have left the ego's lanes before the ego moves: start earlier if needed
                t_clear = (xs + 0.5) / speed
                if t0 + t_clear > t_go - 0.2:
                    t0 = t_go - 0.2 - t_clear
            t1 = t0 + width / speed
            attrs = person_attrs(kind)
            attrs.update(action="crossing", crossing_direction=direction, on_crosswalk=True,
                         start_side="left" if direction == "left_to_right" else "right",
                         cross_start_s=round(t0, 2), cross_end_s=round(t1, 2))
            zz = z_walk - 0.6 + k * 0.8  # one row each across the 3 m crosswalk
            cxz = G.road_centre_x(zz, L["curvature"])
            walker = Walker([(t0, cxz + xs, zz), (t1, cxz + xe, zz)], face=90.0 if direction == "left_to_right" else -90.0)
            pid = add(walker, attrs)
            if info["stop_reason"] == "pedestrian" and info.get("yields_to") is None:
                info["yields_to"] = pid
        st.difficulty_reasons.append("pedestrians crossing in front")
    elif zc is not None and r.chance(0.6):
        # crossing far ahead: done with the ego's lanes long before the ego gets there
        kind = "child" if r.chance(0.25) else "adult"
        speed = 1.3 if kind == "adult" else 1.1
        direction = r.pick(("left_to_right", "right_to_left"))
        xs, xe = (x_left, x_right) if direction == "left_to_right" else (x_right, x_left)
        width = abs(xe - xs)
        t0 = r.u(-0.5, 0.2) * width / speed
        t1 = t0 + width / speed
        z_walk = zc + 1.5
        t_check = min(t1, T)
        if z_walk - st.ego_prof.dist(t_check) > 25.0 and not info["turn"]:
            attrs = person_attrs(kind)
            attrs.update(action="crossing", crossing_direction=direction, on_crosswalk=True,
                         start_side="left" if direction == "left_to_right" else "right",
                         cross_start_s=round(t0, 2), cross_end_s=round(t1, 2))
            cxz = G.road_centre_x(z_walk, L["curvature"])
            add(Walker([(t0, cxz + xs, z_walk), (t1, cxz + xe, z_walk)], face=90.0 if direction == "left_to_right" else -90.0), attrs)

    # waiting at the kerb / walking along the pavement
    if True:
        n = r.pick((0, 1, 2, 3), p=(0.2, 0.3, 0.3, 0.2)) if env in ("urban", "suburban") else r.pick((0, 1, 2), p=(0.25, 0.45, 0.3))
        group = 0
        waiting_slots = {"left": 0, "right": 0}
        for k in range(n):
            kind = "child" if r.chance(0.25) else "adult"
            attrs = person_attrs(kind)
            side = r.pick(("left", "right"))
            x = x_right if side == "right" else x_left
            if zc is not None and r.chance(0.6):
                # side by side along the kerb at the crosswalk, never on the same spot
                slot = waiting_slots[side]
                waiting_slots[side] += 1
                z = zc + 0.6 + 0.85 * slot + r.u(0.0, 0.2)
                attrs.update(action="waiting", crossing_direction=None, on_crosswalk=False, start_side=side)
                walker = Walker([(0.0, G.road_centre_x(z, L["curvature"]) + x + (0.4 if side == "right" else -0.4)
                                  + (0.7 if side == "right" else -0.7) * (slot // 3), z)],
                                face=-90.0 if side == "right" else 90.0)
            else:
                z = r.u(8, 40)
                d = r.pick((1, -1))
                sp = 1.3 if kind == "adult" else 1.1
                xx = x + (1.0 if side == "right" else -1.0)
                # waypoints every second so the walk follows a curved pavement
                n_w = max(2, int(math.ceil(T)) + 1)
                walker = Walker([(float(t), G.road_centre_x(z + d * sp * float(t), L["curvature"]) + xx, z + d * sp * float(t))
                                 for t in np.linspace(0.0, T, n_w)], face=0.0 if d > 0 else 180.0)
                attrs.update(action="walking", crossing_direction=None, on_crosswalk=False, start_side=side)
                if k > 0 and r.chance(0.4):
                    group += 1
            add(walker, attrs)


def _sample_cyclists(st: _Story) -> None:
    r, T, L, info = st.r, st.T, st.layout, st.info
    if st.env == "highway" or not r.chance(0.45):
        return
    opts = ["riding_same_direction"]
    if L["onc_l"] > 0 and not (L["control"] == "stop" and st.junction_z is not None):
        opts.append("riding_oncoming")
    action = r.pick(opts)
    color = r.pick(COLORS)
    v = r.u(14, 22)
    vp = Profile([(0, v), (T, v)])
    if action == "riding_same_direction":
        # rides at the right edge of the rightmost lane
        if info["turn"] == "right" or info["lane_change"] == "right":
            return  # it would be in the ego's path
        u = right_edge_u(L) - 0.8
        in_ego_lane = st.ego_lane == 0 or info["lane_change"] is not None
        if st.junction_z is not None and st.cam_stop is not None:
            # waits at the stop line beside the ego; never in front of an ego that pulls away
            if in_ego_lane and st.ego_prof.kmh(T) > 1:
                return
            line = st.stop_line if st.stop_line is not None else st.junction_z - 2
            s0 = line - 1.0
            vp = Profile([(0, 0), (T, 0)])
            if st.light_phases and st.light_phases[-1][0] == "green":
                t_g = st.light_phases[-1][1]
                vp = Profile([(0, 0), (t_g + 0.3, 0), (t_g + 2.5, v)])
        elif in_ego_lane:
            # stays at least 10 m ahead of the ego for the whole clip (the ego does not squeeze past)
            s0 = max(r.u(10, 30), max(st.ego_prof.dist(float(t)) - vp.dist(float(t)) for t in np.linspace(0, T, 21)) + 10)
        else:
            s0 = r.u(10, 30)
        motion = Mover(StraightPath(u, 1, L["curvature"]), vp, s0=s0)
    else:
        u = left_edge_u(L) + 0.8
        t_hi = 1.0 * T if info["turn"] != "left" else info["m_start"] - 0.5  # passes before the ego turns across
        if t_hi <= 0.3 * T:
            return
        t_p = r.u(0.3 * T, t_hi)
        z0 = st.ego.pose(t_p)[1] + vp.dist(t_p)
        motion = Mover(StraightPath(u, -1, L["curvature"], z0=z0), vp)
    cid = st.new_id("cyclist")
    st.actors.append(_Actor("cyclist", cid, motion, dict(action=action, shirt_color=color, crossing_direction=None),
                            (1.8, 0.6, 1.75)))


def _sample_construction(st: _Story) -> None:
    r, T, L, info = st.r, st.T, st.layout, st.info
    want = st.variant == "construction" or (r.chance(0.2) and st.maneuver not in ("left_turn", "right_turn"))
    if not want:
        return
    ego_d = st.ego_prof.dist(T)
    if st.variant == "construction":
        # the ego's own lane is closed ahead: cones taper across it after the lane change
        z_lc_end = st.ego.pose(info["m_end"])[2] if False else st.ego_prof.dist(info["m_end"])
        z0 = z_lc_end + r.u(8, 15)
        lane = st.ego_lane
        u_r = lane_u(L, lane) + G.LANE_W / 2
        u_l = lane_u(L, lane) - G.LANE_W / 2
        length = max(25.0, ego_d - z0 + 30)
        cones = []
        taper = 12.0
        n_t = 5
        for i in range(n_t):
            a = i / (n_t - 1)
            # taper from the right edge of the lane to its left edge (closing to the side of the change)
            if info["lane_change"] == "left":
                u = u_r - a * (u_r - u_l - 0.3)
            else:
                u = u_l + a * (u_r - u_l - 0.3)
            cones.append((u, z0 + a * taper))
        z = z0 + taper + 6
        edge = (u_l + 0.3) if info["lane_change"] == "left" else (u_r - 0.3)
        while z < z0 + length:
            cones.append((edge, z))
            z += 6
        side = "left" if info["lane_change"] == "left" else "right"
        lane_closed = True
    else:
        side = "right"
        z0 = r.u(10, 25) + 0.5 * ego_d * r.u(0.0, 0.6)
        length = r.u(20, 40)
        u_edge = right_edge_u(L) - 0.4
        if L["parking"]:
            u_edge = right_edge_u(L) + 1.0
        if st.junction_z is not None and z0 - 5 < st.junction_z + (L["cross_w"] or 0) and z0 + length > st.junction_z - 10:
            return
        cones = []
        z = z0
        while z < z0 + length:
            cones.append((u_edge, z))
            z += 5
        lane_closed = False
    cone_pos = [(round(G.road_centre_x(z, L["curvature"]) + u, 3), round(z, 3)) for u, z in cones]
    workers = r.pick((0, 1, 2), p=(0.15, 0.4, 0.45)) if side == "right" and st.env != "highway" else r.pick((0, 1), p=(0.4, 0.6))
    wx = right_edge_u(L) + (2.5 if L["parking"] else 0) + 1.0 if side == "right" else None
    st.construction = dict(side=side, cones=len(cone_pos), workers=0, distance_start_m=round(z0, 2),
                           length_m=round(length, 2), lane_closed=lane_closed, cone_positions=cone_pos)
    st.signs.append(Sign(id=st.new_id("sign"), kind="road_work", side="right", text="ROAD WORK", color="orange",
                         distance_m=round(max(3.0, z0 - 12), 2), x_m=round(right_edge_u(L) + (3.7 if L["parking"] else 1.3), 2)))
    if wx is not None:
        for k in range(workers):
            z = z0 + 4 + k * r.u(4, 9)
            pid = st.new_id("pedestrian")
            attrs = dict(kind="worker", carrying="nothing", shirt_color="orange", action="working",
                         crossing_direction=None, on_crosswalk=False, start_side="right")
            st.actors.append(_Actor("pedestrian", pid, Walker([(0.0, G.road_centre_x(z, L["curvature"]) + wx + 0.3 * k, z)],
                                                              face=-90.0), attrs, (0.45, 0.5, G.PERSON_HEIGHT["worker"])))
            st.construction["workers"] += 1
    st.difficulty_reasons.append("a construction zone")


# ---------------------------------------------------------------------------------------------
# visibility, summaries, events


def _visibility(st: _Story, cam: G.Camera, times: np.ndarray, ego_poses, poses_by_actor) -> dict:
    """For each actor: per-time screen boxes (or None), accounting for vehicles that hide others."""
    view_limit = _view_limit(st.cond)
    boxes: dict[str, list] = {}
    for a in st.actors:
        L_, W_, H_ = a.size
        out = []
        for ti, t in enumerate(times):
            x, z, h = poses_by_actor[a.id][ti]
            corners = G.box_corners(x, z, h, L_, W_, 0.0, H_)
            b = G.screen_box(corners, ego_poses[ti], cam)
            if b is None or b[4] > view_limit or (b[3] - b[1]) < MIN_BOX_FRAC * cam.height:
                out.append(None)
            else:
                out.append(b)
        boxes[a.id] = out
    # occlusion by nearer vehicles (mostly covered => not visible)
    vehicles = [a for a in st.actors if a.kind == "vehicle"]
    for a in st.actors:
        for ti in range(len(times)):
            b = boxes[a.id][ti]
            if b is None:
                continue
            area = (b[2] - b[0]) * (b[3] - b[1])
            for o in vehicles:
                if o.id == a.id:
                    continue
                ob = boxes[o.id][ti]
                if ob is None or ob[4] >= b[4]:
                    continue
                ix = max(0.0, min(b[2], ob[2]) - max(b[0], ob[0]))
                iy = max(0.0, min(b[3], ob[3]) - max(b[1], ob[1]))
                if ix * iy > 0.8 * area:
                    boxes[a.id][ti] = None
                    break
    return boxes


def _footprint(x: float, z: float, hdg: float, length: float, width: float) -> np.ndarray:
    psi = math.radians(hdg)
    f = np.array([math.sin(psi), math.cos(psi)]) * (length / 2)
    rgt = np.array([math.cos(psi), -math.sin(psi)]) * (width / 2)
    c = np.array([x, z])
    return np.array([c + f + rgt, c + f - rgt, c - f - rgt, c - f + rgt])


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex quadrilaterals (4 x 2)."""
    for poly in (a, b):
        for i in range(4):
            e = poly[(i + 1) % 4] - poly[i]
            n = np.array([-e[1], e[0]])
            pa = a[:, 0] * n[0] + a[:, 1] * n[1]
            pb = b[:, 0] * n[0] + b[:, 1] * n[1]
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def _deconflict(st: _Story, times, ego_poses, poses) -> list[_Actor]:
    """Drop road users whose footprints would overlap the ego or a more important road user at
    any sampled time (story-critical actors first, then in the order they were added)."""
    info = st.info
    critical = {st.lead_id, info.get("yields_to")}

    def prio(a: _Actor) -> int:
        if a.id in critical or (a.kind == "pedestrian" and a.attrs.get("action") == "crossing"
                                and info["stop_reason"] == "pedestrian"):
            return 0
        return 1

    order = sorted(range(len(st.actors)), key=lambda i: (prio(st.actors[i]), i))
    ego_fp = []
    for (x, z, h) in ego_poses:
        psi = math.radians(h)
        ego_fp.append(_footprint(x - 0.8 * math.sin(psi), z - 0.8 * math.cos(psi), h, 4.8, 2.0))
    kept: list[tuple[_Actor, list]] = []
    for i in order:
        a = st.actors[i]
        L_, W_ = a.size[0], a.size[1]
        fps = [_footprint(x, z, h, L_ + 0.4, W_ + 0.2) for (x, z, h) in poses[a.id]]
        r_a = 0.5 * math.hypot(L_ + 0.4, W_ + 0.2)
        clash = False
        others = [(ego_fp, 2.7)] + [(k_fp, k_r) for _, k_fp, k_r in kept]
        for fp_o, r_o in others:
            for ti in range(len(times)):
                d = (fps[ti][0] + fps[ti][1] + fps[ti][2] + fps[ti][3]) / 4 - (fp_o[ti][0] + fp_o[ti][1] + fp_o[ti][2] + fp_o[ti][3]) / 4
                if d[0] * d[0] + d[1] * d[1] > (r_a + r_o) ** 2:
                    continue
                if _overlap(fps[ti], fp_o[ti]):
                    clash = True
                    break
            if clash:
                break
        if clash and prio(a) > 0:
            continue
        kept.append((a, fps, r_a))
    keep_ids = {a.id for a, _, _ in kept}
    return [a for a in st.actors if a.id in keep_ids]


def _view_limit(cond: Conditions) -> float:
    """Beyond this distance (m) nothing counts as visible: fog, rain and darkness shorten it."""
    v = {"clear": 160.0, "overcast": 140.0, "rain": 100.0, "fog": 42.0}[cond.weather]
    return min(v, 80.0) if cond.time_of_day == "night" else v


def _position(cam_x: float, cam_z: float) -> tuple[str, str]:
    if abs(cam_x) <= 1.9 and cam_z > 0:
        return "ahead", "ahead"
    side = "left" if cam_x < 0 else "right"
    if cam_z >= 10:
        return f"ahead_{side}", side
    return side, side


def _finish(st: _Story, video_id: str) -> SceneRecord:
    T, L, info, r = st.T, st.layout, st.info, st.r
    dt = min(0.25, T / 32) if T > 0 else 0.1
    dt = max(dt, 1 / 64)
    ego_track = sample_track(st.ego, T, dt)
    cam = G.Camera(st.width, st.height)
    vis_fps = 10.0 if T > 2 else 30.0
    times = np.unique(np.concatenate([np.arange(0.0, T, 1.0 / vis_fps), [T]]))
    ego_arr = np.array(ego_track, dtype=np.float64)
    ego_poses = [G.pose_at(ego_arr, float(t)) for t in times]
    tracks = {a.id: sample_track(a.motion, T, dt) for a in st.actors}
    poses = {aid: [G.pose_at(np.array(tr, dtype=np.float64), float(t)) for t in times] for aid, tr in tracks.items()}
    st.actors = _deconflict(st, times, ego_poses, poses)
    boxes = _visibility(st, cam, times, ego_poses, poses)

    def cam_xz(aid: str, ti: int) -> tuple[float, float]:
        x, z, _ = poses[aid][ti]
        c = G.to_camera(np.array([[x, 0.0, z]]), ego_poses[ti])[0]
        return float(c[0]), float(c[2])

    vehicles: list[Vehicle] = []
    peds: list[Pedestrian] = []
    cyclists: list[Cyclist] = []
    kept: dict[str, tuple[float, float]] = {}
    for a in st.actors:
        vis = [i for i, b in enumerate(boxes[a.id]) if b is not None]
        if not vis:
            continue
        i0, i1 = vis[0], vis[-1]
        t0, t1 = float(times[i0]), float(times[i1])
        if a.kind == "vehicle" and (t1 - t0) < min(0.4, 0.1 * T) and a.attrs["role"] != "lead":
            continue  # a glimpse is not something a caption should claim
        if a.kind != "vehicle" and (t1 - t0) < min(0.6, 0.15 * T):
            continue
        kept[a.id] = (t0, t1)
        cx, cz = cam_xz(a.id, i0)
        pos, side = _position(cx, cz)
        cz_end = cam_xz(a.id, len(times) - 1)[1]
        at = a.attrs
        if a.kind == "vehicle":
            role = at["role"]
            if role == "lead":
                pos, side = "ahead", "ahead"
            lane_offset = _lane_offset(st, a, role)
            vehicles.append(Vehicle(
                id=a.id, type=at["type"], color=at["color"], role=role, behavior=at["behavior"], position=pos,
                side=side, lane_offset=lane_offset, distance_start_m=round(cz, 2), distance_end_m=round(cz_end, 2),
                start_s=round(t0, 2), end_s=round(t1, 2),
                maneuver_start_s=None if at.get("maneuver_start_s") is None else round(at["maneuver_start_s"], 2),
                maneuver_end_s=None if at.get("maneuver_end_s") is None else round(at["maneuver_end_s"], 2),
                brake_lights=bool(at["brake_lights"]), emergency_lights=bool(at["emergency_lights"]),
                is_emergency=at["type"] in EMERGENCY_TYPES, is_transit=at["type"] == "bus",
                is_commercial=at["type"] in ("truck", "van", "bus"), track=tracks[a.id],
            ))
        elif a.kind == "pedestrian":
            act = at["action"]
            pside = "ahead" if act == "crossing" else at["start_side"]
            peds.append(Pedestrian(
                id=a.id, kind=at["kind"], action=act, side=pside, start_side=at["start_side"],
                crossing_direction=at.get("crossing_direction"), on_crosswalk=at.get("on_crosswalk", False),
                carrying=at["carrying"], shirt_color=at["shirt_color"], group_id=None,
                distance_m=round(cam_xz(a.id, 0)[1], 2), start_s=round(t0, 2), end_s=round(t1, 2),
                cross_start_s=None if at.get("cross_start_s") is None else max(0.0, at["cross_start_s"]),
                cross_end_s=at.get("cross_end_s"), track=tracks[a.id],
            ))
        else:
            cyclists.append(Cyclist(
                id=a.id, action=at["action"], side=side if side != "ahead" else "ahead",
                crossing_direction=None, shirt_color=at["shirt_color"], distance_start_m=round(cz, 2),
                distance_end_m=round(cz_end, 2), start_s=round(t0, 2), end_s=round(t1, 2), track=tracks[a.id],
            ))
    # a lead vehicle that is never visible is no lead
    lead = next((v for v in vehicles if v.role == "lead"), None)
    following = lead is not None and st.maneuver not in ("lane_change_left", "lane_change_right") or (
        lead is not None and st.maneuver.startswith("lane_change") and False)
    if lead is not None and st.maneuver.startswith("lane_change"):
        following = True  # follows it until it changes lanes to pass it
    # yields_to must be visible
    if info.get("yields_to") not in kept:
        info["yields_to"] = None

    # ---- events (ego, light, others)
    _ego_events(st)
    for v in vehicles:
        a, b = kept[v.id]
        if v.role == "lead":
            if v.behavior == "braking" and v.maneuver_start_s is not None:
                st.event("lead_vehicle_brakes", v.maneuver_start_s, v.maneuver_end_s or b, "the lead vehicle brakes", v.id)
            elif v.behavior == "accelerating" and v.maneuver_start_s is not None:
                st.event("lead_vehicle_accelerates", v.maneuver_start_s, v.maneuver_end_s or b, "the lead vehicle pulls away", v.id)
            elif v.behavior in ("turning_left", "turning_right") and v.maneuver_start_s is not None:
                d = v.behavior.split("_")[1]
                st.event(f"lead_vehicle_turns_{d}", v.maneuver_start_s, v.maneuver_end_s or b, f"the lead vehicle turns {d}", v.id)
        elif v.behavior.startswith("lane_change"):
            d = v.behavior.rsplit("_", 1)[1]
            st.event(f"vehicle_changes_lane_{d}", v.maneuver_start_s, v.maneuver_end_s, f"a {v.color} vehicle changes lanes to the {d}", v.id)
        elif v.role == "cross_traffic":
            st.event("vehicle_crosses_junction", a, b, "a vehicle crosses the junction ahead", v.id)
        elif v.is_emergency:
            st.event("emergency_vehicle_passes", a, b, "an emergency vehicle with flashing lights passes", v.id)
        elif v.role == "oncoming" and v.behavior == "steady":
            st.event("oncoming_vehicle_passes", a, b, "an oncoming vehicle passes", v.id)
        elif v.role == "oncoming" and v.behavior == "accelerating" and v.maneuver_start_s is not None:
            st.event("oncoming_vehicle_passes", max(a, v.maneuver_start_s), b, "an oncoming vehicle starts moving towards the ego", v.id)
    for p in peds:
        if p.action == "crossing":
            a = max(p.cross_start_s or 0.0, kept[p.id][0])
            st.event("pedestrian_crosses", a, min(p.cross_end_s or st.T, st.T),
                     "a child crosses the road" if p.kind == "child" else "a pedestrian crosses the road", p.id)
    for c in cyclists:
        a, b = kept[c.id]
        if c.action == "crossing":
            st.event("cyclist_crosses", a, b, "a cyclist crosses the road", c.id)
        elif c.distance_end_m < 0:
            st.event("cyclist_passes", a, b, "the ego passes a cyclist", c.id)
    for s in st.signs:
        if s.kind == "stop":
            t = st.ego_prof.time_at_dist(s.distance_m)
            if t <= T and st.maneuver.endswith("_turn") is False:
                st.event("ego_passes_stop_sign", t, t, "the ego passes the stop sign")
    if st.construction is not None:
        z0 = st.construction["distance_start_m"]
        t_a = st.ego_prof.time_at_dist(z0 - 2)
        t_b = st.ego_prof.time_at_dist(z0 + st.construction["length_m"])
        if t_a < T:
            st.event("ego_passes_construction_zone", t_a, min(t_b, T), "the ego drives past the construction zone")
    events = sorted(st.events, key=lambda e: (e.start_s, e.end_s, e.kind))

    # ---- road, light, ego, summaries
    road = Road(
        environment=st.env, buildings=L["buildings"], trees=L["trees"], lanes_ego_direction=L["ego_l"],
        lanes_oncoming=L["onc_l"], lane_count=L["ego_l"] + L["onc_l"], divided=L["divided"], ego_lane=st.ego_lane,
        curve=L["curve"], junction=L["junction"], junction_side=L["junction_side"],
        junction_distance_m=None if st.junction_z is None else round(st.junction_z, 2),
        crosswalk=_crosswalk_z(st) is not None,
        crosswalk_distance_m=None if _crosswalk_z(st) is None else round(_crosswalk_z(st), 2),
        parking_lane=L["parking"], sidewalk=st.env in ("urban", "suburban"), curvature_per_m=round(L["curvature"], 6),
        median_m=L["median"], cross_road_width_m=L["cross_w"] if st.junction_z is not None else None,
        stop_line_distance_m=None if (st.stop_line is None and st.junction_z is None) else round(
            st.stop_line if st.stop_line is not None else st.junction_z - 2.0, 2),
    )
    if road.junction == "none" and st.junction_z is None:
        pass
    signs = []
    for s in st.signs:
        iv = _static_interval(G.box_corners(s.x_m, s.distance_m, 0.0, 0.2, 0.8, 1.9, 2.9), cam, ego_poses, times, 0.012,
                              min(90.0, _view_limit(st.cond)))
        if iv is not None:
            signs.append(s.model_copy(update={"start_s": iv[0], "end_s": iv[1]}))
    tl = None
    if st.light is not None:
        ph = st.light["phases"]
        tl = TrafficLight(heads=st.light["heads"], side="overhead" if st.light["heads"] == 2 else "right",
                          distance_m=round(st.light["z"], 2), x_m=round(st.light["x"], 2), z_m=round(st.light["z"], 2),
                          phases=[LightPhase(state=s, start_s=a, end_s=b) for s, a, b in ph],
                          state_at_start=ph[0][0], state_at_end=ph[-1][0], changes=len(ph) > 1)
        iv = _static_interval(G.box_corners(st.light["x"], st.light["z"], 0.0, 0.35, 0.55, 2.7, 4.1), cam, ego_poses, times, 0.012,
                              min(150.0, _view_limit(st.cond) * 1.5))
        relies = info["stop_reason"] == "red_light" or info["violation"] == "ran_red_light"
        if iv is None and not relies:
            tl = None  # never in view (fog, distance): the record states only what is visible
        else:
            tl = tl.model_copy(update={"start_s": iv[0] if iv else 0.0, "end_s": iv[1] if iv else round(T, 2)})
    prof = st.ego_prof
    v0, v1 = prof.kmh(0.0), prof.kmh(T)
    trend = _speed_trend(prof, T)
    lane_end = st.ego_lane + {"left": 1, "right": -1}.get(info["lane_change"] or "", 0)
    ego = Ego(
        maneuver=st.maneuver,
        maneuver_start_s=None if info["m_start"] is None else round(info["m_start"], 2),
        maneuver_end_s=None if info["m_end"] is None else round(info["m_end"], 2),
        speed_keyframes=[(t, v) for t, v in prof.kf if t <= T + 1e-6] + ([(T, round(v1, 2))] if prof.kf[-1][0] > T else []),
        speed_start_kmh=round(v0, 1), speed_end_kmh=round(v1, 1), speed_trend=trend,
        moving_at_start=v0 > 1, moving_at_end=v1 > 1, stops=info["stops"], stop_reason=info["stop_reason"],
        stop_start_s=None if info["stop_start"] is None else round(info["stop_start"], 2),
        stop_end_s=None if info["stop_end"] is None else round(info["stop_end"], 2),
        following_lead=bool(lead is not None and following), turn_direction=info["turn"],
        lane_change_direction=info["lane_change"], yields_to=info.get("yields_to"),
        rule_violation=info["violation"], lane_end=lane_end, track=ego_track,
    )
    # nearest vehicle at the first moment any vehicle is visible
    nearest_id = nearest_pos = nearest_t = None
    for ti, t in enumerate(times):
        cands = [(boxes[v.id][ti][4], v) for v in vehicles if boxes[v.id][ti] is not None]
        if cands:
            d, v = min(cands, key=lambda c: c[0])
            cx, cz = cam_xz(v.id, ti)
            nearest_id, nearest_pos, nearest_t = v.id, _position(cx, cz)[0], round(float(t), 2)
            if v.role == "lead":
                nearest_pos = "ahead"
            break
    # critical object
    critical = None
    if info.get("yields_to"):
        critical = info["yields_to"]
    elif lead is not None:
        critical = lead.id
    else:
        em = next((v for v in vehicles if v.is_emergency), None)
        cr = next((p for p in peds if p.action == "crossing"), None)
        cyc = next((c for c in cyclists if c.action == "riding_same_direction"), None)
        critical = (em or cr or cyc).id if (em or cr or cyc) else None
    # difficulty
    reasons = list(dict.fromkeys(st.difficulty_reasons))
    if st.maneuver in ("left_turn", "right_turn") and any(v.role in ("oncoming", "cross_traffic") for v in vehicles):
        reasons.append("turning across traffic")
    if st.maneuver.startswith("lane_change") and any(v.role == "adjacent" for v in vehicles):
        reasons.append("changing lanes in traffic")
    if lead is not None and lead.behavior == "braking":
        reasons.append("a braking vehicle ahead")
    if any(c for c in cyclists):
        reasons.append("a cyclist nearby")
    if st.env == "highway" and v0 > 80:
        reasons.append("high speed")
    difficulty = max(1, min(5, 1 + len(reasons)))
    interesting = difficulty >= 3 or info["violation"] != "none" or any(v.is_emergency for v in vehicles)

    pedestrians_sorted = peds
    rec = SceneRecord(
        video_id=video_id,
        seed=st.seed,
        duration_s=round(T, 3),
        render=RenderSettings(width=st.width, height=st.height, fps=st.fps, num_frames=max(1, int(round(T * st.fps)))),
        scenery_seed=int(r.g.integers(0, 2**31 - 1)),
        road=road,
        conditions=st.cond,
        traffic_light=tl,
        signs=signs,
        construction=Construction(**st.construction) if st.construction else None,
        vehicles=vehicles,
        pedestrians=pedestrians_sorted,
        cyclists=cyclists,
        ego=ego,
        events=events,
        nearest_vehicle_id=nearest_id,
        nearest_vehicle_time_s=nearest_t,
        nearest_vehicle_position=nearest_pos,
        driving_difficulty=difficulty,
        difficulty_reasons=reasons,
        interesting_scenario=bool(interesting),
        critical_object_id=critical,
    )
    return rec


def _static_interval(corners, cam: G.Camera, ego_poses, times, min_frac: float, max_dist: float):
    """(first, last) time a static object is in view, or None."""
    vis = []
    for p, t in zip(ego_poses, times):
        b = G.screen_box(corners, p, cam)
        if b is not None and b[4] < max_dist and (b[3] - b[1]) >= min_frac * cam.height:
            vis.append(float(t))
    if not vis:
        return None
    return round(vis[0], 2), round(vis[-1], 2)


def _lane_offset(st: _Story, a: _Actor, role: str) -> int:
    L = st.layout
    if role in ("lead",):
        return 0
    if role == "parked":
        return st.ego_lane + 1  # the kerb beyond the rightmost lane
    if role == "cross_traffic":
        return 0
    x, z, _ = a.motion.pose(0.0)
    u = x - G.road_centre_x(z, L["curvature"])
    if u >= 0:
        lane = int(round(L["ego_l"] - 0.5 - (u - L["median"] / 2) / G.LANE_W))
        return st.ego_lane - lane
    k = int(round((-u - L["median"] / 2) / G.LANE_W - 0.5))
    return -(L["ego_l"] - st.ego_lane) - k  # negative: to the left, across the centre line


def _speed_trend(prof: Profile, T: float) -> str:
    ts = np.linspace(0, T, 41)
    v = np.array([prof.kmh(t) for t in ts])
    if v.max() <= 1:
        return "stationary"
    stopped = v <= 1
    if stopped.any() and v[0] > 1 and v[-1] > 1:
        return "stop_and_go"
    if stopped.any() and v[0] > 1 and v[-1] <= 1:
        return "decelerating"
    if stopped.any() and v[0] <= 1 and v[-1] > 1:
        return "accelerating"
    if v[-1] > v[0] + 6:
        return "accelerating"
    if v[-1] < v[0] - 6:
        return "decelerating"
    return "constant"
