"""Camera, world frame and object sizes shared by the world sampler and the renderer.

World frame (metres): the ground is the plane Y = 0; Z runs along the main road in the ego's
direction of travel (the ego camera starts at Z = 0), X to the ego's right. The main road's centre
line (between the two directions) is X = 0, bent by the road curve: centre(Z) = curvature·Z²/2.
The ego's lanes lie at X > 0, oncoming lanes at X < 0. Headings are degrees clockwise from +Z
(0: along the main road, 90: towards +X, i.e. after a right turn, -90 after a left turn, 180:
oncoming).

Camera: pinhole at height CAM_HEIGHT, no pitch/roll, horizon at HORIZON_FRAC of the image height,
focal length FOCAL_FRAC · width (about 78° horizontal field of view, a dash-cam's wide view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LANE_W = 3.5
CAM_HEIGHT = 1.45
HORIZON_FRAC = 0.42
FOCAL_FRAC = 0.62
NEAR = 0.6
CAM_FORWARD = 0.0  # camera position = the car's reference point

# (length, width, height) of each vehicle type, metres
VEHICLE_SIZE: dict[str, tuple[float, float, float]] = {
    "sedan": (4.6, 1.85, 1.45),
    "suv": (4.9, 1.95, 1.8),
    "pickup": (5.4, 2.0, 1.85),
    "van": (5.3, 2.0, 2.4),
    "bus": (12.0, 2.55, 3.2),
    "truck": (8.0, 2.5, 3.5),
    "motorcycle": (2.1, 0.8, 1.55),
    "ambulance": (6.0, 2.2, 2.7),
    "police_car": (4.9, 1.9, 1.55),
    "fire_truck": (9.0, 2.5, 3.3),
}
PERSON_HEIGHT = {"adult": 1.75, "child": 1.15, "worker": 1.8}


@dataclass(frozen=True)
class Camera:
    width: int
    height: int

    @property
    def f(self) -> float:
        return FOCAL_FRAC * self.width

    @property
    def cx(self) -> float:
        return self.width / 2.0

    @property
    def cy(self) -> float:
        return HORIZON_FRAC * self.height

    def half_fov_tan(self) -> float:
        return self.cx / self.f


def pose_at(track: np.ndarray, t: float) -> tuple[float, float, float]:
    """(X, Z, heading_deg) at time t from keyframes `track` (N x 4: t, X, Z, heading_deg); clamps."""
    ts = track[:, 0]
    if t <= ts[0]:
        row = track[0]
        return float(row[1]), float(row[2]), float(row[3])
    if t >= ts[-1]:
        row = track[-1]
        return float(row[1]), float(row[2]), float(row[3])
    i = int(np.searchsorted(ts, t, side="right")) - 1
    t0, t1 = ts[i], ts[i + 1]
    a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
    r = track[i] * (1 - a) + track[i + 1] * a
    return float(r[1]), float(r[2]), float(r[3])


def to_camera(points: np.ndarray, pose: tuple[float, float, float]) -> np.ndarray:
    """World points (..., 3: X, Y, Z) -> camera coordinates (..., 3: right, up, forward)."""
    xc, zc, hdg = pose
    psi = math.radians(hdg)
    c, s = math.cos(psi), math.sin(psi)
    dx = points[..., 0] - xc
    dz = points[..., 2] - zc
    right = dx * c - dz * s
    fwd = dx * s + dz * c
    up = points[..., 1] - CAM_HEIGHT
    return np.stack([right, up, fwd], axis=-1)


def project(cam_pts: np.ndarray, cam: Camera) -> np.ndarray:
    """Camera coordinates (..., 3) with forward > 0 -> pixel coordinates (..., 2)."""
    z = cam_pts[..., 2]
    u = cam.cx + cam.f * cam_pts[..., 0] / z
    v = cam.cy - cam.f * cam_pts[..., 1] / z
    return np.stack([u, v], axis=-1)


def box_corners(x: float, z: float, heading_deg: float, length: float, width: float, y0: float, y1: float) -> np.ndarray:
    """8 world corners of an upright box centred at (x, z) on the ground, long axis along heading."""
    psi = math.radians(heading_deg)
    fx, fz = math.sin(psi), math.cos(psi)  # forward
    rx, rz = math.cos(psi), -math.sin(psi)  # right
    out = []
    for y in (y0, y1):
        for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1)):
            out.append(
                (x + a * fx * length / 2 + b * rx * width / 2, y, z + a * fz * length / 2 + b * rz * width / 2)
            )
    return np.array(out, dtype=np.float64)


def screen_box(
    corners_world: np.ndarray, pose: tuple[float, float, float], cam: Camera
) -> tuple[float, float, float, float, float] | None:
    """Pixel bounding box (x1, y1, x2, y2) of world points, clipped to the image, and the nearest
    forward distance; None if entirely behind the near plane or off screen."""
    cp = to_camera(corners_world, pose)
    front = cp[cp[:, 2] > NEAR]
    if len(front) == 0:
        return None
    if len(front) < len(cp):
        # points behind the camera: treat as far to the side (conservative: clip to the edges)
        pass
    uv = project(front, cam)
    x1, y1 = float(uv[:, 0].min()), float(uv[:, 1].min())
    x2, y2 = float(uv[:, 0].max()), float(uv[:, 1].max())
    x1, x2 = max(0.0, x1), min(float(cam.width), x2)
    y1, y2 = max(0.0, y1), min(float(cam.height), y2)
    if x2 - x1 < 0.5 or y2 - y1 < 0.5:
        return None
    return x1, y1, x2, y2, float(front[:, 2].min())


def road_centre_x(z, curvature: float):
    return 0.5 * curvature * z * z


def road_heading_deg(z: float, curvature: float) -> float:
    return math.degrees(math.atan(curvature * z))
