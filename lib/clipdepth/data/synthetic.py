"""Procedural RGB-D scenes with exact metric depth: the offline stand-in for NYU and KITTI.

The demo profile must run without downloads, yet the whole pipeline (readers, augmentation, model,
metrics) should be exercised on images whose depth is *predictable from the pixels*. So scenes are
ray cast in numpy (one vectorised pass over all pixels per object, restricted to the object's
projected bounding rectangle) and carry the monocular cues a depth network uses:

* perspective: world-space textures (tiles, planks, stripes, windows, lane dashes) whose apparent
  size shrinks with distance, a ground plane converging to a horizon, objects resting on the floor;
* shading: Lambertian surfaces lit by a ceiling lamp and a weak light at the camera, both falling off
  with the squared distance (indoor); sun and sky light with aerial haze growing with distance
  (outdoor);
* occlusion between furniture, cars and buildings.

Families:

``indoor`` (NYU-like, 480x640, NYU intrinsics): a box room (walls, floor, ceiling) with cabinets,
tables, beds, chairs, pictures and doors; depth about 0.5-10 m (pixels farther than 10 m get no
ground truth, like the Kinect).

``outdoor`` (KITTI-like, 375x1242, KITTI intrinsics, camera 1.65 m above the road): road with lane
markings, sidewalks, building facades with windows, box cars, poles and trees; the sky has no ground
truth (0) and neither does anything beyond 80 m. ``lidar=True`` keeps only pixels on the scan lines of
a 64-beam LiDAR (elevations -24.8 to +2 degrees), like KITTI's sparse ground truth.

Depth is the z-depth in the camera frame (what Kinect and projected LiDAR give). Every frame is a
pure function of (family, seed, index): the random generator is seeded with those three, so the same
call gives the same bytes. ``size`` renders a smaller frame of the *same* scene (intrinsics scaled).

:func:`write_synthetic_dataset` writes frames in the real NYU (BTS) or KITTI (Eigen/BTS) layouts
with matching split lists and a manifest, so the demo reads them with :class:`NYUDepthV2` /
:class:`KITTIEigen`. Test frames use indices from :data:`TEST_INDEX_OFFSET` on, so the test set does
not change when the number of training frames does. For reduced KITTI-like sizes, prefer multiples
of 32: the KITTI reader crops frames smaller than 352x1216 to the largest multiple of 32 (bottom
aligned, centred), see :func:`clipdepth.data.kitti.kb_crop_size`.

Long because: it is one renderer; the camera, the ray tracer, the shading and the two scene families
share private scene types (``_Scene``, ``_Box``, ``_Material``) that splitting would make public for
no reader's benefit. Sections follow the rendering order.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clipdepth._files import clean_stale_temporaries, file_lock, make_temp_dir
from clipdepth.data.common import MANIFEST_NAME, Sample, read_manifest, sha256_file, write_depth_png
from clipdepth.data.nyu import encode_jpeg
from clipdepth.data.specs import KITTI, NYU
from clipdepth.data.splits import split_name

__all__ = [
    "FAMILIES",
    "FULL_SIZE",
    "TEST_INDEX_OFFSET",
    "GENERATOR_VERSION",
    "render",
    "render_indoor",
    "render_outdoor",
    "write_synthetic_dataset",
    "ensure_synthetic_dataset",
]

FAMILIES = ("indoor", "outdoor")
FULL_SIZE: dict[str, tuple[int, int]] = {"indoor": (480, 640), "outdoor": (375, 1242)}
#: Test frames are rendered with index TEST_INDEX_OFFSET + j, disjoint from training indices.
TEST_INDEX_OFFSET = 1_000_000
#: Bumped whenever the rendering changes, so cached datasets are regenerated.
GENERATOR_VERSION = 1

_FAMILY_ID = {"indoor": 0, "outdoor": 1}
# Intrinsics at full size (fx, fy, cx, cy): NYU Kinect colour camera, KITTI camera 02 (2011_09_26).
_INTRINSICS = {
    "indoor": (518.8579, 519.4696, 325.5824, 253.7362),
    "outdoor": (721.5377, 721.5377, 609.5593, 172.8540),
}
_F32 = np.float32

# Pattern ids of the materials.
_PLAIN, _CHECKER, _STRIPES, _PLANKS, _WINDOWS = range(5)


def _rng(family: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([_FAMILY_ID[family], int(seed), int(index), GENERATOR_VERSION])


def _rot_y(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass
class _Camera:
    """Pinhole camera; ``R`` maps camera (x right, y down, z forward) to world (x right, y up, z fwd)."""

    fx: float
    fy: float
    cx: float
    cy: float
    R: np.ndarray
    origin: np.ndarray
    height: int
    width: int

    @classmethod
    def make(
        cls, family: str, size: tuple[int, int], yaw: float, pitch: float, roll: float, origin: np.ndarray
    ) -> _Camera:
        full_h, full_w = FULL_SIZE[family]
        h, w = size
        fx, fy, cx, cy = _INTRINSICS[family]
        sx, sy = w / full_w, h / full_h
        cp, sp = np.cos(pitch), np.sin(pitch)
        cr, sr = np.cos(roll), np.sin(roll)
        rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
        rz = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
        flip = np.diag([1.0, -1.0, 1.0])
        R = _rot_y(yaw) @ rx @ rz @ flip
        return cls(fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5, R, origin, h, w)

    def rays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World ray directions (unnormalised, camera-z component 1, so ray parameter = z-depth)."""
        xs = ((np.arange(self.width, dtype=np.float64) - self.cx) / self.fx)[None, :]
        ys = ((np.arange(self.height, dtype=np.float64) - self.cy) / self.fy)[:, None]
        R = self.R
        dx = (R[0, 0] * xs + R[0, 1] * ys + R[0, 2]).astype(_F32)
        dy = (R[1, 0] * xs + R[1, 1] * ys + R[1, 2]).astype(_F32)
        dz = (R[2, 0] * xs + R[2, 1] * ys + R[2, 2]).astype(_F32)
        return dx, dy, dz

    def window(self, corners: np.ndarray) -> tuple[int, int, int, int] | None:
        """Pixel rectangle (r0, r1, c0, c1) covering the projection of world points; None if off-screen."""
        cam = (corners - self.origin) @ self.R  # rows: R^T (p - o)
        if np.all(cam[:, 2] < 0.05):  # entirely behind the camera
            return None
        if np.any(cam[:, 2] < 0.05):  # crosses the camera plane: no tight bound, test every pixel
            return 0, self.height, 0, self.width
        u = self.fx * cam[:, 0] / cam[:, 2] + self.cx
        v = self.fy * cam[:, 1] / cam[:, 2] + self.cy
        c0, c1 = int(np.floor(u.min())) - 1, int(np.ceil(u.max())) + 2
        r0, r1 = int(np.floor(v.min())) - 1, int(np.ceil(v.max())) + 2
        c0, c1 = max(c0, 0), min(c1, self.width)
        r0, r1 = max(r0, 0), min(r1, self.height)
        if c0 >= c1 or r0 >= r1:
            return None
        return r0, r1, c0, c1


