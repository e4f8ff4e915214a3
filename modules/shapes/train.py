"""Train the shapes world's detector and attribute classifier on CPU, from a fixed seed.

Scenes are rendered once into memory (two processes; scene ``i`` depends only on ``(seed, i)``),
then each network trains for a fixed number of steps with AdamW and a cosine schedule, under
bfloat16 autocast where the CPU has it in hardware. Training scenes are more crowded than the
world's default and the detector sees scenes with a small object close to another more often:
that is where it misses (see ``hard_scene``). A time
budget (``minutes``) stops a step loop early on a slow machine; the report says when it did,
because only then does the result depend on the clock. The held-out scenes come from another
seed, so no training scene is ever scored.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import nets
from .nets import AttributeConfig, AttributeNet, Detector, DetectorConfig, DetectorTargets
from .world import ATTRIBUTES, WorldConfig, render_scene

WEIGHTS = Path(__file__).resolve().parent / "weights"
HELDOUT_SEED_OFFSET = 1_000_003  # held-out scenes: a seed no training run uses


@dataclass
class TrainConfig:
    seed: int = 0
    scenes: int = 5000
    heldout: int = 300
    det_steps: int = 6000
    det_batch: int = 16
    det_lr: float = 2e-3
    attr_steps: int = 3000
    views_scenes: int = 2000  # training scenes the trained detector is run on, for the attribute classifier
    attr_batch: int = 16  # scenes per step: every object in them is a crop
    attr_lr: float = 2e-3
    weight_decay: float = 1e-4
    minutes: float = 20.0
    workers: int = 2
    threads: int = 2
    # "auto": bfloat16 autocast where the CPU does bfloat16 in hardware (AVX512-BF16/AMX: about twice
    # the steps in the same minutes), float32 elsewhere, where emulated bfloat16 would be slower.
    precision: str = "auto"
    # Training scenes hold more objects than the world's default: the detector's hard case is a small
    # object touching another, and crowded scenes show it that case more often per step. None: the
    # world's own range.
    train_objects: tuple[int, int] | None = (4, 12)
    # Scenes with a small object this close (share of the image side) to another are drawn this many
    # times as often by the detector. Without nesting about one training scene in thirteen has one
    # (and the detector missed a third of those objects); with it, about one in two.
    hard_distance: float = 0.07
    hard_weight: float = 1.5
    # Training scenes put a small object on a large one this often (``WorldConfig.nest``): the world
    # itself does so only by chance, and those are the objects the detector misses.
    train_nest: float = 0.3
    world: WorldConfig = field(default_factory=WorldConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    attributes: AttributeConfig = field(default_factory=AttributeConfig)


# ----------------------------------------------------------------------------- data


@dataclass
class SceneSet:
    images: np.ndarray  # N×S×S×3 uint8
    instances: np.ndarray  # N×S×S uint8
    truths: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.truths)


def _render(job: tuple[int, int, WorldConfig]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
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


def _boxes(truth: dict[str, Any]) -> np.ndarray:
    return np.array([o["box"] for o in truth["objects"]], np.float32).reshape(-1, 4)


def _augment(img: np.ndarray, inst: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
             vertical: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def block_cover(inst: np.ndarray, n: int, stride: int) -> np.ndarray:
    """Share of each stride×stride block covered by each object: n×(S/stride)×(S/stride), in one pass."""
    S = inst.shape[0]
    h = S // stride
    rows = (np.arange(S) // stride)[:, None] * h + (np.arange(S) // stride)[None, :]
    counts = np.bincount((rows * (n + 1) + inst).ravel(), minlength=h * h * (n + 1))
    return (counts.reshape(h, h, n + 1)[:, :, 1:].transpose(2, 0, 1) / (stride * stride)).astype(np.float32)


def detector_targets(insts: list[np.ndarray], boxes: list[np.ndarray], cfg: DetectorConfig) -> DetectorTargets:
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


def use_bf16(precision: str) -> bool:
    """Whether training runs under bfloat16 autocast: ``precision`` is auto, bf16 or fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: stay exact
        return False


def to_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images) if isinstance(images, list) else images)
    return x.permute(0, 3, 1, 2).float().div_(255).contiguous(memory_format=torch.channels_last)


