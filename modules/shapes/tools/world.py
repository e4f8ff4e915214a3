"""The shapes world: seeded synthetic scenes with exact ground truth (attributes, boxes, masks).

A scene is a few flat shapes (CLEVR's 8 colours, 2 sizes, solid or striped) on a textured,
unevenly lit background, with noise and JPEG artefacts, possibly overlapping. Everything a scene
holds comes from one ``numpy`` Generator seeded by ``(seed, index)``, so scene ``i`` of a data set
is the same on every run and can be rendered on its own (in any order, in any process).

Ground truth is written so a symbolic engine can answer questions from it alone: every object's
attributes, its visible box, its centre, its visible fraction, the draw order and CLEVR-style
``relationships`` (``relationships['left'][i]`` lists the objects left of object ``i``). Objects'
centres differ by at least ``min_gap`` pixels on both axes, so left/right/above/below are never
a matter of a pixel.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..vocab import ATTRIBUTES, COLORS, MATERIALS, RELATIONS, SHAPES, SIZES

Array = np.ndarray[Any, Any]  # numpy's array, any shape and dtype

__all__ = [
    "PALETTE", "ObjectSpec", "Scene", "WorldConfig", "compose", "generate", "relationships", "render_scene",
    "scene_rng", "write_scene",
]

# The colour each colour word is drawn in: CLEVR's palette.
PALETTE: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}


@dataclass(frozen=True)
class WorldConfig:
    """How scenes are drawn. Lengths are fractions of the image side, so a smaller image is the same
    world at a lower resolution."""

    size: int = 256
    min_objects: int = 3
    max_objects: int = 10
    # Every object keeps at least this share of its pixels. Not less: a diamond that has lost the
    # lower 40% of itself *is* a triangle, and no one could tell which it was.
    min_visible: float = 0.7
    small_radius: tuple[float, float] = (0.036, 0.046)
    large_radius: tuple[float, float] = (0.084, 0.100)  # ≥ 1.8× the small ones: size is never a judgement call
    min_gap: float = 0.016  # least distance between any two objects' centres on each axis (4 px at 256)
    min_distance: float = 0.05  # least distance between centres: a detector looking for centres sees each one
    margin: float = 0.01  # objects stay this far inside the image
    noise: tuple[float, float] = (0.0, 8.0)  # Gaussian noise sigma, in 0..255 units
    jpeg_quality: tuple[int, int] = (35, 95)
    jpeg_probability: float = 0.8
    lighting: float = 0.22  # brightness varies by up to this much across the image
    supersample: int = 2  # drawn at this multiple and averaged down: antialiased edges
    max_tries: int = 60  # placements tried per object before the scene settles for fewer objects
    # Chance that a small object is put on a large one already placed (its centre within 0.8 of the
    # large one's radius of that centre). 0 in the world itself, where small-on-large happens only by
    # chance; training raises it, because that is the case a detector finds hardest.
    nest: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scene:
    """A rendered scene: the RGB image, the instance mask (pixel = object index + 1) and its ground truth."""

    image: Array  # uint8 H×W×3
    instances: Array  # uint8 H×W, 0 = background
    truth: dict[str, Any]

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image, "RGB")

    def mask(self, index: int) -> Array:
        return np.asarray(self.instances == index + 1)


@dataclass
class _Placed:
    shape: str
    color: str
    size: str
    material: str
    cx: float  # supersampled pixels
    cy: float
    radius: float
    rotation: float  # degrees
    stripe_angle: float
    full: Array  # bool mask of the whole object (supersampled, within its window)
    window: tuple[int, int, int, int]  # x1, y1, x2, y2 of ``full`` in the supersampled image


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator behind scene ``index`` of the data set with ``seed``: scenes are independent."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


# ----------------------------------------------------------------------------- geometry


def _polygon(shape: str, cx: float, cy: float, r: float, rot_deg: float) -> list[tuple[float, float]]:
    th = math.radians(rot_deg)
    if shape == "square":
        pts = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif shape == "diamond":
        # A rhombus 0.62 wide for 1 tall; rotations stay small, so it never reads as a square.
        pts = [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (math.radians(-90 + 120 * k) for k in range(3))]
        pts = [(x, y + 0.12) for x, y in pts]  # centre its box, not its centroid
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = math.radians(-90 + 36 * k)
            pts.append((rad * math.cos(a), rad * math.sin(a) + 0.1))
    else:
        raise ValueError(f"no polygon for {shape!r}")
    c, s = math.cos(th), math.sin(th)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _rotation(shape: str, rng: np.random.Generator) -> float:
    if shape in ("square", "diamond"):
        return float(rng.uniform(-15, 15))
    if shape in ("triangle", "star"):
        return float(rng.uniform(-30, 30))
    return 0.0


def _object_mask(shape: str, cx: float, cy: float, r: float, rot: float, side: int
                 ) -> tuple[Array, tuple[int, int, int, int]]:
    """The object's full mask inside a window around it, clipped to the image."""
    x1, y1 = max(0, math.floor(cx - 1.2 * r) - 1), max(0, math.floor(cy - 1.2 * r) - 1)
    x2, y2 = min(side, math.ceil(cx + 1.2 * r) + 2), min(side, math.ceil(cy + 1.2 * r) + 2)
    img = Image.new("L", (x2 - x1, y2 - y1), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse((cx - r - x1, cy - r - y1, cx + r - x1, cy + r - y1), fill=255)
    else:
        draw.polygon([(x - x1, y - y1) for x, y in _polygon(shape, cx, cy, r, rot)], fill=255)
    return np.asarray(img) > 127, (x1, y1, x2, y2)


# ----------------------------------------------------------------------------- layout


def _visible_masks(placed: list[_Placed], side: int) -> Array:
    """Index map (supersampled): later objects cover earlier ones."""
    idx = np.zeros((side, side), np.uint8)
    for i, p in enumerate(placed):
        x1, y1, x2, y2 = p.window
        region = idx[y1:y2, x1:x2]
        region[p.full] = i + 1
    return idx


def _layout_ok(placed: list[_Placed], idx: Array, cfg: WorldConfig, ss: int) -> bool:
    gap = (cfg.min_gap * cfg.size + 1.0) * ss  # one pixel to spare: boxes are re-measured after downsampling
    dist2 = (cfg.min_distance * cfg.size * ss) ** 2
    centres = []
    for i, p in enumerate(placed):
        x1, y1, x2, y2 = p.window
        vis = idx[y1:y2, x1:x2] == i + 1
        full = int(p.full.sum())
        n = int(vis.sum())
        if full == 0 or n < cfg.min_visible * full:
            return False
        ys, xs = np.nonzero(vis)
        centres.append(((xs.min() + xs.max() + 1) / 2 + x1, (ys.min() + ys.max() + 1) / 2 + y1))
    for i in range(len(centres)):
        for j in range(i):
            dx, dy = abs(centres[i][0] - centres[j][0]), abs(centres[i][1] - centres[j][1])
            if dx < gap or dy < gap or dx * dx + dy * dy < dist2:
                return False
    return True


def _layout(cfg: WorldConfig, rng: np.random.Generator) -> list[_Placed]:
    ss = cfg.supersample
    side = cfg.size * ss
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed: list[_Placed] = []
    while len(placed) < n:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = COLORS[int(rng.integers(len(COLORS)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        material = MATERIALS[int(rng.integers(len(MATERIALS)))]
        lo, hi = cfg.small_radius if size == "small" else cfg.large_radius
        ok = False
        hosts = [p for p in placed if p.size == "large"]
        # Drawn only when nesting is on, so scenes of a world without it stay what they always were.
        nest = size == "small" and bool(hosts) and cfg.nest > 0 and rng.uniform() < cfg.nest
        for _ in range(cfg.max_tries):
            r = float(rng.uniform(lo, hi)) * side
            m = cfg.margin * side + r
            cx, cy = float(rng.uniform(m, side - m)), float(rng.uniform(m, side - m))
            if nest:
                host = hosts[int(rng.integers(len(hosts)))]
                a, d = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 0.8)) * host.radius
                cx = min(side - m, max(m, host.cx + d * math.cos(a)))
                cy = min(side - m, max(m, host.cy + d * math.sin(a)))
            rot = _rotation(shape, rng)
            full, window = _object_mask(shape, cx, cy, r, rot, side)
            cand = _Placed(shape, color, size, material, cx, cy, r, rot, float(rng.uniform(0, 180)), full, window)
            trial = [*placed, cand]
            if _layout_ok(trial, _visible_masks(trial, side), cfg, ss):
                placed.append(cand)
                ok = True
                break
        if not ok:
            if len(placed) >= cfg.min_objects:
                break  # a crowded scene keeps what fits rather than loop forever
            placed = []  # start again: the first objects left no room
    return placed


# ----------------------------------------------------------------------------- painting


def _smooth_noise(rng: np.random.Generator, side: int, cells: int) -> Array:
    """Value noise in [-1, 1]: a coarse random grid, bilinearly enlarged."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(img, np.float32)


def _background(rng: np.random.Generator, side: int) -> Array:
    """Desaturated, light backgrounds with gradients and textures: never as dark or as saturated as
    an object, but never flat either, so the detector must look for shapes rather than any change."""
    def light_colour() -> Array:
        base = rng.uniform(125, 230)
        return np.clip(base + rng.uniform(-22, 22, 3), 0, 255).astype(np.float32)

    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    a, b = light_colour(), light_colour()
    kind = int(rng.integers(3))
    if kind == 0:  # linear gradient
        th = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(th) + yy * math.sin(th))
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    elif kind == 1:  # radial gradient
        ox, oy = rng.uniform(0, 1, 2)
        t = np.sqrt((xx - ox) ** 2 + (yy - oy) ** 2)
        t = t / max(1e-6, float(t.max()))
    else:  # blotches
        t = (_smooth_noise(rng, side, int(rng.integers(2, 6))) + 1) / 2
    t = t.astype(np.float32)
    bg = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    texture = int(rng.integers(4))
    if texture == 1:  # fine grain, like paper
        bg += (_smooth_noise(rng, side, side // 6) * rng.uniform(4, 12))[..., None]
    elif texture == 2:  # faint stripes or waves
        th = rng.uniform(0, math.pi)
        period = rng.uniform(0.02, 0.08)
        wave = np.sin(2 * math.pi * (xx * math.cos(th) + yy * math.sin(th)) / period)
        bg += (wave * rng.uniform(3, 9))[..., None]
    elif texture == 3:  # faint checks
        cells = int(rng.integers(6, 20))
        checks = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1
        bg += (checks * rng.uniform(3, 8))[..., None]
    return np.asarray(bg)


def _paint(img: Array, p: _Placed, rng: np.random.Generator, min_period: float) -> None:
    x1, y1, x2, y2 = p.window
    colour = np.array(PALETTE[p.color], np.float32)
    yy, xx = np.mgrid[y1:y2, x1:x2].astype(np.float32)
    # Soft shading from a random light direction: colours vary the way lit objects do.
    la = rng.uniform(0, 2 * math.pi)
    d = ((xx - p.cx) * math.cos(la) + (yy - p.cy) * math.sin(la)) / p.radius
    shade = 1.0 + 0.1 * np.clip(d, -1.2, 1.2)
    layer = colour[None, None, :] * shade[..., None]
    if p.material == "striped":
        # Stripes in a lighter tint on dark colours and a darker shade on light ones: always visible.
        lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        other = colour * 0.35 + 255 * 0.65 if lum < 110 else colour * 0.4
        period = max(0.5 * p.radius, min_period)  # fine enough to read as stripes, coarse enough to survive JPEG
        sa = math.radians(p.stripe_angle)
        phase = ((xx * math.cos(sa) + yy * math.sin(sa)) / period) % 1.0
        stripe = (phase < 0.5)[..., None]
        layer = np.where(stripe, other[None, None, :] * shade[..., None], layer)
    region = img[y1:y2, x1:x2]
    region[p.full] = layer[p.full]


def _finish(img: Array, cfg: WorldConfig, rng: np.random.Generator) -> Array:
    """Uneven lighting, a colour cast, sensor noise and JPEG: the image a camera would give."""
    side = img.shape[0]
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    th = rng.uniform(0, 2 * math.pi)
    ramp = (xx - 0.5) * math.cos(th) + (yy - 0.5) * math.sin(th)
    light = 1.0 + rng.uniform(-0.08, 0.08) + cfg.lighting * rng.uniform(0.2, 1.0) * ramp
    cast = 1.0 + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    img = img * light[..., None] * cast[None, None, :]
    sigma = rng.uniform(*cfg.noise)
    if sigma > 0:
        img = img + rng.normal(0, sigma, img.shape).astype(np.float32)
    out: Array = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if rng.uniform() < cfg.jpeg_probability:
        buf = io.BytesIO()
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        Image.fromarray(out, "RGB").save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out = np.asarray(Image.open(buf).convert("RGB")).copy()
    return out


# ----------------------------------------------------------------------------- scenes


def _downsample_instances(idx2: Array, placed: list[_Placed], size: int, ss: int) -> Array:
    """An output pixel belongs to whatever covers most of it (background wins ties, then the deeper object),
    counted only inside each object's window because whole-image passes per object are the slow part."""
    best = np.zeros((size, size), np.int16)
    total = np.zeros((size, size), np.int16)
    out = np.zeros((size, size), np.uint8)
    for i, p in enumerate(placed):
        x1, y1, x2, y2 = p.window
        bx1, by1 = x1 // ss, y1 // ss
        bx2, by2 = -(-x2 // ss), -(-y2 // ss)
        sub = idx2[by1 * ss:by2 * ss, bx1 * ss:bx2 * ss] == i + 1
        c = sub.reshape(by2 - by1, ss, bx2 - bx1, ss).sum(axis=(1, 3), dtype=np.int16)
        b = best[by1:by2, bx1:bx2]
        win = c > b
        b[win] = c[win]
        out[by1:by2, bx1:bx2][win] = i + 1
        total[by1:by2, bx1:bx2] += c
    out[(ss * ss - total) >= best] = 0
    return out


def relationships(centres: list[tuple[float, float]]) -> dict[str, list[list[int]]]:
    """CLEVR's form: ``out['left'][i]`` = indices of the objects left of object ``i`` (by box centre)."""
    out: dict[str, list[list[int]]] = {r: [] for r in RELATIONS}
    for i, (xi, yi) in enumerate(centres):
        others = [(j, c) for j, c in enumerate(centres) if j != i]
        out["left"].append([j for j, (x, _) in others if x < xi])
        out["right"].append([j for j, (x, _) in others if x > xi])
        out["above"].append([j for j, (_, y) in others if y < yi])
        out["below"].append([j for j, (_, y) in others if y > yi])
    return out


def render_scene(seed: int, index: int, cfg: WorldConfig | None = None) -> Scene:
    """Scene ``index`` of the data set with ``seed``: the same pixels and truth on every call."""
    cfg = cfg or WorldConfig()
    rng = scene_rng(seed, index)
    return _render(_layout(cfg, rng), cfg, rng, {"seed": int(seed), "index": int(index)})


@dataclass(frozen=True)
class ObjectSpec:
    """An object placed by hand (tests, examples): its centre in image pixels; radius in pixels,
    by default the middle of its size's range."""

    shape: str
    color: str
    size: str
    material: str
    x: float
    y: float
    radius: float | None = None
    rotation: float = 0.0
    stripe_angle: float = 45.0


def compose(specs: list[ObjectSpec], seed: int = 0, cfg: WorldConfig | None = None) -> Scene:
    """A scene of exactly these objects, drawn in order (later ones in front), with the world's
    usual background, lighting and noise drawn from ``seed``. No layout rule is checked."""
    cfg = cfg or WorldConfig()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    ss = cfg.supersample
    side = cfg.size * ss
    placed = []
    for o in specs:
        for attr, value in (("shape", o.shape), ("color", o.color), ("size", o.size), ("material", o.material)):
            if value not in ATTRIBUTES[attr]:
                raise ValueError(f"unknown {attr} {value!r}; one of {', '.join(ATTRIBUTES[attr])}")
        lo, hi = cfg.small_radius if o.size == "small" else cfg.large_radius
        r = (o.radius * ss) if o.radius is not None else (lo + hi) / 2 * side
        cx, cy = o.x * ss, o.y * ss
        full, window = _object_mask(o.shape, cx, cy, r, o.rotation, side)
        placed.append(_Placed(o.shape, o.color, o.size, o.material, cx, cy, r, o.rotation, o.stripe_angle, full,
                              window))
    return _render(placed, cfg, rng, {"seed": int(seed), "index": None})


def _render(placed: list[_Placed], cfg: WorldConfig, rng: np.random.Generator, ident: dict[str, Any]) -> Scene:
    ss = cfg.supersample
    side = cfg.size * ss
    size = cfg.size
    # The background is smooth, so it is made at 1× and only the objects are drawn supersampled.
    canvas = np.repeat(np.repeat(_background(rng, size), ss, axis=0), ss, axis=1)
    for p in placed:
        _paint(canvas, p, rng, 0.02 * side)
    idx2 = _visible_masks(placed, side)
    canvas = canvas.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    instances = _downsample_instances(idx2, placed, size, ss)
    image = _finish(canvas, cfg, rng)

    objects = []
    centres = []
    for i, p in enumerate(placed):
        m = instances == i + 1
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            raise ValueError(f"object {i} ({p.size} {p.color} {p.shape}) is entirely hidden")
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        centres.append(centre)
        vis2 = int((idx2 == i + 1).sum())
        objects.append({
            "id": i, "shape": p.shape, "color": p.color, "size": p.size, "material": p.material,
            "box": box, "center": [centre[0], centre[1]],
            "position": [round(p.cx / ss, 2), round(p.cy / ss, 2)], "radius": round(p.radius / ss, 2),
            "rotation": round(p.rotation, 2), "visible_fraction": round(vis2 / max(1, int(p.full.sum())), 4),
            "area": int(m.sum()), "depth": i,
        })
    truth = {
        **ident, "width": size, "height": size,
        "objects": objects, "relationships": relationships(centres),
        "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
    }
    return Scene(image, instances, truth)


def write_scene(scene: Scene, out: Path, stem: str) -> dict[str, Any]:
    """``stem.png`` (the image), ``stem_mask.png`` (instances: pixel = object index + 1), ``stem.json``."""
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.image, "RGB").save(out / f"{stem}.png")
    Image.fromarray(scene.instances, "L").save(out / f"{stem}_mask.png")
    truth = dict(scene.truth, image=f"{stem}.png", mask=f"{stem}_mask.png")
    (out / f"{stem}.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return truth


def generate(n: int, seed: int, out: Path, cfg: WorldConfig | None = None, progress: bool = True
             ) -> list[dict[str, Any]]:
    """Write ``n`` scenes and an index (``scenes.json``) listing them with the config that made them."""
    from tqdm import tqdm

    cfg = cfg or WorldConfig()
    truths = []
    for i in tqdm(range(n), desc="scenes", disable=not progress, unit="scene"):
        truths.append(write_scene(render_scene(seed, i, cfg), out, f"{i:06d}"))
    index = {"seed": seed, "count": n, "config": cfg.to_dict(), "scenes": [t["image"][:-4] for t in truths]}
    (out / "scenes.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return truths