@dataclass
class _Material:
    colour1: tuple[float, float, float]
    colour2: tuple[float, float, float]
    pattern: int = _PLAIN
    period: float = 1.0
    noise: float = 0.15
    noise_scale: float = 0.3


@dataclass
class _Box:
    """Box with centre, half extents and yaw about the world y axis."""

    centre: np.ndarray
    half: np.ndarray
    yaw: float
    material: _Material

    def corners(self) -> np.ndarray:
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        return (signs * self.half) @ _rot_y(self.yaw).T + self.centre


@dataclass
class _Scene:
    camera: _Camera
    boxes: list[_Box] = field(default_factory=list)
    room: tuple[np.ndarray, np.ndarray] | None = None  # (lo, hi) corners of the room interior
    room_materials: list[_Material] = field(default_factory=list)  # 6: -x, +x, floor, ceiling, -z, +z
    ground: _Material | None = None  # outdoor ground plane y = 0 (road etc.)


# ---------------------------------------------------------------------------------------------
# Ray casting
# ---------------------------------------------------------------------------------------------


def _trace(scene: _Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Nearest hit per pixel: (t, surface id, face axis 0/1/2, face sign), -1 id where nothing is hit."""
    cam = scene.camera
    dx, dy, dz = cam.rays()
    shape = dx.shape
    t = np.full(shape, np.inf, dtype=_F32)
    sid = np.full(shape, -1, dtype=np.int16)
    axis = np.zeros(shape, dtype=np.int8)
    sign = np.ones(shape, dtype=np.int8)
    o = cam.origin.astype(_F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if scene.room is not None:
            lo, hi = (a.astype(_F32) for a in scene.room)
            ts = []
            for k, d in enumerate((dx, dy, dz)):
                # distance to the wall the ray heads for; a ray parallel to both walls never exits there
                ts.append(np.where(d > 0, (hi[k] - o[k]) / d, np.where(d < 0, (lo[k] - o[k]) / d, np.inf)))
            tt = np.stack(ts)
            ax = np.argmin(tt, axis=0).astype(np.int8)
            t = np.take_along_axis(tt, ax[None].astype(np.int64), 0)[0]
            dsel = np.choose(ax, (dx, dy, dz))
            axis = ax
            sign = np.where(dsel > 0, -1, 1).astype(np.int8)
            # surface ids 0..5 in the order x-lo, x-hi, floor, ceiling, z-lo, z-hi
            sid = (2 * ax + (dsel > 0)).astype(np.int16)
        if scene.ground is not None:
            tg = np.where(dy < 0, -o[1] / dy, np.inf).astype(_F32)
            hit = tg < t
            t = np.where(hit, tg, t)
            sid = np.where(hit, 0, sid).astype(np.int16)
            axis = np.where(hit, 1, axis).astype(np.int8)
            sign = np.where(hit, 1, sign).astype(np.int8)
        first_box = 6 if scene.room is not None else 1
        for b, box in enumerate(scene.boxes):
            win = cam.window(box.corners())
            if win is None:
                continue
            r0, r1, c0, c1 = win
            wx, wy, wz = dx[r0:r1, c0:c1], dy[r0:r1, c0:c1], dz[r0:r1, c0:c1]
            c, s = np.cos(box.yaw), np.sin(box.yaw)
            rel = cam.origin - box.centre
            # local = Ry(-yaw) (world): x' = c x - s z, z' = s x + c z
            ol = np.array([c * rel[0] - s * rel[2], rel[1], s * rel[0] + c * rel[2]], dtype=_F32)
            lx = _F32(c) * wx - _F32(s) * wz
            lz = _F32(s) * wx + _F32(c) * wz
            half = box.half.astype(_F32)
            tmins, tmaxs = [], []
            for k, d in enumerate((lx, wy, lz)):
                inv = _F32(1.0) / d
                t1 = (-half[k] - ol[k]) * inv
                t2 = (half[k] - ol[k]) * inv
                tmins.append(np.minimum(t1, t2))
                tmaxs.append(np.maximum(t1, t2))
            tnear = np.maximum(np.maximum(tmins[0], tmins[1]), tmins[2])
            tfar = np.minimum(np.minimum(tmaxs[0], tmaxs[1]), tmaxs[2])
            tw = t[r0:r1, c0:c1]
            hit = (tnear <= tfar) & (tnear > 1e-4) & (tnear < tw)
            if not hit.any():
                continue
            ax = np.where(
                tmins[0] >= tmins[1],
                np.where(tmins[0] >= tmins[2], 0, 2),
                np.where(tmins[1] >= tmins[2], 1, 2),
            ).astype(np.int8)
            dsel = np.choose(ax, (lx, wy, lz))
            t[r0:r1, c0:c1] = np.where(hit, tnear, tw)
            sid[r0:r1, c0:c1] = np.where(hit, first_box + b, sid[r0:r1, c0:c1])
            axis[r0:r1, c0:c1] = np.where(hit, ax, axis[r0:r1, c0:c1])
            sign[r0:r1, c0:c1] = np.where(hit, np.where(dsel > 0, -1, 1), sign[r0:r1, c0:c1])
    return t, sid, axis, sign, (dx, dy, dz)


def _surface_tables(scene: _Scene) -> tuple[list[_Material], np.ndarray, np.ndarray]:
    """Materials, centres (n, 3) and yaws (n,) indexed by surface id."""
    if scene.room is not None:
        mats = list(scene.room_materials)
        centres = [np.zeros(3)] * 6
        yaws = [0.0] * 6
    else:
        mats = [scene.ground] if scene.ground is not None else [_Material((0, 0, 0), (0, 0, 0))]
        centres, yaws = [np.zeros(3)], [0.0]
    for box in scene.boxes:
        mats.append(box.material)
        centres.append(box.centre)
        yaws.append(box.yaw)
    return mats, np.array(centres, dtype=_F32), np.array(yaws, dtype=_F32)


def _value_noise(x: np.ndarray, y: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1] from a 64x64 random lattice (wraps every 64 units)."""
    xf, yf = np.floor(x), np.floor(y)
    fx, fy = x - xf, y - yf
    fx = fx * fx * (_F32(3) - _F32(2) * fx)
    fy = fy * fy * (_F32(3) - _F32(2) * fy)
    xi = xf.astype(np.int32) & 63
    yi = yf.astype(np.int32) & 63
    xj, yj = (xi + 1) & 63, (yi + 1) & 63
    a, b = table[yi, xi], table[yi, xj]
    c, d = table[yj, xi], table[yj, xj]
    top = a + (b - a) * fx
    bot = c + (d - c) * fx
    return top + (bot - top) * fy


def _albedo(scene: _Scene, t, sid, axis, sign, rays, table) -> tuple[np.ndarray, ...]:
    """Albedo (H, W, 3), world normal components, hit point and texture coordinates per pixel."""
    cam = scene.camera
    dx, dy, dz = rays
    mats, centres, yaws = _surface_tables(scene)
    s = np.maximum(sid, 0).astype(np.int64)
    o = cam.origin.astype(_F32)
    tf = np.where(np.isfinite(t), t, 0).astype(_F32)
    px, py, pz = o[0] + tf * dx, o[1] + tf * dy, o[2] + tf * dz
    cy_, sy_ = np.cos(yaws)[s], np.sin(yaws)[s]
    rx, ry, rz = px - centres[s, 0], py - centres[s, 1], pz - centres[s, 2]
    lx = cy_ * rx - sy_ * rz
    lz = sy_ * rx + cy_ * rz
    u = np.where(axis == 0, lz, lx)
    v = np.where(axis == 1, lz, ry)
    # world normal = Ry(yaw) (sign * e_axis)
    sg = sign.astype(_F32)
    nx = sg * np.where(axis == 0, cy_, np.where(axis == 2, sy_, _F32(0)))
    ny = sg * (axis == 1).astype(_F32)
    nz = sg * np.where(axis == 0, -sy_, np.where(axis == 2, cy_, _F32(0)))

    c1 = np.array([m.colour1 for m in mats], dtype=_F32)[s]
    c2 = np.array([m.colour2 for m in mats], dtype=_F32)[s]
    pat = np.array([m.pattern for m in mats], dtype=np.int8)[s]
    per = np.array([m.period for m in mats], dtype=_F32)[s]
    namp = np.array([m.noise for m in mats], dtype=_F32)[s]
    nsc = np.array([m.noise_scale for m in mats], dtype=_F32)[s]
    offs = (np.arange(len(mats), dtype=_F32) * _F32(17.31))[s]

    fu, fv = u / per, v / per
    iu, iv = np.floor(fu), np.floor(fv)
    checker = (iu + iv).astype(np.int32) & 1
    stripes = iu.astype(np.int32) & 1
    planks_shade = table[iv.astype(np.int32) & 63, 5]
    seam = (fv - iv) < _F32(0.06)
    gu, gv = fu - iu, (v / (per * _F32(1.3)))
    gv = gv - np.floor(gv)
    windows = (gu > _F32(0.25)) & (gu < _F32(0.75)) & (gv > _F32(0.3)) & (gv < _F32(0.8))
    mix = np.select(
        [pat == _CHECKER, pat == _STRIPES, pat == _PLANKS, pat == _WINDOWS],
        [
            checker.astype(_F32),
            stripes.astype(_F32),
            np.where(seam, _F32(1), planks_shade * _F32(0.6)),
            windows.astype(_F32),
        ],
        default=_F32(0),
    ).astype(_F32)
    n1 = _value_noise(u / nsc + offs, v / nsc, table)
    n2 = _value_noise(u / (nsc * _F32(0.23)) - offs, v / (nsc * _F32(0.23)), table)
    grain = _F32(1) + namp * ((n1 - _F32(0.5)) + _F32(0.5) * (n2 - _F32(0.5)))
    albedo = (c1 + (c2 - c1) * mix[..., None]) * grain[..., None]
    return albedo, (nx, ny, nz), (px, py, pz), (u, v)


def _to_image(radiance: np.ndarray) -> np.ndarray:
    """Linear radiance to display values in [0, 1]: soft exposure curve then gamma 2.2, float32.

    The curve ``1 - exp(-1.5 x)`` saturates smoothly instead of clipping, so brightly lit near
    surfaces keep their shading gradient (a depth cue) rather than turning flat white.
    """
    toned = _F32(1) - np.exp(-_F32(1.5) * np.maximum(radiance, 0))
    return np.power(toned, _F32(1 / 2.2)).astype(_F32)


# ---------------------------------------------------------------------------------------------
# Indoor family
# ---------------------------------------------------------------------------------------------


def _colour(rng: np.random.Generator, hue_range=(0.0, 1.0), sat=(0.1, 0.5), val=(0.4, 0.9)):
    import colorsys

    h = rng.uniform(*hue_range) % 1.0
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)))


