"""What the shapes networks learn from: scenes rendered into memory, the detector's dense targets,
object crops for the attribute classifier (as the truth draws them and as the trained detector sees
them), and the order batches are drawn in. Every random draw comes from a seed or a generator passed
in, so a training run is repeatable."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import nets
from ..nets import AttributeConfig, Detector, DetectorConfig
from ..vocab import ATTRIBUTES
from .losses import DetectorTargets
from .world import WorldConfig, render_scene

Array = np.ndarray[Any, Any]  # numpy's array, any shape and dtype

# ----------------------------------------------------------------------------- scenes


@dataclass
class SceneSet:
    images: Array  # N×S×S×3 uint8
    instances: Array  # N×S×S uint8
    truths: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.truths)


def _render(job: tuple[int, int, WorldConfig]) -> tuple[Array, Array, dict[str, Any]]:
    seed, index, cfg = job
    s = render_scene(seed, index, cfg)
    return s.image, s.instances, s.truth


def make_scenes(seed: int, n: int, cfg: WorldConfig, workers: int = 2, desc: str = "scenes") -> SceneSet:
    """Render scenes ``0..n-1`` of ``seed``; the result does not depend on ``workers``."""
    S = cfg.size
    images = np.zeros((n, S, S, 3), np.uint8)
    instances = np.zeros((n, S, S), np.uint8)
    truths: list[dict[str, Any]] = []
    jobs = [(seed, i, cfg) for i in range(n)]
    bar = tqdm(total=n, desc=desc, unit="scene", leave=False)
    if workers > 1 and n > 32:
        with get_context("fork").Pool(workers) as pool:
            for i, (img, inst, truth) in enumerate(pool.imap(_render, jobs, chunksize=16)):
                images[i], instances[i] = img, inst
                truths.append(truth)
                bar.update()
    else:
        for i, job in enumerate(jobs):
            images[i], instances[i], truth = _render(job)
            truths.append(truth)
            bar.update()
    bar.close()
    return SceneSet(images, instances, truths)


def boxes_of(truth: dict[str, Any]) -> Array:
    return np.array([o["box"] for o in truth["objects"]], np.float32).reshape(-1, 4)


def augment(img: Array, inst: Array, boxes: Array, rng: np.random.Generator,
            vertical: bool) -> tuple[Array, Array, Array]:
    """Mirror images and their truth: free extra scenes. Vertical flips (and transposes) only for the
    detector, since a triangle upside down is not a shape this world draws."""
    S = img.shape[0]
    boxes = boxes.copy()
    if rng.uniform() < 0.5:
        img, inst = img[:, ::-1], inst[:, ::-1]
        boxes[:, [0, 2]] = S - boxes[:, [2, 0]]
    if vertical and rng.uniform() < 0.5:
        img, inst = img[::-1], inst[::-1]
        boxes[:, [1, 3]] = S - boxes[:, [3, 1]]
    if vertical and rng.uniform() < 0.5:
        img, inst = img.transpose(1, 0, 2), inst.T
        boxes = boxes[:, [1, 0, 3, 2]]
    return np.ascontiguousarray(img), np.ascontiguousarray(inst), boxes


def block_cover(inst: Array, n: int, stride: int) -> Array:
    """Share of each stride×stride block covered by each object: n×(S/stride)×(S/stride), in one pass."""
    S = inst.shape[0]
    h = S // stride
    rows = (np.arange(S) // stride)[:, None] * h + (np.arange(S) // stride)[None, :]
    counts = np.bincount((rows * (n + 1) + inst).ravel(), minlength=h * h * (n + 1))
    return (counts.reshape(h, h, n + 1)[:, :, 1:].transpose(2, 0, 1) / (stride * stride)).astype(np.float32)


def detector_targets(insts: list[Array], boxes: list[Array], cfg: DetectorConfig) -> DetectorTargets:
    B = len(insts)
    S, st = cfg.input_size, cfg.stride
    h = S // st
    h2 = S // 2
    heat = np.zeros((B, 1, h, h), np.float32)
    reg = np.zeros((B, 4, h, h), np.float32)
    reg_mask = np.zeros((B, 1, h, h), np.float32)
    vec = np.zeros((B, 2, h2, h2), np.float32)
    vec_weight = np.zeros((B, 1, h2, h2), np.float32)
    ys, xs = np.mgrid[0:h, 0:h].astype(np.float32)
    ys2, xs2 = np.mgrid[0:h2, 0:h2].astype(np.float32)
    for b in range(B):
        bx = boxes[b]
        n = len(bx)
        for k in range(n):
            x1, y1, x2, y2 = bx[k]
            cx, cy = (x1 + x2) / 2 / st, (y1 + y2) / 2 / st
            ix, iy = min(h - 1, int(cx)), min(h - 1, int(cy))
            sigma = max(0.7, min(x2 - x1, y2 - y1) / st / 8)
            g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
            heat[b, 0] = np.maximum(heat[b, 0], g)
            heat[b, 0, iy, ix] = 1.0
            reg[b, :, iy, ix] = (cx - ix, cy - iy, (x2 - x1) / nets.SIZE_SCALE, (y2 - y1) / nets.SIZE_SCALE)
            reg_mask[b, 0, iy, ix] = 1.0
        if n:
            cover = block_cover(insts[b], n, 2)
            owner = cover.argmax(0)
            has = cover.max(0) >= 0.5
            centres = np.stack([(bx[:, 0] + bx[:, 2]) / 2, (bx[:, 1] + bx[:, 3]) / 2], 1)
            vec[b, 0] = np.where(has, (centres[owner, 0] - (xs2 * 2 + 1)) / nets.VEC_UNIT, 0)
            vec[b, 1] = np.where(has, (centres[owner, 1] - (ys2 * 2 + 1)) / nets.VEC_UNIT, 0)
            # Every object counts about equally, whatever its size: small ones are where owners go wrong.
            area = np.maximum(cover.sum(axis=(1, 2)), 1.0)
            vec_weight[b, 0] = has * np.clip(np.sqrt(100.0 / area[owner]), 0.3, 3.0)
    fg = torch.from_numpy(np.stack(insts) > 0).float()[:, None]
    t = torch.from_numpy
    return DetectorTargets(t(heat), t(reg), t(reg_mask), fg, t(vec), t(vec_weight))


def to_tensor(images: list[Array] | Array) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images) if isinstance(images, list) else images)
    return x.permute(0, 3, 1, 2).float().div_(255).contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- batches


def draw_batches(n: int, batch: int, rng: np.random.Generator, weights: Array | None = None
                 ) -> Iterator[Array]:
    """Scene indices, a batch at a time: epochs of a shuffled order, or with ``weights``, draws in
    proportion to them (without repeats inside a batch)."""
    if weights is not None:
        p = weights / weights.sum()
        while True:
            yield rng.choice(n, size=batch, replace=False, p=p)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            yield order[i:i + batch]


def hard_scene(truth: dict[str, Any], distance: float) -> bool:
    """Whether a scene holds a small object whose centre is within ``distance`` pixels of another's:
    the case the detector finds hardest (one peak for two objects, or one box around both)."""
    objects = truth["objects"]
    if len(objects) < 2:
        return False
    b = boxes_of(truth)
    c = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(len(c)) * 1e9
    small = np.array([o["size"] == "small" for o in objects])
    return bool((d.min(1)[small] < distance).any())


# ----------------------------------------------------------------------------- attribute crops


def labels_of(truth: dict[str, Any]) -> dict[str, list[int]]:
    return {a: [ATTRIBUTES[a].index(o[a]) for o in truth["objects"]] for a in ATTRIBUTES}


View = tuple[Array, Array, float]  # box, coarse soft mask, mask area: one object as the detector saw it


def detector_views(detector: Detector, data: SceneSet, n: int, mask_stride: int, batch: int = 16
                   ) -> dict[int, dict[int, View]]:
    """How the trained detector sees the objects of the first ``n`` training scenes (its box and
    mask for each true object it finds), so the attribute classifier learns from the inputs it will
    be given, flaws included, and not only from perfect ones."""
    views: dict[int, dict[int, View]] = {}
    for s in tqdm(range(0, n, batch), desc="detector views", unit="batch", leave=False):
        idx = np.arange(s, min(n, s + batch))
        with torch.inference_mode():
            raw, fg = detector(to_tensor(data.images[idx]))
            found = nets.decode((raw.float(), fg.float()), detector.cfg, mask_stride)
        for j, i in enumerate(idx):
            dets, gt = found[j], torch.from_numpy(boxes_of(data.truths[i]))
            views[int(i)] = {}
            if not dets or len(gt) == 0:
                continue
            iou = nets.box_iou(torch.tensor([d.box for d in dets]), gt)
            for d in sorted(range(len(dets)), key=lambda k: -dets[k].score):
                g = int(iou[d].argmax())
                if iou[d, g] >= 0.5 and g not in views[int(i)]:
                    views[int(i)][g] = (np.array(dets[d].box, np.float32), dets[d].soft.numpy().astype(np.float32),
                                        float(dets[d].mask.sum()))
    return views


def attribute_batch(data: SceneSet, idx: Array, cfg: AttributeConfig, rng: np.random.Generator | None,
                    views: dict[int, dict[int, View]] | None = None, p_view: float = 0.6,
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Crops of every object of the scenes ``idx``. Without ``rng``: from the true boxes and masks.
    With it: images mirror, and each object comes either as the detector saw it (``views``, with
    probability ``p_view``) or from the truth with its box jittered and, now and then, its mask
    replaced by its box, the way a detector's output differs from the truth."""
    S = data.images.shape[1]
    imgs, softs, owners, boxes, areas = [], [], [], [], []
    labels: dict[str, list[int]] = {a: [] for a in ATTRIBUTES}
    for j, i in enumerate(idx):
        truth = data.truths[i]
        img, inst, bx = data.images[i], data.instances[i], boxes_of(truth)
        n = len(bx)
        cover = block_cover(inst, n, cfg.mask_stride)
        flip = rng is not None and rng.uniform() < 0.5
        if flip:
            img = np.ascontiguousarray(img[:, ::-1])
        seen = (views or {}).get(int(i), {})
        for k in range(n):
            view = seen.get(k) if rng is not None and rng.uniform() < p_view else None
            if view is not None:
                box, soft, area = view[0].copy(), view[1], view[2]
            else:
                box, soft, area = bx[k].copy(), cover[k], float((inst == k + 1).sum())
                if rng is not None:
                    w, h = box[2] - box[0], box[3] - box[1]
                    # Mostly the small errors of a good box; now and then the large ones a detector
                    # makes on a small object beside another (IoU 0.5-0.7), where misreadings cluster.
                    jitter = 0.06 if rng.uniform() < 0.7 else 0.2
                    box += rng.uniform(-jitter, jitter, 4).astype(np.float32) * np.array([w, h, w, h], np.float32)
                    area *= float(rng.uniform(0.9, 1.1))
                    if rng.uniform() < 0.1:
                        soft = _box_mask(box, S, cfg.mask_stride)
            if flip:
                box = np.array([S - box[2], box[1], S - box[0], box[3]], np.float32)
                soft = soft[:, ::-1]
            boxes.append(box)
            areas.append(area)
            owners.append(j)
            softs.append(np.ascontiguousarray(soft))
        for a, v in labels_of(truth).items():
            labels[a].extend(v)
        imgs.append(img)
    images = to_tensor(imgs).contiguous()
    b = torch.from_numpy(np.stack(boxes))
    crops = nets.sample_crops(images, torch.from_numpy(np.stack(softs)), torch.tensor(owners), b, cfg)
    geo = nets.geometry(b, torch.tensor(areas), S)
    return crops, geo, {a: torch.tensor(v) for a, v in labels.items()}


def _box_mask(box: Array, size: int, stride: int) -> Array:
    m = np.zeros((size, size), np.float32)
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    m[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] = 1.0
    h = size // stride
    return np.asarray(m.reshape(h, stride, h, stride).mean(axis=(1, 3)))
