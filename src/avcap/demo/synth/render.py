"""Draw the frames of a `SceneRecord` (numpy + PIL, no GPU).

Per frame: the sky (gradient by time of day and weather, a distant skyline / hills silhouette and the
sun or moon, all tied to world azimuth so turning pans them), the ground by ray casting every pixel
below the horizon onto the road map (lanes, markings, crosswalk, stop line, junction, pavements,
verges; asphalt texture so motion is visible; wet sheen; headlight and street-lamp pools at night),
then every object as lit, fogged 3-D boxes and billboards drawn far to near (buildings, trees, street
lamps, barriers, vehicles with tail/brake/head/emergency lights, people, cyclists, traffic lights,
signs, cones), and last the rain streaks.

Frames are drawn at an internal resolution of at most ~640 px wide and upscaled (bilinear) to the
output size, so a 1936×1220 frame costs about what a 484×305 one does. Everything is a pure
function of the record (and the output size): the same record gives the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from avcap.demo.synth import geometry as G
from avcap.demo.synth.scene import SceneRecord
from avcap.video import write_video

MAX_INTERNAL_WIDTH = 640
DRAW_DISTANCE = 260.0

# ---------------------------------------------------------------------------------------------
# palettes
# ---------------------------------------------------------------------------------------------

SKY = {
    "day": {
        "clear": ((55, 115, 210), (165, 200, 235)),
        "overcast": ((130, 135, 145), (182, 185, 192)),
        "rain": ((92, 97, 108), (140, 145, 153)),
        "fog": ((178, 180, 184), (196, 197, 200)),
    },
    "dusk": {
        "clear": ((40, 45, 105), (250, 140, 70)),
        "overcast": ((85, 80, 98), (172, 128, 108)),
        "rain": ((62, 62, 78), (128, 108, 102)),
        "fog": ((140, 130, 132), (172, 156, 146)),
    },
    "night": {
        "clear": ((3, 5, 16), (20, 26, 50)),
        "overcast": ((12, 12, 17), (34, 34, 42)),
        "rain": ((9, 9, 14), (28, 28, 36)),
        "fog": ((36, 36, 41), (52, 52, 57)),
    },
}
AMBIENT = {"day": 1.0, "dusk": 0.62, "night": 0.2}
TINT = {"day": (1.0, 1.0, 1.0), "dusk": (1.0, 0.8, 0.66), "night": (0.72, 0.82, 1.1)}
WEATHER_LIGHT = {"clear": 1.0, "overcast": 0.82, "rain": 0.7, "fog": 0.9}
FOG_LENGTH = {"clear": 600.0, "overcast": 320.0, "rain": 110.0, "fog": 32.0}

COLOR_RGB = {
    "red": (200, 30, 30),
    "blue": (30, 70, 210),
    "green": (30, 150, 50),
    "yellow": (240, 205, 30),
    "white": (235, 235, 235),
    "black": (22, 22, 25),
    "gray": (125, 127, 132),
    "orange": (245, 125, 20),
}
ASPHALT = np.array((72, 72, 76), np.float32)
ASPHALT_WET = np.array((44, 44, 50), np.float32)
LINE_WHITE = np.array((228, 228, 225), np.float32)
LINE_YELLOW = np.array((230, 185, 35), np.float32)
SIDEWALK = np.array((152, 150, 144), np.float32)
MEDIAN = np.array((165, 163, 158), np.float32)
VERGE = {
    "urban": (128, 124, 118),
    "suburban": (72, 128, 56),
    "rural": (128, 138, 62),
    "highway": (92, 122, 62),
}
GLASS = (48, 58, 75)
SKIN = (205, 160, 125)
BUILDING_COLORS = [(150, 82, 62), (200, 186, 152), (140, 140, 146), (214, 208, 198), (108, 118, 140),
                   (176, 150, 118), (120, 100, 90), (185, 170, 175)]


def _internal_size(width: int, height: int) -> tuple[int, int, int]:
    k = max(1, math.ceil(width / MAX_INTERNAL_WIDTH))
    return max(16, round(width / k)), max(10, round(height / k)), k


def _hash2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic per-cell pseudo-random values in [0, 1)."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


# ---------------------------------------------------------------------------------------------
# scenery (static props derived from the record)
# ---------------------------------------------------------------------------------------------


class _Prop:
    """A static object: list of boxes (corners, face colours, decals) or billboards."""

    __slots__ = ("kind", "x", "z", "data")

    def __init__(self, kind: str, x: float, z: float, data: dict):
        self.kind, self.x, self.z, self.data = kind, x, z, data


def _scenery(rec: SceneRecord) -> list[_Prop]:
    road = rec.road
    rng = np.random.default_rng(rec.scenery_seed)
    k = road.curvature_per_m
    med = road.median_m
    er = med / 2 + road.lanes_ego_direction * G.LANE_W
    el = -med / 2 - road.lanes_oncoming * G.LANE_W
    er_park = er + (2.5 if road.parking_lane else 0.0)
    zj = road.junction_distance_m
    W = road.cross_road_width_m or 0.0
    props: list[_Prop] = []
    env = road.environment

    def blocked(z0: float, z1: float, side: str) -> bool:
        if zj is None:
            return False
        if road.junction == "t_junction" and road.junction_side != side:
            return False
        return z1 > zj - 4 and z0 < zj + W + 4

    def cx(z: float) -> float:
        return G.road_centre_x(z, k)

    # buildings along the main road
    if road.buildings != "none":
        for side in ("right", "left"):
            edge = er_park if side == "right" else el
            z = float(rng.uniform(-30, -10))
            while z < 320:
                if road.buildings == "houses":
                    length = float(rng.uniform(9, 14))
                    gap = float(rng.uniform(6, 16)) if env == "suburban" else float(rng.uniform(40, 120))
                    setback = float(rng.uniform(7, 12))
                    height = float(rng.uniform(5, 7.5))
                    depth = float(rng.uniform(9, 12))
                elif road.buildings == "shops":
                    length = float(rng.uniform(10, 20))
                    gap = float(rng.uniform(0, 3))
                    setback = 3.5
                    height = float(rng.uniform(5, 10))
                    depth = 14.0
                else:  # high rise
                    length = float(rng.uniform(14, 24))
                    gap = float(rng.uniform(2, 8))
                    setback = 3.5
                    height = float(rng.uniform(22, 60))
                    depth = 20.0
                color = BUILDING_COLORS[int(rng.integers(len(BUILDING_COLORS)))]
                awning = COLOR_RGB[list(COLOR_RGB)[int(rng.integers(8))]]
                seed = int(rng.integers(1 << 30))
                if not blocked(z, z + length, side) and not (env == "rural" and rng.random() < 0.5):
                    zc = z + length / 2
                    off = edge + setback + depth / 2 if side == "right" else edge - setback - depth / 2
                    props.append(_Prop("building", cx(zc) + off, zc, dict(
                        length=length, width=depth, height=height, heading=G.road_heading_deg(zc, k), color=color,
                        kind=road.buildings, facing=side, awning=awning, seed=seed)))
                z += length + gap
        # along the cross road
        if zj is not None:
            sides = ("left", "right") if road.junction == "four_way" else (road.junction_side,)
            for side in sides:
                for near in (True, False):
                    x = (er_park + 6) if side == "right" else (el - 6)
                    while abs(x) < 200:
                        length = float(rng.uniform(10, 18))
                        height = float(rng.uniform(5, 9)) if road.buildings != "high_rise" else float(rng.uniform(20, 50))
                        depth = 12.0
                        color = BUILDING_COLORS[int(rng.integers(len(BUILDING_COLORS)))]
                        sgn = 1 if side == "right" else -1
                        xc = x + sgn * length / 2
                        zc = (zj - 4 - depth / 2) if near else (zj + W + 4 + depth / 2)
                        props.append(_Prop("building", xc, zc, dict(
                            length=length, width=depth, height=height, heading=90.0, color=color, kind=road.buildings,
                            facing="cross", awning=COLOR_RGB["red"], seed=int(rng.integers(1 << 30)))))
                        x += sgn * (length + float(rng.uniform(2, 14)))
    # trees
    if road.trees:
        for side in ("right", "left"):
            edge = er_park if side == "right" else el
            z = float(rng.uniform(-10, 10))
            spacing = {"urban": 18.0, "suburban": 14.0, "rural": 9.0, "highway": 16.0}[env]
            while z < 300:
                off = float(rng.uniform(1.5, 3.0)) if env in ("urban", "suburban") else float(rng.uniform(3, 12))
                if road.buildings == "houses":
                    off = float(rng.uniform(2.0, 5.0))
                if env == "highway":
                    off += 3
                if not blocked(z - 3, z + 3, side):
                    x = cx(z) + (edge + off if side == "right" else edge - off)
                    props.append(_Prop("tree", x, z, dict(h=float(rng.uniform(5, 9)), r=float(rng.uniform(1.6, 3.0)),
                                                        shade=float(rng.uniform(0.75, 1.15)))))
                z += spacing * float(rng.uniform(0.6, 1.6))
    # street lamps (urban / suburban) on the right
    if env in ("urban", "suburban"):
        z = float(rng.uniform(5, 20))
        while z < 250:
            if not blocked(z - 2, z + 2, "right"):
                props.append(_Prop("lamp", cx(z) + er_park + 0.6, z, dict(side="right")))
            z += 30.0
    # highway barriers
    if road.divided:
        z = -20.0
        while z < 300:
            props.append(_Prop("barrier", cx(z + 10), z + 10, dict(length=20.0, width=0.5, height=0.85,
                                                                   heading=G.road_heading_deg(z + 10, k))))
            props.append(_Prop("rail", cx(z + 10) + er + 1.6, z + 10, dict(length=20.0, heading=G.road_heading_deg(z + 10, k))))
            z += 20.0
    return props


# ---------------------------------------------------------------------------------------------
# the renderer
# ---------------------------------------------------------------------------------------------


class Renderer:
    """Renders frames of one record at (width, height) (default: the record's render size)."""

    def __init__(self, rec: SceneRecord, width: Optional[int] = None, height: Optional[int] = None):
        self.rec = rec
        self.width = int(width or rec.render.width)
        self.height = int(height or rec.render.height)
        self.iw, self.ih, self.k = _internal_size(self.width, self.height)
        self.cam = G.Camera(self.iw, self.ih)
        c = rec.conditions
        self.tod, self.weather = c.time_of_day, c.weather
        top, hor = SKY[self.tod][self.weather]
        self.sky_top = np.array(top, np.float32)
        self.sky_hor = np.array(hor, np.float32)
        amb = AMBIENT[self.tod] * WEATHER_LIGHT[self.weather]
        if self.tod == "night" and c.streetlights:
            amb *= 1.4
        self.light = np.array(TINT[self.tod], np.float32) * amb
        self.fog_col = self.sky_hor.copy()
        self._light3 = tuple(float(v) for v in self.light)
        self._fog3 = tuple(float(v) for v in self.fog_col)
        self.fog_len = FOG_LENGTH[self.weather]
        if self.tod == "night":
            self.fog_len = min(self.fog_len, 140.0) if self.weather != "fog" else self.fog_len
        self.headlights = self.tod in ("night", "dusk")
        self.ego = np.array(rec.ego.track, np.float64)
        self.tracks = {}
        for group in (rec.vehicles, rec.pedestrians, rec.cyclists):
            for o in group:
                self.tracks[o.id] = np.array(o.track, np.float64)
        self.props = _scenery(rec)
        # per-column azimuth offsets with Python's libm (numpy's SIMD transcendental functions can
        # differ in the last bit with memory alignment, which would make frames non-reproducible)
        self.az_offset = np.array([math.atan((u + 0.5 - self.cam.cx) / self.cam.f) for u in range(self.iw)], np.float64)
        self._ray_grid()
        self._sky_rows()
        srng = np.random.default_rng(rec.scenery_seed + 7)
        self.sun_az = float(srng.uniform(-0.5, 0.5))
        self.sil_phase = srng.uniform(0, 2 * math.pi, 4)
        self.skyline = srng.uniform(0.02, 0.11, 720)
        self.font_cache: dict[int, ImageFont.ImageFont] = {}

    # ---- static grids
    def _ray_grid(self) -> None:
        cam = self.cam
        v0 = int(math.floor(cam.cy)) + 1
        self.ground_v0 = v0
        vs = np.arange(v0, self.ih, dtype=np.float32) + 0.5
        us = np.arange(self.iw, dtype=np.float32) + 0.5
        zc = cam.f * G.CAM_HEIGHT / (vs - cam.cy)  # forward distance per row
        self.ray_z = np.repeat(zc[:, None], self.iw, axis=1)
        self.ray_x = (us[None, :] - cam.cx) * self.ray_z / cam.f
        self.ray_far = self.ray_z > DRAW_DISTANCE

    def _sky_rows(self) -> None:
        n = self.ground_v0
        a = np.array([(i / max(1, n - 1)) ** 1.6 for i in range(max(1, n))], np.float32)  # Python libm: see _exp_neg
        self.sky_grad = self.sky_top[None, :] * (1 - a[:, None]) + self.sky_hor[None, :] * a[:, None]

    # ---- frame
    def frame_at(self, t: float, frame_index: int = 0) -> np.ndarray:
        pose = G.pose_at(self.ego, t)
        img = np.empty((self.ih, self.iw, 3), np.float32)
        self._draw_sky(img, pose)
        self._draw_ground(img, pose)
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(pil)
        self._draw_objects(draw, pose, t)
        out = np.asarray(pil, dtype=np.uint8)
        if self.weather == "rain":
            out = self._rain(out.copy(), frame_index)
        if (self.iw, self.ih) != (self.width, self.height):
            out = np.asarray(Image.fromarray(out).resize((self.width, self.height), Image.BILINEAR))
        return out

    def frames(self, fps: Optional[float] = None, num_frames: Optional[int] = None) -> Iterator[np.ndarray]:
        fps = fps or self.rec.render.fps
        n = num_frames or self.rec.render.num_frames
        for i in range(n):
            yield self.frame_at(i / fps, i)

    # ---- sky
    def _draw_sky(self, img: np.ndarray, pose) -> None:
        n = self.ground_v0
        img[:n] = self.sky_grad[:, None, :]
        cam = self.cam
        psi = math.radians(pose[2])
        us = np.arange(self.iw, dtype=np.float32) + 0.5
        az = psi + self.az_offset
        env = self.rec.road.environment
        ph = self.sil_phase
        if env == "urban":
            idx = (np.floor((az % (2 * math.pi)) * 114.6).astype(np.int64)) % len(self.skyline)
            hgt = self.skyline[idx] * (1.6 if self.rec.road.buildings == "high_rise" else 0.8)
        else:
            amp = {"suburban": 0.025, "rural": 0.04, "highway": 0.03}[env]
            hgt = np.array([0.012 + amp * (0.5 + 0.3 * math.sin(2 * a + ph[0]) + 0.15 * math.sin(5 * a + ph[1])
                                           + 0.08 * math.sin(11 * a + ph[2])) for a in az.tolist()], np.float32)
        rows = (np.arange(n, dtype=np.float32) + 0.5)
        elev = (cam.cy - rows) / cam.f  # tan(elevation) per row
        mask = elev[:, None] < hgt[None, :]
        sil = self.sky_hor * 0.62 + np.array((70, 80, 90), np.float32) * 0.38 * (AMBIENT[self.tod] + 0.1)
        if self.weather == "fog":
            sil = self.sky_hor * 0.9 + sil * 0.1
        img[:n][mask] = sil
        # sun / moon
        if self.weather in ("clear", "overcast") and self.tod in ("dusk", "night"):
            el = 0.045 if self.tod == "dusk" else 0.16
            rad = 0.035 if self.tod == "dusk" else 0.018
            col = np.array((255, 196, 110) if self.tod == "dusk" else (235, 235, 215), np.float32)
            if self.weather == "overcast":
                col = col * 0.5 + self.sky_hor * 0.5
            du = self.sun_az - psi
            if abs(du) < 1.2:
                su = cam.cx + cam.f * math.tan(du)
                sv = cam.cy - cam.f * el
                r = rad * cam.f
                vv, uu = np.mgrid[0:n, 0:self.iw]
                du_, dv_ = uu + 0.5 - su, vv + 0.5 - sv
                d2 = (du_ * du_ + dv_ * dv_) / (r * r)
                glow = np.clip(1.6 - np.sqrt(d2) * 0.35, 0, 1)[..., None] * (0.45 if self.tod == "dusk" else 0.15)
                sky = img[:n]
                sky[:] = sky * (1 - glow) + col * glow
                sky[d2 <= 1.0] = col

    # ---- ground
    def _draw_ground(self, img: np.ndarray, pose) -> None:
        rec, road = self.rec, self.rec.road
        xc, zc, hdg = pose
        psi = math.radians(hdg)
        c, s = math.cos(psi), math.sin(psi)
        rx, rz = self.ray_x, self.ray_z
        X = xc + rx * c + rz * s
        Z = zc - rx * s + rz * c
        k = road.curvature_per_m
        u = X - 0.5 * k * Z * Z if k else X
        med = road.median_m
        er = med / 2 + road.lanes_ego_direction * G.LANE_W
        el = -med / 2 - road.lanes_oncoming * G.LANE_W
        zj = road.junction_distance_m
        W = road.cross_road_width_m or 0.0
        park = road.parking_lane
        er_road = er + (2.5 if park else 0.0)
        if park and zj is not None:
            near_j = (Z > zj - 10) & (Z < zj + W + 10)
            er_road_arr = np.where(near_j, er, er_road)
        else:
            er_road_arr = er_road
        env = road.environment
        col = np.empty(X.shape + (3,), np.float32)
        col[:] = np.array(VERGE[env], np.float32)
        # field texture for grass / fields
        tex = _hash2(np.floor(X * 0.7), np.floor(Z * 0.7))
        col *= (0.88 + 0.24 * tex)[..., None]
        on_main = (u >= el) & (u <= er_road_arr)
        road_m = on_main.copy()
        sw_w = 3.0 if road.sidewalk else 0.0
        side_r = (u > er_road_arr) & (u <= er_road_arr + sw_w)
        side_l = (u < el) & (u >= el - sw_w)
        cross = np.zeros_like(on_main)
        cross_sw = np.zeros_like(on_main)
        if zj is not None:
            band = (Z >= zj) & (Z <= zj + W)
            band_sw = ((Z >= zj - sw_w) & (Z < zj)) | ((Z > zj + W) & (Z <= zj + W + sw_w))
            if road.junction == "four_way":
                region = np.ones_like(on_main)
            elif road.junction_side == "left":
                region = u < el
            else:
                region = u > er_road_arr
            cross = band & region & ~on_main
            cross_sw = band_sw & region & ~on_main
            side_r &= ~(band & (region if road.junction != "t_junction" or road.junction_side == "right" else False))
            side_l &= ~(band & (region if road.junction != "t_junction" or road.junction_side == "left" else False))
        road_all = road_m | cross
        sidewalk = (side_r | side_l | cross_sw) & ~road_all
        col[sidewalk] = SIDEWALK * (0.92 + 0.12 * tex[sidewalk])[:, None]
        wet = rec.conditions.road_condition == "wet"
        base = ASPHALT_WET if wet else ASPHALT
        grain = _hash2(np.floor(X * 3.0), np.floor(Z * 3.0))
        patch = _hash2(np.floor(X * 0.25) + 17, np.floor(Z * 0.25))
        col[road_all] = base * (0.86 + 0.16 * grain[road_all] + 0.1 * patch[road_all])[:, None]
        # markings
        in_box = np.zeros_like(on_main) if zj is None else ((Z >= zj) & (Z <= zj + W))
        mk = on_main & ~in_box
        dash = (np.mod(Z, 12.0) < 4.5)
        lw = 0.075
        white = np.zeros_like(on_main)
        yellow = np.zeros_like(on_main)
        for i in range(1, road.lanes_ego_direction):
            white |= mk & (np.abs(u - (med / 2 + i * G.LANE_W)) < lw) & dash
        for i in range(1, road.lanes_oncoming):
            white |= mk & (np.abs(u + (med / 2 + i * G.LANE_W)) < lw) & dash
        if road.lanes_oncoming > 0 and not road.divided:
            yellow |= mk & ((np.abs(u - 0.14) < lw) | (np.abs(u + 0.14) < lw))
        elif road.divided:
            mid = on_main & (np.abs(u) < med / 2)
            col[mid] = MEDIAN
            yellow |= mk & ((np.abs(u - (med / 2 - 0.2)) < lw) | (np.abs(u + (med / 2 - 0.2)) < lw))
        else:
            yellow |= mk & (np.abs(u - (med / 2 + 0.2)) < lw)
        white |= mk & (np.abs(u - (er - 0.15)) < lw)
        if road.lanes_oncoming > 0:
            white |= mk & (np.abs(u - (el + 0.15)) < lw)
        if road.crosswalk and road.crosswalk_distance_m is not None:
            cz = road.crosswalk_distance_m
            white |= on_main & (Z >= cz) & (Z <= cz + 3.0) & (np.mod(u, 1.1) < 0.55)
        if road.stop_line_distance_m is not None and (zj is not None or road.crosswalk):
            sl = road.stop_line_distance_m
            white |= (Z >= sl - 0.45) & (Z <= sl) & (u >= med / 2 + 0.2) & (u <= er)
        if zj is not None:
            yellow |= cross & (np.abs(Z - (zj + W / 2)) < lw) & (np.mod(X, 12.0) < 4.5)
            if W > 8:
                white |= cross & ((np.abs(Z - (zj + W / 4)) < lw) | (np.abs(Z - (zj + 3 * W / 4)) < lw)) & (np.mod(X, 12.0) < 4.5)
        wear = 0.85 + 0.15 * grain
        col[white] = LINE_WHITE * wear[white][:, None] * (0.8 if wet else 1.0)
        col[yellow] = LINE_YELLOW * wear[yellow][:, None]
        # lighting
        col *= self.light
        dist = np.sqrt(rx * rx + rz * rz)
        if self.headlights:
            q = rx / (0.42 * rz + 0.8)
            pool = _exp_neg(q * q) * np.clip((45.0 - rz) / 40.0, 0, 1) * (rz > 2.0)
            boost = (1.8 if self.tod == "night" else 0.6) * pool
            col *= (1.0 + boost * 2.2)[..., None]
            col += (boost * 18.0)[..., None]
        if rec.conditions.streetlights:
            lz = np.mod(Z - 5.0, 30.0) - 15.0
            du = u - er_road
            lamp = _exp_neg(lz * lz / 40.0 + du * du / 30.0)
            col += (lamp * 80.0)[..., None] * np.array((1.0, 0.85, 0.55), np.float32)
        if wet:
            fres = np.clip(dist / 60.0, 0.15, 0.6)[..., None]
            col[road_all] = col[road_all] * (1 - fres[road_all]) + self.sky_hor * fres[road_all] * 0.8
        fog = 1.0 - _exp_neg(dist / self.fog_len)
        fog = np.where(self.ray_far, 1.0, fog)[..., None]
        col = col * (1 - fog) + self.fog_col * fog
        img[self.ground_v0:] = col

    # ---- shading helpers
    def _shade(self, rgb, depth: float, face: float = 1.0, emissive: bool = False, lit: float = 0.0):
        r, g, b = float(rgb[0]), float(rgb[1]), float(rgb[2])
        if not emissive:
            k = face * (1.0 + lit)
            lr, lg, lb = self._light3
            r, g, b = r * k * lr, g * k * lg, b * k * lb
        f = 1.0 - math.exp(-max(depth, 0.0) / self.fog_len)
        if emissive:
            f *= 0.7
        fr, fg, fb = self._fog3
        r, g, b = r * (1 - f) + fr * f, g * (1 - f) + fg * f, b * (1 - f) + fb * f
        return (int(min(255.0, max(0.0, r))), int(min(255.0, max(0.0, g))), int(min(255.0, max(0.0, b))))

    def _headlit(self, cam_x: float, cam_z: float) -> float:
        if not self.headlights or cam_z < 1.0:
            return 0.0
        pool = math.exp(-(cam_x / (0.42 * cam_z + 0.8)) ** 2) * max(0.0, min(1.0, (50.0 - cam_z) / 40.0))
        return (2.2 if self.tod == "night" else 0.5) * pool

    # ---- objects
    def _draw_objects(self, draw: ImageDraw.ImageDraw, pose, t: float) -> None:
        rec = self.rec
        items: list[tuple[float, object, tuple]] = []

        def depth_of(x: float, z: float) -> float:
            c = G.to_camera(np.array([x, 0.0, z]), pose)
            return float(c[2]), float(c[0])

        half = self.cam.half_fov_tan()
        for p in self.props:
            d, lx = depth_of(p.x, p.z)
            reach = max(p.data.get("length", 4.0), p.data.get("width", 4.0)) if p.kind in ("building", "barrier", "rail") else 4.0
            if d < -reach or d > min(DRAW_DISTANCE, 4.0 * self.fog_len + reach) or abs(lx) > (max(d, 0) + reach) * half + reach:
                continue
            items.append((d, "prop", (p,)))
        for v in rec.vehicles:
            x, z, h = G.pose_at(self.tracks[v.id], t)
            d, lx = depth_of(x, z)
            if -8 < d < DRAW_DISTANCE:
                items.append((d, "vehicle", (v, x, z, h)))
        for p in rec.pedestrians:
            x, z, h = G.pose_at(self.tracks[p.id], t)
            d, lx = depth_of(x, z)
            if -2 < d < DRAW_DISTANCE:
                items.append((d, "person", (p, x, z, h)))
        for c in rec.cyclists:
            x, z, h = G.pose_at(self.tracks[c.id], t)
            d, lx = depth_of(x, z)
            if -3 < d < DRAW_DISTANCE:
                items.append((d, "cyclist", (c, x, z, h)))
        if rec.traffic_light is not None:
            tl = rec.traffic_light
            d, lx = depth_of(tl.x_m, tl.z_m)
            if d > 0:
                items.append((d, "light", (tl,)))
        for s in rec.signs:
            d, lx = depth_of(s.x_m, s.distance_m)
            if d > 0.5:
                items.append((d, "sign", (s,)))
        if rec.construction is not None:
            for (cx_, cz_) in rec.construction.cone_positions:
                d, lx = depth_of(cx_, cz_)
                if 0.8 < d < 150:
                    items.append((d, "cone", (cx_, cz_)))
        items.sort(key=lambda it: -it[0])
        for d, kind, args in items:
            getattr(self, f"_draw_{kind}")(draw, pose, t, *args)

    # polygons -----------------------------------------------------------------------------
    def _poly(self, draw, pose, pts_world: np.ndarray, color) -> Optional[float]:
        cp = G.to_camera(pts_world, pose)
        cp = _clip_near(cp)
        if cp is None:
            return None
        uv = G.project(cp, self.cam)
        draw.polygon([(float(a), float(b)) for a, b in uv], fill=color)
        return float(cp[:, 2].mean())

    def _box(self, draw, pose, x, z, hdg, length, width, y0, y1, color, *, face_colors=None, decals=None,
             emissive=False, lit=0.0, top_color=None):
        """An upright box; `decals` maps face name -> list of (s0, s1, t0, t1, rgb, emissive)."""
        corners = G.box_corners(x, z, hdg, length, width, y0, y1)
        cam_c = G.to_camera(corners, pose)
        if (cam_c[:, 2] < G.NEAR).all():
            return
        cc = cam_c.tolist()
        cx_, cy_, cz_ = (sum(p[i] for p in cc) / 8.0 for i in range(3))
        order = []
        for name, idx in _FACES:
            pts = [cc[i] for i in idx]
            fx = (pts[0][0] + pts[1][0] + pts[2][0] + pts[3][0]) / 4
            fy = (pts[0][1] + pts[1][1] + pts[2][1] + pts[3][1]) / 4
            fz = (pts[0][2] + pts[1][2] + pts[2][2] + pts[3][2]) / 4
            if (fx - cx_) * fx + (fy - cy_) * fy + (fz - cz_) * fz >= 0:  # facing away
                continue
            order.append((fx * fx + fy * fy + fz * fz, name, pts, fz))
        order.sort(key=lambda o: -o[0])
        for _, name, pts, fz in order:
            base = (face_colors or {}).get(name, color)
            if name == "top" and top_color is not None:
                base = top_color
            depth = max(0.1, fz)
            sf = _SHADE_F[name]
            self._poly_cam(draw, pts, self._shade(base, depth, sf, emissive, lit))
            if decals and name in decals:
                p0, p1, p3 = pts[0], pts[1], pts[3]
                ex = [p1[i] - p0[i] for i in range(3)]
                ey = [p3[i] - p0[i] for i in range(3)]
                for s0, s1, t0, t1, rgb, emis in decals[name]:
                    q = [[p0[i] + s * ex[i] + t * ey[i] for i in range(3)] for s, t in ((s0, t0), (s1, t0), (s1, t1), (s0, t1))]
                    self._poly_cam(draw, q, self._shade(rgb, depth, 1.0 if emis else sf, emis, lit))

    def _poly_cam(self, draw, pts, color) -> None:
        """Fill a polygon given in camera coordinates (clipped at the near plane)."""
        near = G.NEAR
        if any(p[2] < near for p in pts):
            arr = _clip_near(np.array(pts, np.float64))
            if arr is None:
                return
            pts = arr.tolist()
        f, cx, cy = self.cam.f, self.cam.cx, self.cam.cy
        draw.polygon([(cx + f * p[0] / p[2], cy - f * p[1] / p[2]) for p in pts], fill=color)

    def _glow(self, draw, pose, x, y, z, radius_m, rgb, strength=1.0):
        cp = G.to_camera(np.array([[x, y, z]]), pose)[0]
        if cp[2] < G.NEAR:
            return
        u, v = G.project(cp, self.cam)
        r = max(0.6, self.cam.f * radius_m / cp[2])
        col = self._shade(rgb, float(cp[2]), emissive=True)
        draw.ellipse([u - r, v - r, u + r, v + r], fill=col)

    # props ---------------------------------------------------------------------------------
    def _draw_prop(self, draw, pose, t, p: _Prop):
        d = p.data
        if p.kind == "building":
            self._building(draw, pose, p)
        elif p.kind == "tree":
            self._box(draw, pose, p.x, p.z, 0.0, 0.35, 0.35, 0.0, d["h"] * 0.45, (95, 70, 45))
            cp = G.to_camera(np.array([[p.x, d["h"] * 0.62, p.z]]), pose)[0]
            if cp[2] > G.NEAR:
                u, v = G.project(cp, self.cam)
                rr = self.cam.f * d["r"] / cp[2]
                col = self._shade(np.array((48, 105, 42)) * d["shade"], float(cp[2]))
                draw.ellipse([u - rr, v - rr * 1.25, u + rr, v + rr * 1.0], fill=col)
        elif p.kind == "lamp":
            self._box(draw, pose, p.x, p.z, 0.0, 0.16, 0.16, 0.0, 7.0, (80, 82, 86))
            self._box(draw, pose, p.x - 0.9, p.z, 0.0, 0.25, 1.8, 6.9, 7.1, (80, 82, 86))
            night = self.rec.conditions.streetlights
            self._box(draw, pose, p.x - 1.6, p.z, 0.0, 0.35, 0.5, 6.75, 6.9, (255, 232, 170) if night else (150, 150, 150),
                      emissive=night)
        elif p.kind == "barrier":
            self._box(draw, pose, p.x, p.z, d["heading"], d["length"], d["width"], 0.0, d["height"], (178, 176, 170))
        elif p.kind == "rail":
            self._box(draw, pose, p.x, p.z, d["heading"], d["length"], 0.12, 0.5, 0.8, (170, 172, 178))

    def _building(self, draw, pose, p: _Prop):
        d = p.data
        L, Wd, H = d["length"], d["width"], d["height"]
        # the face towards the road: a box with heading along the road has faces right/left along it
        face = {"right": "left", "left": "right", "cross": None}[d["facing"]]
        decals: dict[str, list] = {}
        rng = np.random.default_rng(d["seed"])
        night = self.tod != "day"
        win_col = (62, 72, 92)
        lit_col = (255, 214, 130)
        faces = [face] if face else ["back", "front"]
        if d["facing"] == "cross":
            # heading 90: its 'back' faces -X and 'front' +X; the road-facing sides are left/right
            faces = ["left", "right"]
        for fname in faces:
            lst = []
            if d["kind"] == "shops":
                lst.append((0.0, 1.0, 0.0, 0.32, (40, 44, 52), False))
                lst.append((0.0, 1.0, 0.32, 0.4, d["awning"], False))
            rows = max(1, int(H / 3.2)) if d["kind"] != "houses" else 1
            cols = max(1, int(L / 3.5))
            rows = min(rows, 10)
            for i in range(rows):
                t0 = (0.45 if d["kind"] == "shops" else 0.25 if d["kind"] == "houses" else 0.08) + i * (0.9 / max(rows, 1))
                if d["kind"] == "shops":
                    t0 = 0.5 + i * 0.45 / rows
                t1 = t0 + (0.45 / rows if d["kind"] == "shops" else 0.5 if d["kind"] == "houses" else 0.55 / rows)
                if t1 > 0.97:
                    continue
                for j in range(cols):
                    s0 = (j + 0.25) / cols
                    s1 = (j + 0.75) / cols
                    is_lit = night and rng.random() < 0.45
                    lst.append((s0, s1, t0, t1, lit_col if is_lit else win_col, is_lit))
            decals[fname] = lst
        roof = tuple(int(c * 0.7) for c in d["color"]) if d["kind"] == "houses" else None
        self._box(draw, pose, p.x, p.z, d["heading"], L, Wd, 0.0, H, d["color"], decals=decals, top_color=roof)
        if d["kind"] == "houses":
            self._box(draw, pose, p.x, p.z, d["heading"], L * 0.9, Wd * 0.6, H, H + 1.8, (95, 60, 50))

    # vehicles ------------------------------------------------------------------------------
    def _draw_vehicle(self, draw, pose, t, v, x, z, hdg):
        L, Wd, H = G.VEHICLE_SIZE[v.type]
        body = COLOR_RGB[v.color]
        cam_c = G.to_camera(np.array([x, 0.0, z]), pose)
        lit = self._headlit(float(cam_c[0]), float(cam_c[2]))
        head_on = self.rec.conditions.headlights_on
        braking = v.brake_lights and (v.maneuver_start_s is None or t >= v.maneuver_start_s) and not (
            v.behavior == "braking" and v.maneuver_end_s is not None and t > v.maneuver_end_s + 3)
        if v.behavior == "accelerating" and v.maneuver_start_s is not None:
            braking = t < v.maneuver_start_s
        tail = (255, 40, 30) if braking else ((200, 30, 25) if head_on else (150, 30, 30))
        tail_emis = braking or head_on
        head = (255, 250, 215) if head_on else (200, 200, 190)
        rear = [(0.04, 0.2, 0.55, 0.8, tail, tail_emis), (0.8, 0.96, 0.55, 0.8, tail, tail_emis),
                (0.38, 0.62, 0.2, 0.42, (225, 225, 210), False)]
        front = [(0.04, 0.2, 0.5, 0.75, head, head_on), (0.8, 0.96, 0.5, 0.75, head, head_on),
                 (0.3, 0.7, 0.15, 0.35, (40, 40, 40), False)]
        dark = (30, 30, 32)
        # running gear
        self._box(draw, pose, x, z, hdg, L * 0.86, Wd * 0.94, 0.0, 0.42, dark, lit=lit)
        t_ = v.type
        fwd = (math.sin(math.radians(hdg)), math.cos(math.radians(hdg)))

        def at(off):
            return x + fwd[0] * off, z + fwd[1] * off

        glass = GLASS
        if t_ in ("sedan", "police_car", "suv"):
            top = 1.05 if t_ != "suv" else 1.15
            self._box(draw, pose, x, z, hdg, L, Wd, 0.3, top, body, decals={"back": rear, "front": front}, lit=lit,
                      face_colors={"left": (255, 255, 255), "right": (255, 255, 255)} if t_ == "police_car" else None)
            cl = L * (0.5 if t_ != "suv" else 0.7)
            cx_, cz_ = at(-0.25 if t_ != "suv" else -0.35)
            win = [(0.08, 0.92, 0.12, 0.88, glass, False)]
            self._box(draw, pose, cx_, cz_, hdg, cl, Wd * 0.9, top, H, body,
                      decals={"back": win, "front": win, "left": [(0.08, 0.92, 0.15, 0.85, glass, False)],
                              "right": [(0.08, 0.92, 0.15, 0.85, glass, False)]}, lit=lit)
            roof_y = H
        elif t_ == "pickup":
            self._box(draw, pose, x, z, hdg, L, Wd, 0.4, 1.2, body, decals={"back": rear, "front": front}, lit=lit)
            cx_, cz_ = at(L * 0.17)
            win = [(0.08, 0.92, 0.15, 0.85, glass, False)]
            self._box(draw, pose, cx_, cz_, hdg, L * 0.38, Wd * 0.95, 1.2, H, body, decals={"back": win, "front": win}, lit=lit)
            roof_y = H
        elif t_ in ("van", "ambulance"):
            stripe = [(0.0, 1.0, 0.42, 0.52, (210, 30, 30), False)] if t_ == "ambulance" else []
            win = [(0.1, 0.9, 0.68, 0.9, glass, False)]
            self._box(draw, pose, x, z, hdg, L, Wd, 0.3, H, body, decals={
                "back": rear + win + stripe, "front": front + [(0.08, 0.92, 0.62, 0.92, glass, False)] + stripe,
                "left": stripe, "right": stripe}, lit=lit)
            roof_y = H
        elif t_ == "bus":
            band = [(0.03, 0.97, 0.55, 0.85, glass, False)]
            self._box(draw, pose, x, z, hdg, L, Wd, 0.35, H, body, decals={
                "back": rear + [(0.15, 0.85, 0.6, 0.85, glass, False)],
                "front": front + [(0.05, 0.95, 0.5, 0.88, glass, False), (0.2, 0.8, 0.9, 0.97, (255, 170, 40), True)],
                "left": band, "right": band}, lit=lit)
            roof_y = H
        elif t_ in ("truck", "fire_truck"):
            cab_l = 2.3
            cx_, cz_ = at(L / 2 - cab_l / 2)
            self._box(draw, pose, cx_, cz_, hdg, cab_l, Wd, 0.4, 2.9, body,
                      decals={"front": front + [(0.08, 0.92, 0.58, 0.9, glass, False)]}, lit=lit)
            bx, bz = at(-cab_l / 2 - 0.1)
            cargo = body if t_ == "fire_truck" else tuple(int(0.55 * c + 0.45 * 235) for c in body)
            stripe = [(0.0, 1.0, 0.3, 0.36, (240, 240, 235), False)] if t_ == "fire_truck" else []
            self._box(draw, pose, bx, bz, hdg, L - cab_l - 0.2, Wd, 0.5, H, cargo,
                      decals={"back": rear + stripe, "left": stripe, "right": stripe}, lit=lit)
            roof_y = 2.9
        else:  # motorcycle
            self._box(draw, pose, x, z, hdg, L, 0.45, 0.25, 0.95, body, decals={"back": rear[:1], "front": front[:1]}, lit=lit)
            rx_, rz_ = at(-0.2)
            self._box(draw, pose, rx_, rz_, hdg, 0.5, 0.55, 0.95, 1.4, (40, 40, 48), lit=lit)
            self._box(draw, pose, rx_, rz_, hdg, 0.3, 0.3, 1.4, H, (20, 20, 20), lit=lit)
            roof_y = H
        if v.emergency_lights:
            phase = int(t * 4) % 2
            lx, lz = at(0.3 if t_ not in ("truck", "fire_truck") else L / 2 - 1.2)
            left_c = (255, 30, 30) if phase == 0 else (60, 20, 20)
            right_c = (30, 60, 255) if phase == 1 else (20, 20, 60)
            if t_ == "fire_truck" or t_ == "ambulance":
                right_c = (255, 30, 30) if phase == 1 else (60, 20, 20)
            deco = [(0.0, 0.5, 0.0, 1.0, left_c, phase == 0), (0.5, 1.0, 0.0, 1.0, right_c, phase == 1)]
            self._box(draw, pose, lx, lz, hdg, 0.35, Wd * 0.8, roof_y, roof_y + 0.2, (40, 40, 40),
                      decals={"back": deco, "front": deco, "left": deco[:1], "right": deco[1:]})
            if self.tod != "day" or self.weather in ("rain", "fog"):
                self._glow(draw, pose, lx, roof_y + 0.1, lz, 0.5, left_c if phase == 0 else right_c)

    # people --------------------------------------------------------------------------------
    def _draw_person(self, draw, pose, t, p, x, z, hdg):
        H = G.PERSON_HEIGHT[p.kind]
        s = H / 1.75
        moving = False
        if p.action == "crossing" and p.cross_start_s is not None:
            moving = p.cross_start_s <= t <= (p.cross_end_s or 1e9)
        elif p.action == "walking":
            moving = True
        cam_c = G.to_camera(np.array([x, 0.0, z]), pose)
        lit = self._headlit(float(cam_c[0]), float(cam_c[2]))
        fwd = (math.sin(math.radians(hdg)), math.cos(math.radians(hdg)))
        right = (fwd[1], -fwd[0])
        swing = 0.18 * s * math.sin(t * 7.0 + _idnum(p.id) % 7) if moving else 0.0
        trousers = (40, 45, 70) if p.kind != "worker" else (50, 60, 90)
        for side_, sw in ((-1, swing), (1, -swing)):
            lx = x + right[0] * 0.1 * s * side_ + fwd[0] * sw
            lz = z + right[1] * 0.1 * s * side_ + fwd[1] * sw
            self._box(draw, pose, lx, lz, hdg, 0.16 * s, 0.15 * s, 0.0, 0.85 * s, trousers, lit=lit)
        shirt = COLOR_RGB[p.shirt_color] if p.kind != "worker" else (255, 120, 10)
        deco = None
        if p.kind == "worker":
            band = [(0.0, 1.0, 0.45, 0.58, (235, 235, 180), False)]
            deco = {"front": band, "back": band, "left": band, "right": band}
        self._box(draw, pose, x, z, hdg, 0.28 * s, 0.48 * s, 0.85 * s, 1.45 * s, shirt, decals=deco, lit=lit)
        self._box(draw, pose, x, z, hdg, 0.22 * s, 0.22 * s, 1.47 * s, 1.75 * s, SKIN, lit=lit,
                  top_color=(255, 250, 240) if p.kind == "worker" else (40, 30, 25))
        if p.carrying == "umbrella":
            self._box(draw, pose, x, z, hdg, 0.03, 0.03, 1.45 * s, 2.0 * s, (30, 30, 30))
            self._box(draw, pose, x, z, hdg, 1.0 * s, 1.0 * s, 2.0 * s, 2.12 * s, (30, 30, 80) if _idnum(p.id) % 2 else (150, 20, 40), lit=lit)
        elif p.carrying == "bag":
            bx = x + right[0] * 0.32 * s
            bz = z + right[1] * 0.32 * s
            self._box(draw, pose, bx, bz, hdg, 0.25 * s, 0.12 * s, 0.7 * s, 1.05 * s, (120, 80, 40), lit=lit)

    def _draw_cyclist(self, draw, pose, t, c, x, z, hdg):
        cam_c = G.to_camera(np.array([x, 0.0, z]), pose)
        lit = self._headlit(float(cam_c[0]), float(cam_c[2]))
        fwd = (math.sin(math.radians(hdg)), math.cos(math.radians(hdg)))
        self._box(draw, pose, x, z, hdg, 1.75, 0.1, 0.0, 0.72, (25, 25, 25), lit=lit)
        self._box(draw, pose, x - fwd[0] * 0.15, z - fwd[1] * 0.15, hdg, 0.3, 0.3, 0.72, 1.0, (40, 45, 70), lit=lit)
        self._box(draw, pose, x, z, hdg, 0.45, 0.45, 1.0, 1.5, COLOR_RGB[c.shirt_color], lit=lit)
        self._box(draw, pose, x + fwd[0] * 0.1, z + fwd[1] * 0.1, hdg, 0.25, 0.24, 1.5, 1.78, SKIN, lit=lit,
                  top_color=(230, 230, 40))
        if self.rec.conditions.headlights_on:
            self._glow(draw, pose, x - fwd[0] * 0.9, 0.8, z - fwd[1] * 0.9, 0.06, (255, 40, 30))

    # infrastructure ------------------------------------------------------------------------
    def _draw_light(self, draw, pose, t, tl):
        state = self.rec.light_state_at(t) or "red"
        x, z = tl.x_m, tl.z_m
        pole = (60, 62, 66)
        heads = [(x, 2.7)]
        self._box(draw, pose, x, z, 0.0, 0.18, 0.18, 0.0, 3.9 if tl.heads == 1 else 6.0, pole)
        if tl.heads == 2:
            med = self.rec.road.median_m
            lane_x = med / 2 + (self.rec.road.lanes_ego_direction - self.rec.road.ego_lane - 0.5) * G.LANE_W
            lane_x += G.road_centre_x(z, self.rec.road.curvature_per_m)
            mid = (x + lane_x) / 2
            self._box(draw, pose, mid, z, 90.0, abs(x - lane_x) + 0.3, 0.15, 5.8, 5.95, pole)
            heads.append((lane_x, 4.45))
        for hx, y0 in heads:
            self._box(draw, pose, hx, z, 0.0, 0.35, 0.55, y0, y0 + 1.4, (35, 35, 30))
            for i, lamp in enumerate(("red", "yellow", "green")):
                yy = y0 + 1.4 - 0.23 - i * 0.47
                on = lamp == state
                rgb = {"red": (255, 40, 35), "yellow": (255, 200, 30), "green": (40, 255, 110)}[lamp]
                if not on:
                    rgb = tuple(int(c * 0.18) + 10 for c in rgb)
                cp = G.to_camera(np.array([[hx, yy, z - 0.19]]), pose)[0]
                if cp[2] < G.NEAR:
                    continue
                u, v = G.project(cp, self.cam)
                r = max(0.7, self.cam.f * 0.19 / cp[2])
                if on and (self.tod != "day" or self.weather in ("fog", "rain")):
                    g = r * 2.2
                    gcol = self._shade(tuple(int(c * 0.55) for c in rgb), float(cp[2]), emissive=True)
                    draw.ellipse([u - g, v - g, u + g, v + g], fill=gcol)
                draw.ellipse([u - r, v - r, u + r, v + r], fill=self._shade(rgb, float(cp[2]), emissive=on))

    def _font(self, px: int):
        px = max(6, min(64, int(px)))
        if px not in self.font_cache:
            try:
                self.font_cache[px] = ImageFont.load_default(size=px)
            except TypeError:  # Pillow < 10.1
                self.font_cache[px] = ImageFont.load_default()
        return self.font_cache[px]

    def _draw_sign(self, draw, pose, t, s):
        x, z = s.x_m, s.distance_m
        self._box(draw, pose, x, z, 0.0, 0.08, 0.08, 0.0, 2.1, (120, 122, 126))
        cp = G.to_camera(np.array([[x, 2.5, z]]), pose)[0]
        if cp[2] < G.NEAR:
            return
        u, v = G.project(cp, self.cam)
        sc = self.cam.f / cp[2]  # pixels per metre
        d = float(cp[2])
        lit = self._headlit(float(cp[0]), d) * 0.6

        def col(rgb):
            return self._shade(rgb, d, 1.0, False, lit)

        text, text_col = None, col((20, 20, 20))
        if s.kind == "stop":
            r = 0.45 * sc
            pts = [(u + r * math.cos(math.pi / 8 + i * math.pi / 4), v + r * math.sin(math.pi / 8 + i * math.pi / 4)) for i in range(8)]
            draw.polygon(pts, fill=col((245, 245, 245)))
            r2 = r * 0.88
            draw.polygon([(u + r2 * math.cos(math.pi / 8 + i * math.pi / 4), v + r2 * math.sin(math.pi / 8 + i * math.pi / 4)) for i in range(8)],
                         fill=col((205, 25, 30)))
            text, text_col = "STOP", col((250, 250, 250))
            tsize = r * 0.55
        elif s.kind == "speed_limit":
            w, h = 0.3 * sc, 0.42 * sc
            draw.rectangle([u - w, v - h, u + w, v + h], fill=col((20, 20, 20)))
            draw.rectangle([u - w * 0.9, v - h * 0.93, u + w * 0.9, v + h * 0.93], fill=col((245, 245, 245)))
            text, tsize = s.text, h * 0.7
        elif s.kind == "yield":
            r = 0.5 * sc
            draw.polygon([(u - r, v - r * 0.6), (u + r, v - r * 0.6), (u, v + r * 0.9)], fill=col((210, 30, 35)))
            r2 = r * 0.6
            draw.polygon([(u - r2, v - r2 * 0.5), (u + r2, v - r2 * 0.5), (u, v + r2 * 0.8)], fill=col((245, 245, 245)))
        elif s.kind == "pedestrian_crossing":
            w = 0.32 * sc
            draw.rectangle([u - w, v - w, u + w, v + w], fill=col((30, 80, 200)))
            draw.polygon([(u - w * 0.7, v + w * 0.6), (u + w * 0.7, v + w * 0.6), (u, v - w * 0.7)], fill=col((245, 245, 245)))
        elif s.kind == "road_work":
            r = 0.48 * sc
            draw.polygon([(u, v - r), (u + r, v), (u, v + r), (u - r, v)], fill=col((250, 140, 20)))
            r2 = r * 0.3
            draw.rectangle([u - r2 * 0.3, v - r2, u + r2 * 0.3, v + r2], fill=col((20, 20, 20)))
        elif s.kind == "no_parking":
            r = 0.32 * sc
            draw.ellipse([u - r, v - r, u + r, v + r], fill=col((210, 30, 35)))
            draw.ellipse([u - r * 0.78, v - r * 0.78, u + r * 0.78, v + r * 0.78], fill=col((30, 80, 200)))
            draw.line([(u - r * 0.55, v - r * 0.55), (u + r * 0.55, v + r * 0.55)], fill=col((210, 30, 35)), width=max(1, int(r * 0.2)))
        if text and tsize >= 7:
            font = self._font(tsize)
            draw.text((u, v), text, fill=text_col, font=font, anchor="mm")

    def _draw_cone(self, draw, pose, t, x, z):
        cp = G.to_camera(np.array([[x, 0.0, z]]), pose)[0]
        if cp[2] < G.NEAR:
            return
        u, v = G.project(cp, self.cam)
        sc = self.cam.f / cp[2]
        d = float(cp[2])
        lit = self._headlit(float(cp[0]), d)
        w, h = 0.2 * sc, 0.75 * sc
        draw.polygon([(u - w, v), (u + w, v), (u + w * 0.2, v - h), (u - w * 0.2, v - h)], fill=self._shade((250, 110, 15), d, 1.0, False, lit))
        draw.polygon([(u - w * 0.62, v - h * 0.42), (u + w * 0.62, v - h * 0.42), (u + w * 0.45, v - h * 0.6), (u - w * 0.45, v - h * 0.6)],
                     fill=self._shade((245, 245, 245), d, 1.0, False, lit))

    # weather -------------------------------------------------------------------------------
    def _rain(self, img: np.ndarray, frame_index: int) -> np.ndarray:
        h, w = img.shape[:2]
        rng = np.random.default_rng((self.rec.scenery_seed * 1000003 + frame_index) % (2**63))
        n = int(0.004 * w * h)
        length = max(3, int(0.06 * h))
        x0 = rng.uniform(0, w, n)
        y0 = rng.uniform(-length, h, n)
        steps = np.arange(length, dtype=np.float32)
        xs = (x0[:, None] - 0.22 * steps[None, :]).astype(np.int64).ravel()
        ys = (y0[:, None] + steps[None, :]).astype(np.int64).ravel()
        ok = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        xs, ys = xs[ok], ys[ok]
        streak = np.array((200, 205, 215), np.float32) if self.tod != "night" else np.array((120, 125, 140), np.float32)
        out = img.astype(np.float32)
        out *= 0.93
        out[ys, xs] = out[ys, xs] * 0.45 + streak * 0.55
        return np.clip(out, 0, 255).astype(np.uint8)


_FACES = (
    ("front", (0, 1, 5, 4)),
    ("back", (2, 3, 7, 6)),
    ("right", (3, 0, 4, 7)),
    ("left", (1, 2, 6, 5)),
    ("top", (4, 5, 6, 7)),
)
_SHADE_F = {"front": 0.92, "back": 0.9, "right": 0.72, "left": 0.72, "top": 1.08}


_EXP_GRID = np.linspace(0.0, 24.0, 9601)
_EXP_TABLE = np.array([math.exp(-x) for x in _EXP_GRID.tolist()])


def _exp_neg(x: np.ndarray) -> np.ndarray:
    """exp(-x) for x >= 0 by linear interpolation in a table made with Python's math.exp.

    Only correctly rounded operations touch the per-pixel arrays, so a frame is bit-identical
    whatever the memory alignment numpy's SIMD loops see (np.exp is not, in the last bit)."""
    return np.interp(x, _EXP_GRID, _EXP_TABLE).astype(np.float32)


def _idnum(oid: str) -> int:
    """A stable small integer from an object id (Python's hash() is salted per process)."""
    return sum((i + 1) * ord(ch) for i, ch in enumerate(oid))


def _clip_near(cp: np.ndarray) -> Optional[np.ndarray]:
    """Clip a polygon (N x 3 camera coords) against forward >= NEAR (Sutherland-Hodgman)."""
    near = G.NEAR
    inside = cp[:, 2] >= near
    if inside.all():
        return cp
    if not inside.any():
        return None
    out = []
    n = len(cp)
    for i in range(n):
        a, b = cp[i], cp[(i + 1) % n]
        ia, ib = a[2] >= near, b[2] >= near
        if ia:
            out.append(a)
        if ia != ib:
            s = (near - a[2]) / (b[2] - a[2])
            out.append(a + s * (b - a))
    if len(out) < 3:
        return None
    return np.array(out)


def render_frames(rec: SceneRecord, width: Optional[int] = None, height: Optional[int] = None) -> Iterator[np.ndarray]:
    """Every frame of the clip (a generator: one frame in memory at a time)."""
    return Renderer(rec, width, height).frames()


def render_frame(rec: SceneRecord, t: float, width: Optional[int] = None, height: Optional[int] = None) -> np.ndarray:
    return Renderer(rec, width, height).frame_at(t, int(round(t * rec.render.fps)))


def render_video(rec: SceneRecord, path, *, crf: float = 23, preset: str = "veryfast") -> None:
    """Encode the clip to H.264 MP4 with avcap.video.write_video (frames streamed).

    x264's macroblock-tree rate control is switched off: with it, this PyAV/x264 build gives
    different bitstreams (and decoded pixels) for identical frames from run to run; without it the
    same record always gives the same file (measured: 12 runs x 4 clips, 64x40 and 320x200)."""

    fps = rec.render.fps
    gop = max(1, int(round(fps)))
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:mbtree=0"  # write_video's GOP settings + mbtree off
    write_video(path, render_frames(rec), fps, gop=gop, crf=crf, preset=preset, options={"x264-params": params})