def _shade_variant(c: tuple[float, float, float], factor: float) -> tuple[float, float, float]:
    return tuple(float(min(1.0, x * factor)) for x in c)


def _indoor_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[_Scene, dict]:
    width = rng.uniform(3.0, 6.5)
    depth = rng.uniform(4.0, 9.5)
    height = rng.uniform(2.4, 3.1)
    lo = np.array([-width / 2, 0.0, 0.0])
    hi = np.array([width / 2, height, depth])
    cam_pos = np.array([rng.uniform(-0.3, 0.3) * width, rng.uniform(1.1, 1.6), rng.uniform(0.15, 0.6)])
    yaw = rng.uniform(-0.35, 0.35)
    pitch = rng.uniform(0.05, 0.5)
    roll = rng.uniform(-0.04, 0.04)
    cam = _Camera.make("indoor", size, yaw, pitch, roll, cam_pos)

    wall = _colour(rng, sat=(0.05, 0.35), val=(0.55, 0.9))
    wall_pat = int(rng.choice([_PLAIN, _STRIPES, _PLAIN]))
    walls = _Material(
        wall,
        _shade_variant(wall, rng.uniform(0.75, 0.9)),
        wall_pat,
        rng.uniform(0.08, 0.3),
        0.08,
        rng.uniform(0.2, 0.6),
    )
    floor_pat = int(rng.choice([_CHECKER, _PLANKS]))
    floor_c = _colour(rng, hue_range=(0.02, 0.12), sat=(0.2, 0.6), val=(0.3, 0.7))
    floor = _Material(
        floor_c,
        _shade_variant(floor_c, rng.uniform(0.5, 0.8)),
        floor_pat,
        rng.uniform(0.15, 0.6),
        0.25,
        rng.uniform(0.05, 0.2),
    )
    ceiling = _Material((0.92, 0.92, 0.9), (0.85, 0.85, 0.83), _PLAIN, 1.0, 0.04, 0.5)
    back = walls
    if rng.random() < 0.5:
        accent = _colour(rng, sat=(0.2, 0.6), val=(0.5, 0.85))
        back = _Material(accent, _shade_variant(accent, 0.85), wall_pat, walls.period, 0.08, 0.4)
    scene = _Scene(cam, room=(lo, hi), room_materials=[walls, walls, floor, ceiling, walls, back])

    def add(centre, half, yaw_, mat):
        scene.boxes.append(_Box(np.asarray(centre, float), np.asarray(half, float), float(yaw_), mat))

    def wood():
        c = _colour(rng, hue_range=(0.03, 0.11), sat=(0.3, 0.7), val=(0.25, 0.75))
        return _Material(c, _shade_variant(c, 0.7), _PLANKS, rng.uniform(0.05, 0.2), 0.3, 0.05)

    def fabric():
        c = _colour(rng, sat=(0.2, 0.8), val=(0.3, 0.85))
        return _Material(
            c, _shade_variant(c, 0.8), int(rng.choice([_PLAIN, _CHECKER])), rng.uniform(0.05, 0.15), 0.2, 0.03
        )

    def against_wall(w, d):
        """Position and yaw of a w x d footprint against a random wall (left, right or back)."""
        side = int(rng.integers(0, 3))
        if side == 2:  # back wall
            x = rng.uniform(lo[0] + w / 2, hi[0] - w / 2)
            return np.array([x, hi[2] - d / 2 - 0.01]), 0.0
        z = rng.uniform(max(cam_pos[2] + 1.2, lo[2] + w / 2), max(hi[2] - w / 2, cam_pos[2] + 1.3))
        x = lo[0] + d / 2 + 0.01 if side == 0 else hi[0] - d / 2 - 0.01
        return np.array([x, z]), np.pi / 2

    n_items = int(rng.integers(4, 9))
    for _ in range(n_items):
        kind = rng.choice(
            ["cabinet", "table", "bed", "chair", "picture", "door", "shelf"],
            p=[0.2, 0.2, 0.12, 0.16, 0.16, 0.06, 0.1],
        )
        if kind in ("cabinet", "shelf", "bed"):
            if kind == "cabinet":
                w, d, h = rng.uniform(0.6, 1.6), rng.uniform(0.4, 0.6), rng.uniform(0.7, 1.2)
            elif kind == "shelf":
                w, d, h = rng.uniform(0.6, 1.2), rng.uniform(0.3, 0.4), rng.uniform(1.6, 2.2)
            else:
                w, d, h = rng.uniform(1.8, 2.1), rng.uniform(0.9, 1.6), rng.uniform(0.4, 0.6)
            (x, z), yw = against_wall(w, d)
            add([x, h / 2, z], [w / 2, h / 2, d / 2], yw, fabric() if kind == "bed" else wood())
        elif kind in ("table", "chair"):
            x = rng.uniform(lo[0] + 0.6, hi[0] - 0.6)
            z = rng.uniform(cam_pos[2] + 0.8, hi[2] - 0.6)
            yw = rng.uniform(-0.5, 0.5)
            if kind == "table":
                w, d, h = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.7, 0.78)
                mat = wood()
            else:
                w, d, h = 0.45, 0.45, 0.45
                mat = fabric()
            add([x, h - 0.025, z], [w / 2, 0.025, d / 2], yw, mat)
            rot = _rot_y(yw)
            for sx in (-1, 1):
                for sz in (-1, 1):
                    leg = rot @ np.array([sx * (w / 2 - 0.04), 0.0, sz * (d / 2 - 0.04)])
                    add([x + leg[0], (h - 0.05) / 2, z + leg[2]], [0.025, (h - 0.05) / 2, 0.025], yw, mat)
            if kind == "chair":
                back_off = rot @ np.array([0.0, 0.0, d / 2 - 0.02])
                add([x + back_off[0], h + 0.25, z + back_off[2]], [w / 2, 0.25, 0.02], yw, mat)
        else:  # picture or door: thin box on a wall
            if kind == "picture":
                w, h, y = rng.uniform(0.4, 1.2), rng.uniform(0.3, 0.9), rng.uniform(1.3, 1.8)
                c = _colour(rng, sat=(0.3, 0.9), val=(0.2, 0.9))
                mat = _Material(
                    c,
                    _colour(rng, sat=(0.3, 0.9), val=(0.2, 0.9)),
                    int(rng.choice([_STRIPES, _CHECKER, _PLAIN])),
                    rng.uniform(0.05, 0.2),
                    0.3,
                    0.1,
                )
            else:
                w, h = 0.9, 2.05
                y = h / 2
                mat = wood()
            (x, z), yw = against_wall(w, 0.04)
            add([x, y, z], [w / 2, h / 2, 0.02], yw, mat)

    light = np.array(
        [rng.uniform(lo[0] + 0.5, hi[0] - 0.5), height - 0.15, rng.uniform(depth * 0.3, depth * 0.7)]
    )
    params = {
        "light": light,
        "lamp_power": rng.uniform(1.5, 3.0),
        "flash_power": rng.uniform(2.5, 4.0),
        "ambient": rng.uniform(0.03, 0.07),
        "exposure": rng.uniform(0.8, 1.1),
    }
    return scene, params