class Threads:
    """Picks 1 or 2 intra-op threads by timing both every ``period`` steps. On a machine others share,
    two threads on two busy cores wait on each other at every operation and run several times slower
    than one; on an idle machine two are faster. Only speed depends on this, not what is learned
    (beyond floating-point summation order)."""

    def __init__(self, most: int, period: int = 150, probe: int = 3) -> None:
        self.choices = [1, most] if most > 1 else [1]
        self.period, self.probe = period, probe
        self.current = most
        self.times: dict[int, list[float]] = {}
        self.t = 0.0

    def before(self, step: int) -> None:
        phase = step % self.period
        if len(self.choices) > 1 and phase < self.probe * len(self.choices):
            n = self.choices[phase // self.probe]
            if phase == 0:
                self.times = {}
        else:
            if len(self.choices) > 1 and phase == self.probe * len(self.choices) and self.times:
                # The first probe step of each count pays for warming caches: judge by the rest.
                self.current = min(self.times, key=lambda k: sorted(self.times[k])[len(self.times[k]) // 2])
            n = self.current
        torch.set_num_threads(n)
        self.n = n
        self.t = time.perf_counter()

    def after(self, step: int) -> None:
        if step % self.period < self.probe * len(self.choices):
            self.times.setdefault(self.n, []).append(time.perf_counter() - self.t)


class Schedule:
    """Warm-up then cosine decay over whichever runs out first, the steps or the time budget, so a
    slow (or busy) machine still ends its training at a low learning rate instead of mid-stride."""

    def __init__(self, steps: int, seconds: float, lr: float) -> None:
        self.steps, self.seconds, self.lr = steps, max(1.0, seconds), lr
        self.t0 = time.monotonic()
        self.time_bound = False

    def progress(self, step: int) -> float:
        by_time = (time.monotonic() - self.t0) / self.seconds
        if by_time >= 1 and step < self.steps:
            self.time_bound = True  # ended by the clock, not by the step count
        return max(step / self.steps, by_time)

    def rate(self, progress: float) -> float:
        warm = 1 / 30
        if progress < warm:
            return self.lr * max(progress, 0.2 * warm) / warm
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warm) / (1 - warm))))


