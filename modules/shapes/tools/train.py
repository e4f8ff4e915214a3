"""Train the shapes world's detector and attribute classifier on CPU, from a fixed seed.

Scenes are rendered once into memory (two processes; scene ``i`` depends only on ``(seed, i)``),
then each network trains for a fixed number of steps with AdamW and a cosine schedule, under
bfloat16 autocast where the CPU has it in hardware. Training scenes are more crowded than the
world's default and the detector sees scenes with a small object close to another more often:
that is where it misses (see ``data.hard_scene``). A time budget (``minutes``) stops a step loop
early on a slow machine; the report says when it did, because only then does the result depend on
the clock. The held-out scenes come from another seed (``seeds.heldout_seed``), so no training
scene is ever scored. What the networks learn from (scenes, targets, crops) is in ``data.py``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import nets
from ..files import REPORT_FILE, WEIGHTS, weight_files
from ..nets import AttributeConfig, AttributeNet, Detector, DetectorConfig
from ..vocab import ATTRIBUTES
from .data import (
    SceneSet,
    View,
    attribute_batch,
    augment,
    boxes_of,
    detector_targets,
    detector_views,
    draw_batches,
    hard_scene,
    labels_of,
    make_scenes,
    to_tensor,
)
from .losses import detector_loss
from .seeds import heldout_seed
from .world import WorldConfig


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


# ----------------------------------------------------------------------------- the training loop


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
        torch.autograd.backward(loss)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        threads.after(step)
        losses.append(loss.item())
        if step % 10 == 0:
            shown = {k: f"{v:.3f}" for k, v in parts.items()}
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", threads=threads.current, **shown)
    model.eval()
    return _log(losses, sched)


def train_detector(data: SceneSet, cfg: TrainConfig, seconds: float) -> tuple[Detector, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    # Module.to takes memory_format (torch's stubs leave it out of every overload).
    model = Detector(cfg.detector).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    hard = np.array([hard_scene(t, cfg.hard_distance * cfg.world.size) for t in data.truths])
    batches = draw_batches(len(data), cfg.det_batch, rng, np.where(hard, cfg.hard_weight, 1.0))

    def step_loss(bf16: bool) -> tuple[torch.Tensor, dict[str, float]]:
        imgs, insts, boxes = [], [], []
        for i in next(batches):
            a, b, c = augment(data.images[i], data.instances[i], boxes_of(data.truths[i]), rng, vertical=True)
            imgs.append(a)
            insts.append(b)
            boxes.append(c)
        targets = detector_targets(insts, boxes, cfg.detector)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            raw, fine = model(to_tensor(imgs))
        return detector_loss((raw.float(), fine.float()), targets)

    return model, fit(model, step_loss, cfg.det_steps, seconds, cfg.det_lr, cfg, "detector", clip=5.0)


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
    correct = dict.fromkeys(ATTRIBUTES, 0)
    matched = 0
    scenes_right = 0
    gt_correct = dict.fromkeys(ATTRIBUTES, 0)
    gt_total = 0
    ious: list[float] = []
    for s in tqdm(range(0, len(data), batch), desc="held-out", unit="batch", leave=False):
        idx = np.arange(s, min(len(data), s + batch))
        preds = nets.predict(detector, attrnet, to_tensor(data.images[idx]))
        for j, i in enumerate(idx):
            truth = data.truths[i]
            gt = torch.from_numpy(boxes_of(truth))
            labels = labels_of(truth)
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
        "detector": {"precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn), "tp": tp, "fp": fp,
                     "fn": fn, "mean_iou": float(np.mean(ious)) if ious else 0.0},
        "attributes_on_detections": {a: correct[a] / max(1, matched) for a in ATTRIBUTES},
        "attributes_on_true_boxes": {a: gt_correct[a] / max(1, gt_total) for a in ATTRIBUTES},
        "scenes_all_correct": scenes_right / max(1, len(data)),
    }


# ----------------------------------------------------------------------------- the whole run


def train(cfg: TrainConfig, out: Path = WEIGHTS, progress_scenes: bool = True) -> dict[str, Any]:
    """Render, train both networks, score them on held-out scenes, write the weights and the report."""
    torch.set_num_threads(cfg.threads)
    t0 = time.monotonic()
    deadline = t0 + cfg.minutes * 60
    world = replace(cfg.world, nest=cfg.train_nest)
    if cfg.train_objects is not None:
        world = replace(world, min_objects=cfg.train_objects[0], max_objects=cfg.train_objects[1])
    data = make_scenes(cfg.seed, cfg.scenes, world, cfg.workers, desc="training scenes")
    held = make_scenes(heldout_seed(cfg.seed), cfg.heldout, cfg.world, cfg.workers, desc="held-out scenes")
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
    files = weight_files(out)
    nets.save(detector, cfg.detector, files[0])
    nets.save(attrnet, cfg.attributes, files[1])
    total = time.monotonic() - t0
    report = {
        "seed": cfg.seed,
        "config": asdict(cfg),
        "scene_counts": {"train": cfg.scenes, "heldout": cfg.heldout, "heldout_seed": heldout_seed(cfg.seed)},
        "time_s": {"scenes": round(t_data, 1), "detector": round(t_det, 1), "detector_views": round(t_views, 1),
                   "attributes": round(t_attr, 1), "total": round(total, 1)},
        "detector_training": det_log,
        "attribute_training": attr_log,
        "heldout": metrics,
        "weights_bytes": {p.name: p.stat().st_size for p in files},
        "machine": {"torch": torch.__version__, "threads": cfg.threads, "cpus": os.cpu_count(),
                    "bf16_autocast": use_bf16(cfg.precision),
                    "platform": platform.platform()},
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report