def render_indoor(seed: int, index: int, size: tuple[int, int] | None = None) -> Sample:
    """Render indoor frame ``index`` of stream ``seed`` (see module docstring)."""
    size = _check_size("indoor", size)
    rng = _rng("indoor", seed, index)
    scene, prm = _indoor_scene(rng, size)
    table = rng.random((64, 64)).astype(_F32)
    t, sid, axis, sign, rays = _trace(scene)
    albedo, (nx, ny, nz), (px, py, pz), _ = _albedo(scene, t, sid, axis, sign, rays, table)
    lx, ly, lz = (prm["light"][k] - p for k, p in enumerate((px, py, pz)))
    d2 = lx * lx + ly * ly + lz * lz
    inv_d = _F32(1) / np.sqrt(d2)
    lamp = np.maximum(nx * lx + ny * ly + nz * lz, 0) * inv_d * _F32(prm["lamp_power"]) / (d2 + _F32(0.3))
    dx, dy, dz = rays
    dn = np.sqrt(dx * dx + dy * dy + dz * dz)
    dist2 = (t * dn) ** 2
    flash = (
        np.maximum(-(nx * dx + ny * dy + nz * dz) / dn, 0) * _F32(prm["flash_power"]) / (dist2 + _F32(0.5))
    )
    light = _F32(prm["ambient"]) + lamp + flash
    image = _to_image(_F32(prm["exposure"]) * albedo * light[..., None])
    depth = np.where(np.isfinite(t) & (t <= NYU.max_depth), t, 0).astype(_F32)
    fx = scene.camera.fx
    return Sample(image=image, depth=depth, name=f"synth_indoor/{seed}/{index}", focal=float(fx))