def _log(losses: list[float], sched: Schedule) -> dict[str, Any]:
    n = max(1, min(50, len(losses) // 4))
    every = max(1, len(losses) // 40)
    return {"steps": len(losses), "time_bound": sched.time_bound, "seconds": round(time.monotonic() - sched.t0, 1),
            "first_loss": float(np.mean(losses[:n])) if losses else None,
            "last_loss": float(np.mean(losses[-n:])) if losses else None,
            "curve": [round(float(np.mean(losses[i:i + every])), 4) for i in range(0, len(losses), every)]}


# ----------------------------------------------------------------------------- detector


def draw_batches(n: int, batch: int, rng: np.random.Generator, weights: np.ndarray | None = None) -> Iterator[np.ndarray]:
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
    b = _boxes(truth)
    c = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(len(c)) * 1e9
    small = np.array([o["size"] == "small" for o in objects])
    return bool((d.min(1)[small] < distance).any())


StepLoss = Callable[[bool], tuple[torch.Tensor, dict[str, float]]]


def fit(model: torch.nn.Module, step_loss: StepLoss, steps: int, seconds: float, lr: float, cfg: TrainConfig,
        desc: str, clip: float | None = None) -> dict[str, Any]:
    """The one training loop both networks share: AdamW, warm-up and cosine decay over the steps or
    the time budget, the thread-count probe, bfloat16 autocast where chosen, a progress bar.
    ``step_loss(bf16)`` draws the next batch and returns its loss and the parts to show."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    model.train()
    losses: list[float] = []
    sched = Schedule(steps, seconds, lr)
    bar = tqdm(range(steps), desc=desc, unit="step")
    threads = Threads(cfg.threads)
    bf16 = use_bf16(cfg.precision)
    for step in bar:
        progress = sched.progress(step)
        if progress >= 1:
            break
        threads.before(step)
        loss, parts = step_loss(bf16)
        for g in opt.param_groups:
            g["lr"] = sched.rate(progress)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        threads.after(step)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", threads=threads.current, **{k: f"{v:.3f}" for k, v in parts.items()})
    model.eval()
    return _log(losses, sched)


def train_detector(data: SceneSet, cfg: TrainConfig, seconds: float) -> tuple[Detector, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    model = Detector(cfg.detector).to(memory_format=torch.channels_last)
    hard = np.array([hard_scene(t, cfg.hard_distance * cfg.world.size) for t in data.truths])
    batches = draw_batches(len(data), cfg.det_batch, rng, np.where(hard, cfg.hard_weight, 1.0))

    def step_loss(bf16: bool) -> tuple[torch.Tensor, dict[str, float]]:
        imgs, insts, boxes = [], [], []
        for i in next(batches):
            a, b, c = _augment(data.images[i], data.instances[i], _boxes(data.truths[i]), rng, vertical=True)
            imgs.append(a)
            insts.append(b)
            boxes.append(c)
        targets = detector_targets(insts, boxes, cfg.detector)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            raw, fine = model(to_tensor(imgs))
        return nets.detector_loss((raw.float(), fine.float()), targets)

    return model, fit(model, step_loss, cfg.det_steps, seconds, cfg.det_lr, cfg, "detector", clip=5.0)


# ----------------------------------------------------------------------------- attributes


def _labels(truth: dict[str, Any]) -> dict[str, list[int]]:
    return {a: [ATTRIBUTES[a].index(o[a]) for o in truth["objects"]] for a in ATTRIBUTES}


View = tuple[np.ndarray, np.ndarray, float]  # box, coarse soft mask, mask area: one object as the detector saw it


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
            dets, gt = found[j], torch.from_numpy(_boxes(data.truths[i]))
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


def attribute_batch(data: SceneSet, idx: np.ndarray, cfg: AttributeConfig, rng: np.random.Generator | None,
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
        img, inst, bx = data.images[i], data.instances[i], _boxes(truth)
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
        for a, v in _labels(truth).items():
            labels[a].extend(v)
        imgs.append(img)
    images = to_tensor(imgs).contiguous()
    b = torch.from_numpy(np.stack(boxes))
    crops = nets.sample_crops(images, torch.from_numpy(np.stack(softs)), torch.tensor(owners), b, cfg)
    geo = nets.geometry(b, torch.tensor(areas), S)
    return crops, geo, {a: torch.tensor(v) for a, v in labels.items()}


def _box_mask(box: np.ndarray, size: int, stride: int) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    m[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] = 1.0
    h = size // stride
    return m.reshape(h, stride, h, stride).mean(axis=(1, 3))


def train_attributes(data: SceneSet, cfg: TrainConfig, seconds: float,
                     views: dict[int, dict[int, View]] | None = None) -> tuple[AttributeNet, dict[str, Any]]:
    torch.manual_seed(cfg.seed + 1)
    rng = np.random.default_rng([cfg.seed, 2])
    model = AttributeNet(cfg.attributes)
    batches = draw_batches(len(data), cfg.attr_batch, rng)

    def step_loss(bf16: bool) -> tuple[torch.Tensor, dict[str, float]]:
        crops, geo, labels = attribute_batch(data, next(batches), cfg.attributes, rng, views)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(crops, geo)
        losses = [F.cross_entropy(logits[a].float(), labels[a], label_smoothing=0.02) for a in ATTRIBUTES]
        return torch.stack(losses).sum(), {}

    return model, fit(model, step_loss, cfg.attr_steps, seconds, cfg.attr_lr, cfg, "attributes")


# ----------------------------------------------------------------------------- evaluation


def evaluate(detector: Detector, attrnet: AttributeNet, data: SceneSet, batch: int = 16) -> dict[str, Any]:
    """Detector precision/recall at IoU 0.5 and attribute accuracy, on the matched detections (what a
    program sees) and on the true boxes (the classifier alone)."""
    tp = fp = fn = 0
    correct = {a: 0 for a in ATTRIBUTES}
    matched = 0
    scenes_right = 0
    gt_correct = {a: 0 for a in ATTRIBUTES}
    gt_total = 0
    ious: list[float] = []
    for s in tqdm(range(0, len(data), batch), desc="held-out", unit="batch", leave=False):
        idx = np.arange(s, min(len(data), s + batch))
        preds = nets.predict(detector, attrnet, to_tensor(data.images[idx]))
        for j, i in enumerate(idx):
            truth = data.truths[i]
            gt = torch.from_numpy(_boxes(truth))
            labels = _labels(truth)
            dets = preds[j]
            ok = len(dets) == len(gt)
            if dets:
                iou = nets.box_iou(torch.tensor([d.box for d in dets]), gt)
                used: set[int] = set()
                for d in sorted(range(len(dets)), key=lambda k: -dets[k].score):
                    cand = [(float(iou[d, g]), g) for g in range(len(gt)) if g not in used and iou[d, g] >= 0.5]
                    if not cand:
                        fp += 1
                        ok = False
                        continue
                    v, g = max(cand)
                    used.add(g)
                    ious.append(v)
                    tp += 1
                    matched += 1
                    for a in ATTRIBUTES:
                        hit = dets[d].attributes[a] == ATTRIBUTES[a][labels[a][g]]
                        correct[a] += hit
                        ok &= hit
                fn += len(gt) - len(used)
            else:
                fn += len(gt)
            scenes_right += ok
        crops, geo, labels_t = attribute_batch(data, idx, attrnet.cfg, None)
        with torch.inference_mode():
            logits = attrnet(crops, geo)
        for a in ATTRIBUTES:
            gt_correct[a] += int((logits[a].argmax(1) == labels_t[a]).sum())
        gt_total += len(crops)
    return {
        "scenes": len(data), "objects": tp + fn,
        "detector": {"precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn), "tp": tp, "fp": fp, "fn": fn,
                     "mean_iou": float(np.mean(ious)) if ious else 0.0},
        "attributes_on_detections": {a: correct[a] / max(1, matched) for a in ATTRIBUTES},
        "attributes_on_true_boxes": {a: gt_correct[a] / max(1, gt_total) for a in ATTRIBUTES},
        "scenes_all_correct": scenes_right / max(1, len(data)),
    }


# ----------------------------------------------------------------------------- the whole run


def train(cfg: TrainConfig, out: Path = WEIGHTS, progress_scenes: bool = True) -> dict[str, Any]:
    """Render, train both networks, score them on held-out scenes, write weights and report.json."""
    torch.set_num_threads(cfg.threads)
    t0 = time.monotonic()
    deadline = t0 + cfg.minutes * 60
    world = replace(cfg.world, nest=cfg.train_nest)
    if cfg.train_objects is not None:
        world = replace(world, min_objects=cfg.train_objects[0], max_objects=cfg.train_objects[1])
    data = make_scenes(cfg.seed, cfg.scenes, world, cfg.workers, desc="training scenes")
    held = make_scenes(cfg.seed + HELDOUT_SEED_OFFSET, cfg.heldout, cfg.world, cfg.workers, desc="held-out scenes")
    t_data = time.monotonic() - t0
    # Of the time left (less a minute to score the held-out scenes and a minute and a half for the
    # detector's views), the detector takes 76%: the attribute classifier converges in a few hundred
    # steps, the detector keeps improving.
    left = deadline - time.monotonic() - 150
    detector, det_log = train_detector(data, cfg, 0.76 * left)
    t_det = time.monotonic() - t0 - t_data
    views = detector_views(detector, data, min(cfg.views_scenes, len(data)), cfg.attributes.mask_stride)
    t_views = time.monotonic() - t0 - t_data - t_det
    attrnet, attr_log = train_attributes(data, cfg, deadline - time.monotonic() - 60, views)
    t_attr = time.monotonic() - t0 - t_data - t_det - t_views
    del data
    metrics = evaluate(detector, attrnet, held)
    out.mkdir(parents=True, exist_ok=True)
    nets.save(detector, cfg.detector, out / "detector.safetensors")
    nets.save(attrnet, cfg.attributes, out / "attributes.safetensors")
    total = time.monotonic() - t0
    report = {
        "seed": cfg.seed,
        "config": asdict(cfg),
        "scene_counts": {"train": cfg.scenes, "heldout": cfg.heldout, "heldout_seed": cfg.seed + HELDOUT_SEED_OFFSET},
        "time_s": {"scenes": round(t_data, 1), "detector": round(t_det, 1), "detector_views": round(t_views, 1), "attributes": round(t_attr, 1),
                   "total": round(total, 1)},
        "detector_training": det_log,
        "attribute_training": attr_log,
        "heldout": metrics,
        "weights_bytes": {p.name: p.stat().st_size for p in (out / "detector.safetensors", out / "attributes.safetensors")},
        "machine": {"torch": torch.__version__, "threads": cfg.threads, "cpus": os.cpu_count(),
                    "bf16_autocast": use_bf16(cfg.precision),
                    "platform": platform.platform()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report