# ---------------------------------------------------------------------------------------------
# Outdoor family
# ---------------------------------------------------------------------------------------------


def _outdoor_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[_Scene, dict]:
    road_half = rng.uniform(3.5, 7.0)
    walk = rng.uniform(1.5, 3.5)
    cam_x = rng.uniform(-0.4, 0.4) * road_half
    cam = _Camera.make(
        "outdoor",
        size,
        rng.uniform(-0.05, 0.05),
        rng.uniform(-0.02, 0.03),
        rng.uniform(-0.01, 0.01),
        np.array([cam_x, 1.65, 0.0]),
    )
    asphalt = rng.uniform(0.25, 0.4)
    ground = _Material((asphalt, asphalt, asphalt * 1.03), (0.85, 0.85, 0.8), _PLAIN, 1.0, 0.35, 0.3)
    scene = _Scene(cam, ground=ground)

    def add(centre, half, yaw_, mat):
        scene.boxes.append(_Box(np.asarray(centre, float), np.asarray(half, float), float(yaw_), mat))

    # facades on both sides, as a sequence of blocks with setbacks and gaps
    for side in (-1.0, 1.0):
        z = rng.uniform(-6.0, 2.0)
        while z < 140.0:
            length = rng.uniform(8.0, 25.0)
            setback = road_half + walk + rng.uniform(0.0, 3.0)
            bdepth = rng.uniform(8.0, 15.0)
            h = rng.uniform(5.0, 20.0)
            c = _colour(rng, hue_range=(0.0, 0.15), sat=(0.05, 0.4), val=(0.45, 0.9))
            glass = _colour(rng, hue_range=(0.5, 0.65), sat=(0.2, 0.5), val=(0.15, 0.35))
            mat = _Material(c, glass, _WINDOWS, rng.uniform(2.5, 3.6), 0.12, 0.6)
            add(
                [side * (setback + bdepth / 2), h / 2, z + length / 2],
                [bdepth / 2, h / 2, length / 2],
                0.0,
                mat,
            )
            z += length + (rng.uniform(2.0, 6.0) if rng.random() < 0.3 else 0.0)
        # trees and poles on the sidewalk
        for _ in range(int(rng.integers(2, 7))):
            zt = rng.uniform(4.0, 90.0)
            xt = side * (road_half + rng.uniform(0.4, walk - 0.2))
            if rng.random() < 0.5:
                pole = _Material((0.45, 0.45, 0.47), (0.3, 0.3, 0.3), _PLAIN, 1.0, 0.1, 0.5)
                add([xt, 2.0, zt], [0.06, 2.0, 0.06], 0.0, pole)
            else:
                trunk = _Material((0.3, 0.22, 0.15), (0.2, 0.15, 0.1), _PLAIN, 1.0, 0.3, 0.05)
                leaves = _colour(rng, hue_range=(0.2, 0.35), sat=(0.4, 0.8), val=(0.25, 0.55))
                crown = _Material(leaves, _shade_variant(leaves, 0.6), _PLAIN, 1.0, 0.8, 0.15)
                th = rng.uniform(1.8, 3.0)
                add([xt, th / 2, zt], [0.12, th / 2, 0.12], 0.0, trunk)
                r = rng.uniform(0.9, 1.8)
                add([xt, th + r * 0.8, zt], [r, r * 0.8, r], rng.uniform(0, 1.5), crown)
    # cars: in lanes and parked along the kerbs
    for _ in range(int(rng.integers(3, 9))):
        zc = rng.uniform(5.0, 70.0)
        if rng.random() < 0.5:
            xc = rng.choice([-1.0, 1.0]) * (road_half - 1.1)
            yw = rng.uniform(-0.05, 0.05)
        else:
            xc = rng.uniform(-road_half + 1.2, road_half - 1.2)
            yw = rng.uniform(-0.15, 0.15)
        if abs(xc - cam_x) < 1.3 and zc < 8.0:
            zc += 8.0
        body_c = _colour(rng, sat=(0.3, 0.9), val=(0.25, 0.95))
        body = _Material(body_c, _shade_variant(body_c, 0.6), _PLAIN, 1.0, 0.05, 0.5)
        glass = _Material((0.08, 0.1, 0.12), (0.15, 0.17, 0.2), _STRIPES, 0.6, 0.1, 0.5)
        length, wdt = rng.uniform(3.8, 4.8), rng.uniform(1.65, 1.85)
        add([xc, 0.2 + 0.35, zc], [wdt / 2, 0.35, length / 2], yw, body)
        add([xc, 0.9 + 0.27, zc - 0.2], [wdt / 2 * 0.9, 0.27, length / 2 * 0.55], yw, glass)

    elev = rng.uniform(0.4, 1.0)
    azim = rng.uniform(0, 2 * np.pi)
    sun = np.array([np.cos(elev) * np.sin(azim), np.sin(elev), np.cos(elev) * np.cos(azim)])
    params = {
        "road_half": road_half,
        "walk": walk,
        "lane_w": rng.uniform(3.0, 3.6),
        "sun": sun,
        "sun_power": rng.uniform(0.8, 1.2),
        "ambient": rng.uniform(0.3, 0.45),
        "haze": rng.uniform(120.0, 300.0),
        "sky_top": np.array(_colour(rng, hue_range=(0.55, 0.62), sat=(0.3, 0.6), val=(0.7, 0.95))),
        "sky_horizon": np.array(_colour(rng, hue_range=(0.55, 0.62), sat=(0.05, 0.2), val=(0.85, 1.0))),
        "exposure": rng.uniform(0.85, 1.05),
    }
    return scene, params


def _lidar_mask(rays, t: np.ndarray, rng_table: np.ndarray) -> np.ndarray:
    """Pixels on the scan lines of a 64-beam LiDAR at the camera (-24.8 to +2 deg), 5% dropout."""
    dx, dy, dz = rays
    elev = np.degrees(np.arctan2(dy, np.sqrt(dx * dx + dz * dz)))
    step = (2.0 + 24.8) / 63.0
    beam = np.floor((elev + 24.8) / step + 0.5)
    cross = np.zeros(t.shape, dtype=bool)
    cross[1:] = beam[1:] != beam[:-1]
    in_fov = (elev >= -24.8 - step / 2) & (elev <= 2.0 + step / 2)
    h, w = t.shape
    keep = rng_table[np.arange(h)[:, None] % 64, np.arange(w)[None, :] % 64] > 0.05
    return cross & in_fov & keep


def render_outdoor(seed: int, index: int, size: tuple[int, int] | None = None, lidar: bool = False) -> Sample:
    """Render outdoor frame ``index`` of stream ``seed`` (see module docstring)."""
    size = _check_size("outdoor", size)
    rng = _rng("outdoor", seed, index)
    scene, prm = _outdoor_scene(rng, size)
    table = rng.random((64, 64)).astype(_F32)
    t, sid, axis, sign, rays = _trace(scene)
    albedo, (nx, ny, nz), (px, py, pz), (u, v) = _albedo(scene, t, sid, axis, sign, rays, table)

    # ground: road with lane dashes and edge lines, raised-looking sidewalk, grass beyond
    g = sid == 0
    if g.any():
        x, z = px, pz
        ax_ = np.abs(x)
        rh, walk = _F32(prm["road_half"]), _F32(prm["walk"])
        lane_w = _F32(prm["lane_w"])
        lane_pos = np.abs(((x + lane_w / 2) % lane_w) - lane_w / 2)
        dash = (lane_pos < _F32(0.07)) & ((z % _F32(9.0)) < _F32(3.0)) & (ax_ < rh - _F32(0.5))
        edge = np.abs(ax_ - (rh - _F32(0.3))) < _F32(0.07)
        paint = (dash | edge)[..., None]
        n1 = _value_noise(x * _F32(4), z * _F32(4), table)[..., None]
        walk_tiles = ((np.floor(x / _F32(0.5)) + np.floor(z / _F32(0.5))).astype(np.int32) & 1)[..., None]
        sidewalk = (ax_ < rh + walk)[..., None]
        road = (ax_ < rh)[..., None]
        paving = _F32(0.55) + _F32(0.08) * walk_tiles + _F32(0.1) * (n1 - _F32(0.5))
        grass = np.array([0.25, 0.4, 0.15], _F32) * (_F32(0.8) + _F32(0.4) * n1)
        ground = np.where(road, np.where(paint, _F32(0.85), albedo), np.where(sidewalk, paving, grass))
        albedo = np.where(g[..., None], ground, albedo)

    sun = prm["sun"].astype(_F32)
    lam = np.maximum(nx * sun[0] + ny * sun[1] + nz * sun[2], 0)
    light = _F32(prm["ambient"]) + _F32(prm["sun_power"]) * lam
    dx, dy, dz = rays
    dn = np.sqrt(dx * dx + dy * dy + dz * dz)
    elev = dy / dn
    sky_mix = np.clip(elev * _F32(4), 0, 1)[..., None]
    sky = prm["sky_horizon"].astype(_F32) * (1 - sky_mix) + prm["sky_top"].astype(_F32) * sky_mix
    cloud = _value_noise(
        dx / np.maximum(dy, _F32(0.02)) * _F32(3), dz / np.maximum(dy, _F32(0.02)) * _F32(3), table
    )
    sky = sky + (np.clip(cloud - _F32(0.55), 0, 1) * _F32(0.6))[..., None]
    hit = np.isfinite(t)
    dist = np.where(hit, t * dn, _F32(1e6))
    fog = np.exp(-dist / _F32(prm["haze"]))[..., None]
    colour = _F32(prm["exposure"]) * albedo * light[..., None]
    colour = np.where(hit[..., None], colour * fog + sky * (1 - fog), sky)
    image = _to_image(colour)
    depth = np.where(hit & (t <= KITTI.max_depth), t, 0).astype(_F32)
    if lidar:
        depth = np.where(_lidar_mask(rays, t, table), depth, 0).astype(_F32)
    return Sample(
        image=image, depth=depth, name=f"synth_outdoor/{seed}/{index}", focal=float(scene.camera.fx)
    )


def _check_size(family: str, size: tuple[int, int] | None) -> tuple[int, int]:
    full = FULL_SIZE[family]
    if size is None:
        return full
    h, w = int(size[0]), int(size[1])
    if not (8 <= h <= full[0] and 8 <= w <= full[1]):
        raise ValueError(f"{family} size must be between 8x8 and {full[0]}x{full[1]}, got {h}x{w}")
    return h, w


def render(family: str, seed: int, index: int, size: tuple[int, int] | None = None, **kwargs) -> Sample:
    """Render one frame of ``family`` (``indoor`` or ``outdoor``); extra kwargs go to the family."""
    if family == "indoor":
        return render_indoor(seed, index, size, **kwargs)
    if family == "outdoor":
        return render_outdoor(seed, index, size, **kwargs)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


# ---------------------------------------------------------------------------------------------
# Writing datasets in the real layouts
# ---------------------------------------------------------------------------------------------


def _to_u8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _write_indoor(root: Path, split: str, indices: list[int], seed: int, size) -> list[str]:
    # BTS layout: train frames under sync/<scene>/, test frames under official_splits/test/<scene>/
    base = root / ("sync" if split == "train" else "official_splits/test")
    scene_dir = f"synth_indoor_{split}"
    (base / scene_dir).mkdir(parents=True, exist_ok=True)
    lines = []
    for j, idx in enumerate(indices):
        s = render_indoor(seed, idx, size)
        rgb_rel, depth_rel = f"{scene_dir}/rgb_{j:05d}.jpg", f"{scene_dir}/sync_depth_{j:05d}.png"
        (base / rgb_rel).write_bytes(encode_jpeg(_to_u8(s.image)))
        write_depth_png(base / depth_rel, s.depth, NYU.depth_scale)
        prefix = "/" if split == "train" else ""  # the BTS train list starts its paths with '/'
        lines.append(f"{prefix}{rgb_rel} {prefix}{depth_rel} {s.focal:.4f}")
    return lines


def _write_outdoor(root: Path, split: str, indices: list[int], seed: int, size, lidar: bool) -> list[str]:
    # KITTI raw layout under root, annotated depth under root/data_depth_annotated/{train,val}
    date = "2011_09_26"
    drive = f"{date}_drive_{9001 if split == 'train' else 9002:04d}_sync"
    img_dir = root / date / drive / "image_02" / "data"
    depth_sub = "train" if split == "train" else "val"
    gt_dir = root / "data_depth_annotated" / depth_sub / drive / "proj_depth" / "groundtruth" / "image_02"
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for j, idx in enumerate(indices):
        s = render_outdoor(seed, idx, size, lidar=lidar)
        frame = f"{j:010d}.png"
        Image.fromarray(_to_u8(s.image)).save(img_dir / frame, format="PNG")
        write_depth_png(gt_dir / frame, s.depth, KITTI.depth_scale)
        rgb_rel = f"{date}/{drive}/image_02/data/{frame}"
        lines.append(f"{rgb_rel} {drive}/proj_depth/groundtruth/image_02/{frame} {s.focal:.4f}")
    return lines


def _params(family: str, n_train: int, n_test: int, seed: int, size, lidar: bool) -> dict:
    return {
        "kind": "synthetic",
        "family": family,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "seed": int(seed),
        "size": list(_check_size(family, size)),
        "lidar": bool(lidar),
        "generator_version": GENERATOR_VERSION,
    }


def write_synthetic_dataset(
    family: str,
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    *,
    lidar: bool = False,
) -> Path:
    """Render ``n_train`` + ``n_test`` frames into ``out_dir`` in the real layout of the family.

    ``indoor`` -> NYU BTS layout (``sync/``, ``official_splits/test/``, JPEG RGB, depth PNG x1000);
    ``outdoor`` -> KITTI layout (raw drive folders, ``data_depth_annotated/{train,val}``, depth PNG
    x256). Writes the two split lists under their canonical names plus a manifest that records the
    parameters and the lists' checksums. Writes into ``out_dir`` directly; see
    :func:`ensure_synthetic_dataset` for the cached, atomic variant. Returns ``out_dir``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if n_train < 0 or n_test < 0:
        raise ValueError("frame counts must be >= 0")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    dataset = "nyu" if family == "indoor" else "kitti"
    manifest = _params(family, n_train, n_test, seed, size, lidar)
    manifest["dataset"] = dataset
    manifest["splits"] = {}
    for split, indices in (
        ("train", list(range(n_train))),
        ("test", [TEST_INDEX_OFFSET + j for j in range(n_test)]),
    ):
        if family == "indoor":
            lines = _write_indoor(root, split, indices, seed, size)
        else:
            lines = _write_outdoor(root, split, indices, seed, size, lidar)
        list_path = root / split_name(dataset, split)
        list_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        manifest["splits"][split] = {
            "file": list_path.name,
            "sha256": sha256_file(list_path),
            "count": len(lines),
        }
    manifest["complete"] = True
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return root


def ensure_synthetic_dataset(
    family: str,
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    *,
    lidar: bool = False,
    force: bool = False,
) -> Path:
    """Return ``out_dir`` holding a complete synthetic dataset with these parameters, writing it if needed.

    An existing copy whose manifest matches the parameters (and generator version) is reused as is,
    so notebooks can call this on every run. Otherwise the dataset is rendered into a unique temporary
    sibling folder (the user's umask, host and pid in its name) and renamed into place, so an
    interrupted run never leaves a half-written copy that looks complete; the next build removes such
    temporaries of dead processes and says so. The build holds the lock ``.<name>.lock`` beside
    ``out_dir``: a second process asking for the same root waits, then reuses what the first one
    rendered.
    """
    root = Path(out_dir)
    wanted = _params(family, n_train, n_test, seed, size, lidar)

    def complete() -> bool:
        existing = read_manifest(root) if root.is_dir() else None
        return bool(
            existing and existing.get("complete") and all(existing.get(k) == v for k, v in wanted.items())
        )

    if not force and complete():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / f".{root.name}", what=f"synthetic dataset {root}"):
        if not force and complete():  # rendered by another process while we waited for the lock
            return root
        clean_stale_temporaries(root.parent)
        tmp = make_temp_dir(root)
        try:
            write_synthetic_dataset(family, tmp, n_train, n_test, seed, size, lidar=lidar)
            if root.exists():
                old = make_temp_dir(root)
                os.replace(root, old / "data")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root
