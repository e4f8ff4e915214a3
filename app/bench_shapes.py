"""``nsx bench shapes``: how well the shapes pack answers CLEVR-style questions, and why it misses.

Scenes are held out: they are drawn from the world seed ``BENCH_SEED_OFFSET + seed``, which no
training run uses (training draws scenes ``(train seed, i)`` and scores on ``(train seed +
1_000_003, i)``; the bench refuses weights whose report names its seed). Each question's program
runs through the real executor in this process — the same compiler, pool, batching, cache and
modules as the service — and its answer is compared with the one computed from ground truth.

Beside answer accuracy (overall and per family) the bench scores the perception the answers rest
on: the detector's precision and recall at IoU 0.5 and the attribute classifier's accuracy on the
detections it matched. Every missed question gets a cause, found by repairing the detected scene
one stage at a time and asking the symbolic reference (``questions.reference_answer``) again:

1. ``detector``: answered right once missed objects are added and spurious ones removed;
2. ``attribute``: right once the matched objects get their true attributes;
3. ``relation``: right only once boxes move to their true centres (two centres close on one axis);
4. ``executor``: the modules answered differently from the reference over the same detections,
   which is a bug in a module or in the language, not a perception error.

A table shows how accuracy holds as scenes get harder: by number of objects and by overlap within
the held-out set, and on extra held-out sets that are more crowded, more overlapped, or smaller.

It lives in ``app`` because it drives the service's machinery (executor, pool, store) over the
shapes pack; the pack itself never imports the service.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from modules.base import Module, ModuleError
from modules.shapes import LOC_SIG, select
from modules.shapes.questions import (
    FAMILIES,
    Question,
    ReferenceError,
    generate_questions,
    normalize_answer,
    reference_answer,
)
from modules.shapes.world import ATTRIBUTES, Scene, WorldConfig, render_scene
from modules.values import Obj, Objects

BENCH_SEED_OFFSET = 5_000_011  # world seed of held-out scenes = this + --seed
CONDITION_STRIDE = 1_000_000  # each condition draws scene indices from its own block
IOU = 0.5
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)
CAUSES: tuple[str, ...] = ("detector", "attribute", "relation", "executor", "reference")


@dataclass(frozen=True)
class Condition:
    """A held-out set drawn with one world configuration."""

    name: str
    label: str
    world: WorldConfig


CONDITIONS: tuple[Condition, ...] = (
    Condition("base", "all held-out: 256 px, 3-10 objects, as trained", WorldConfig()),
    Condition("crowded", "256 px, 11-14 objects", WorldConfig(min_objects=11, max_objects=14)),
    Condition("overlap", "256 px, objects down to 35% visible", WorldConfig(min_visible=0.35)),
    Condition("192px", "192 px, 3-10 objects", WorldConfig(size=192)),
    Condition("128px", "128 px, 3-10 objects", WorldConfig(size=128)),
)


@dataclass
class BenchConfig:
    questions: int = 1000
    seed: int = 0
    per_scene: int = 5
    hard_questions: int = 200  # per harder condition; 0 skips them
    conditions: tuple[str, ...] = tuple(c.name for c in CONDITIONS[1:])
    weights: Path | None = None  # None: the pack's own
    device: str = "auto"
    concurrency: int = 8  # scenes in flight at once (their LOC calls batch together)
    store_mb: int = 512
    examples: int | None = None  # misses listed in the report (None: every one)
    oracle: bool = False  # LOC reads the ground truth: the symbolic half measured alone


# ----------------------------------------------------------------------------- perception scoring


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Detected:
    """One detection as the bench reads it: box, score and the most likely value of each attribute."""

    box: tuple[float, float, float, float]
    score: float
    values: dict[str, str]

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass
class Matching:
    pairs: list[tuple[int, int]]  # (detection, truth)
    spurious: list[int]  # detections matching no object
    missed: list[int]  # objects no detection matched

    @property
    def exact(self) -> bool:
        return not self.spurious and not self.missed


def match(dets: Sequence[Detected], truth: Mapping[str, Any], iou: float = IOU) -> Matching:
    """Greedy, highest score first, each object at most once: the matching the training report uses."""
    gts = [o["box"] for o in truth["objects"]]
    used: set[int] = set()
    pairs, spurious = [], []
    for d in sorted(range(len(dets)), key=lambda k: -dets[k].score):
        best, best_iou = -1, iou
        for g, gb in enumerate(gts):
            if g in used:
                continue
            v = box_iou(dets[d].box, gb)
            if v >= best_iou:
                best, best_iou = g, v
        if best < 0:
            spurious.append(d)
        else:
            used.add(best)
            pairs.append((d, best))
    return Matching(pairs, spurious, [g for g in range(len(gts)) if g not in used])


def _pseudo(objects: list[tuple[dict[str, str], tuple[float, float]]]) -> dict[str, Any]:
    return {"objects": [{**values, "center": list(c)} for values, c in objects]}


def repaired_scenes(dets: Sequence[Detected], truth: Mapping[str, Any], m: Matching) -> list[dict[str, Any]]:
    """The detected scene, then the same with detection, attributes and positions put right in turn.
    Stage 0 is what the modules saw; stage 3 is the ground truth."""
    gt = truth["objects"]

    def true_values(g: int) -> dict[str, str]:
        return {a: str(gt[g][a]) for a in ATTRIBUTE_NAMES}

    def true_centre(g: int) -> tuple[float, float]:
        x1, y1, x2, y2 = gt[g]["box"]
        return (x1 + x2) / 2, (y1 + y2) / 2

    stage0 = [(d.values, d.center) for d in dets]
    added = [(true_values(g), true_centre(g)) for g in m.missed]
    stage1 = [(dets[d].values, dets[d].center) for d, _ in m.pairs] + added
    stage2 = [(true_values(g), dets[d].center) for d, g in m.pairs] + added
    stage3 = [(true_values(g), true_centre(g)) for _, g in m.pairs] + added
    return [_pseudo(s) for s in (stage0, stage1, stage2, stage3)]


def _answer(program: str, scene: Mapping[str, Any]) -> str:
    try:
        return reference_answer(program, scene)
    except ReferenceError:
        return "<none>"


def diagnose(q: Question, got: str, dets: Sequence[Detected], truth: Mapping[str, Any], m: Matching) -> dict[str, Any]:
    """Why ``q`` was answered ``got``: the first repair of the detected scene that makes the answer right
    (see the module's docstring), with the perception errors behind it."""
    stages = repaired_scenes(dets, truth, m)
    seen = _answer(q.program, stages[0])
    out: dict[str, Any] = {"reference_on_detections": seen}
    if seen != got:
        out["cause"] = "executor"
        return out
    cause = "reference"  # the truth itself gives another answer: a generator bug
    for stage, name in ((1, "detector"), (2, "attribute"), (3, "relation")):
        if _answer(q.program, stages[stage]) == q.answer:
            cause = name
            break
    out["cause"] = cause
    gt = truth["objects"]
    if cause == "detector":
        out["missed"] = [f"{_describe(gt[g])} (visible {gt[g].get('visible_fraction', 1):.2f}, "
                         f"area {gt[g].get('area', '?')} px)" for g in m.missed]
        out["spurious"] = [f"{_describe(dets[d].values)} at {[round(v) for v in dets[d].box]} score {dets[d].score:.2f}"
                           for d in m.spurious]
    elif cause == "attribute":
        out["wrong"] = [f"{_describe(gt[g])}: {a} read as {dets[d].values.get(a)}"
                        for d, g in m.pairs for a in ATTRIBUTE_NAMES if dets[d].values.get(a) != gt[g][a]]
    elif cause == "relation":
        out["flips"] = _flips(dets, truth, m)
    return out


def _describe(o: Mapping[str, Any]) -> str:
    return " ".join(str(o.get(a, "?")) for a in ("size", "color", "material", "shape"))


def _flips(dets: Sequence[Detected], truth: Mapping[str, Any], m: Matching) -> list[str]:
    """Pairs of objects whose order on an axis differs between true and detected centres."""
    gt = truth["objects"]
    out = []
    pairs = m.pairs
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            (di, gi), (dj, gj) = pairs[i], pairs[j]
            for axis, name in ((0, "x"), (1, "y")):
                t = gt[gi]["center"][axis] - gt[gj]["center"][axis]
                p = dets[di].center[axis] - dets[dj].center[axis]
                if t * p <= 0:
                    out.append(f"{_describe(gt[gi])} / {_describe(gt[gj])}: "
                               f"{name} gap {t:+.1f} px true, {p:+.1f} detected")
    return out


# ----------------------------------------------------------------------------- scenes


class SceneSource:
    """Held-out scenes of one condition, rendered on first use and kept (image bytes and truth)."""

    def __init__(self, world_seed: int, condition: int, cfg: WorldConfig) -> None:
        self.world_seed, self.base, self.cfg = world_seed, condition * CONDITION_STRIDE, cfg
        self.scenes: dict[int, Scene] = {}

    def __iter__(self) -> Iterator[tuple[int, Mapping[str, Any]]]:
        i = 0
        while True:
            yield i, self.get(i).truth
            i += 1

    def get(self, i: int) -> Scene:
        if i not in self.scenes:
            self.scenes[i] = render_scene(self.world_seed, self.base + i, self.cfg)
        return self.scenes[i]

    def png(self, i: int) -> bytes:
        buf = io.BytesIO()
        self.get(i).pil().save(buf, format="PNG")
        return buf.getvalue()


def check_held_out(world_seed: int, weights: Path) -> None:
    """Refuse a world seed that the weights' training run drew scenes from."""
    report = weights / "report.json"
    if not report.is_file():
        return
    try:
        doc = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    used = {doc.get("seed"), (doc.get("scene_counts") or {}).get("heldout_seed")}
    if world_seed in used:
        raise ValueError(f"world seed {world_seed} is one the weights in {weights} were trained or scored on; "
                         f"pick another --seed")


# ----------------------------------------------------------------------------- the run


@dataclass
class Outcome:
    question: Question
    condition: str
    got: str
    correct: bool
    error: str | None = None
    objects: int = 0
    min_visible: float = 1.0
    why: dict[str, Any] = field(default_factory=dict)


@dataclass
class SceneScore:
    condition: str
    objects: int
    min_visible: float
    tp: int
    fp: int
    fn: int
    attributes_right: dict[str, int]
    matched: int
    pairs: list[tuple[dict[str, str], dict[str, str]]] = field(default_factory=list)  # (true, read) per match


class OracleLoc(Module):
    """LOC with perfect perception: every object of the scene, from its ground truth, with certain
    attributes. With it the bench measures everything but the networks — compiler, executor, the
    symbolic modules, the generator — and anything short of 100% is a bug, not a perception error."""

    signature = replace(LOC_SIG, version="oracle")  # its own cache keys: never mixed with LOC's
    cheap = True

    def __init__(self) -> None:
        self.truths: dict[str, Mapping[str, Any]] = {}  # image key → the scene's ground truth

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        out: list[Any] = []
        for args in batch:
            image = args["image"]
            truth = self.truths.get(image.key)
            if truth is None:
                out.append(ModuleError(f"the oracle knows no scene for image {image.key}"))
                continue
            items = []
            for o in truth["objects"]:
                attrs = {a: {v: float(v == o[a]) for v in ATTRIBUTES[a]} for a in ATTRIBUTE_NAMES}
                label = " ".join(str(o[a]) for a in ("size", "color", "material", "shape"))
                x1, y1, x2, y2 = (float(v) for v in o["box"])
                items.append(Obj((x1, y1, x2, y2), 1.0, label, attrs))
            items.sort(key=lambda ob: (ob.box[0] + ob.box[2], ob.box[1] + ob.box[3]))
            found = Objects(tuple(items), image.key, (image.width, image.height))
            try:
                out.append(select(found, str(args.get("object", "object")), "LOC"))
            except ModuleError as e:
                out.append(e)
        return out


def _packs(weights: Path | None, oracle: Any = None) -> list[Any]:
    """core + shapes, with LOC reading ``weights`` when given (a training run's output, say), or the
    oracle in its place."""
    from modules.packs import load_packs
    from modules.shapes import Loc

    packs = load_packs(["core", "shapes"])
    if weights is None and oracle is None:
        return packs
    loc = oracle if oracle is not None else Loc(weights=weights)  # type: ignore[arg-type]
    return [replace(p, modules=[loc if m.name == "LOC" else m for m in p.modules])
            if p.name == "shapes" else p for p in packs]


def _detections(result: Any) -> list[Detected]:
    from modules.shapes import values_of

    out = []
    for o in result:
        x1, y1, x2, y2 = (float(v) for v in o.box)
        out.append(Detected((x1, y1, x2, y2), float(o.score), values_of(o)))
    return out


async def run_bench(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Generate the questions, run them all through the executor, score and explain. Returns the report."""
    from tqdm import tqdm

    from .executor import Executor
    from .store import MemoryStore
    from modules.pool import Pool, PoolConfig
    from modules.values import ImageValue
    from program_dsl import IMAGE, compile_program

    from modules.shapes import WEIGHTS

    if cfg.seed < 0 or cfg.questions < 0 or cfg.hard_questions < 0:
        raise ValueError("--seed, --questions and --hard-questions must be >= 0")
    weights = cfg.weights or WEIGHTS
    world_seed = BENCH_SEED_OFFSET + cfg.seed
    oracle = OracleLoc() if cfg.oracle else None
    if oracle is None:
        check_held_out(world_seed, weights)
        for f in (weights / "detector.safetensors", weights / "attributes.safetensors"):
            if not f.is_file():
                raise FileNotFoundError(f"no trained weights at {f}; run `nsx shapes train` or pass --weights DIR")
    unknown = [c for c in cfg.conditions if c not in {x.name for x in CONDITIONS}]
    if unknown:
        known = ", ".join(c.name for c in CONDITIONS[1:])
        raise ValueError(f"unknown condition(s) {', '.join(unknown)}; known: {known}")

    t0 = time.perf_counter()
    plan_jobs: list[tuple[Condition, SceneSource, list[Question]]] = []
    for ci, cond in enumerate(CONDITIONS):
        n = cfg.questions if cond.name == "base" else (cfg.hard_questions if cond.name in cfg.conditions else 0)
        if n == 0:
            continue
        source = SceneSource(world_seed, ci, cond.world)
        qs = generate_questions(iter(source), n, seed=cfg.seed * 1000 + ci, per_scene=cfg.per_scene)
        plan_jobs.append((cond, source, qs))
    t_generate = time.perf_counter() - t0

    pool = Pool(_packs(cfg.weights, oracle), PoolConfig(device=cfg.device, max_queue=1 << 16))
    await pool.start()
    failed = {q: s.error for q, s in pool.states.items() if s.state == "failed"}
    if failed:
        await pool.close()
        raise RuntimeError("modules failed to load: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    executor = Executor(pool, MemoryStore(cfg.store_mb * 1024 * 1024), step_timeout_s=600)
    catalog = pool.catalog
    t_load = time.perf_counter() - t0 - t_generate

    outcomes: list[Outcome] = []
    scores: list[SceneScore] = []
    total = sum(len(qs) for _, _, qs in plan_jobs)
    bar = tqdm(total=total, desc="questions", unit="q", disable=not progress, file=sys.stderr)
    detect_plan = compile_program("LOC(IMAGE, 'object')", catalog, {"IMAGE": IMAGE})

    async def one_scene(cond: Condition, source: SceneSource, scene_id: int, qs: list[Question]) -> None:
        truth = source.get(scene_id).truth
        image = ImageValue.from_bytes(source.png(scene_id))
        if oracle is not None:
            oracle.truths[image.key] = truth
        plans = [compile_program(q.program, catalog, {"IMAGE": IMAGE}) for q in qs]
        runs = await asyncio.gather(executor.execute(detect_plan, {"IMAGE": image}),
                                    *(executor.execute(p, {"IMAGE": image}) for p in plans))
        detection, answers = runs[0], runs[1:]
        if detection.status != "succeeded":
            raise RuntimeError(f"LOC failed on scene {scene_id} of {cond.name}: {detection.error}")
        dets = _detections(detection.result)
        m = match(dets, truth)
        n_obj = len(truth["objects"])
        min_vis = min((float(o.get("visible_fraction", 1.0)) for o in truth["objects"]), default=1.0)
        right = {a: sum(dets[d].values.get(a) == truth["objects"][g][a] for d, g in m.pairs) for a in ATTRIBUTE_NAMES}
        pairs = [({a: str(truth["objects"][g][a]) for a in ATTRIBUTE_NAMES}, dets[d].values) for d, g in m.pairs]
        scores.append(SceneScore(cond.name, n_obj, min_vis, len(m.pairs), len(m.spurious), len(m.missed), right,
                                 len(m.pairs), pairs))
        for q, ex in zip(qs, answers):
            got = normalize_answer(ex.result) if ex.status == "succeeded" else "<none>"
            o = Outcome(q, cond.name, got, got == q.answer, ex.error, n_obj, min_vis)
            if not o.correct:
                o.why = diagnose(q, got, dets, truth, m)
            outcomes.append(o)
            bar.update()

    try:
        for cond, source, qs in plan_jobs:
            by_scene: dict[int, list[Question]] = {}
            for q in qs:
                by_scene.setdefault(q.scene, []).append(q)
            items = sorted(by_scene.items())
            for k in range(0, len(items), max(1, cfg.concurrency)):
                chunk = items[k:k + cfg.concurrency]
                await asyncio.gather(*(one_scene(cond, source, sid, sqs) for sid, sqs in chunk))
                for sid, _ in chunk:
                    source.scenes.pop(sid, None)  # scored: the pixels are no longer needed
    finally:
        bar.close()
        await pool.close()
    t_run = time.perf_counter() - t0 - t_generate - t_load
    report = summarize(outcomes, scores, cfg, world_seed, examples=cfg.examples)
    loc = pool.find("LOC", "shapes")
    report["weights"] = ({"oracle": True} if oracle is not None else
                         {"dir": str(weights), "loc_version": loc.version if loc is not None else None})
    report["device"] = pool.device
    report["time_s"] = {"generate": round(t_generate, 2), "load": round(t_load, 2), "run": round(t_run, 2),
                        "questions_per_s": round(total / t_run, 2) if t_run > 0 else None}
    return report


# ----------------------------------------------------------------------------- summaries


def _acc(outs: Sequence[Outcome]) -> dict[str, Any]:
    right = sum(o.correct for o in outs)
    return {"questions": len(outs), "correct": right, "accuracy": round(right / len(outs), 4) if outs else None}


def _det(ss: Sequence[SceneScore]) -> dict[str, Any]:
    tp, fp, fn = sum(s.tp for s in ss), sum(s.fp for s in ss), sum(s.fn for s in ss)
    return {"scenes": len(ss), "objects": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None}


def _causes(outs: Sequence[Outcome]) -> dict[str, int]:
    counts = {c: 0 for c in CAUSES}
    for o in outs:
        if not o.correct:
            counts[o.why.get("cause", "reference")] += 1
    return {k: v for k, v in counts.items() if v}


def confusions(ss: Sequence[SceneScore], top: int = 8) -> dict[str, Any]:
    """Per attribute: accuracy by true value and by size, and the commonest misreadings ('star→circle')."""
    out: dict[str, Any] = {}
    for a in ATTRIBUTE_NAMES:
        by_value: dict[str, list[int]] = {}
        by_size: dict[str, list[int]] = {}
        wrong: dict[str, int] = {}
        for s in ss:
            for true, read in s.pairs:
                ok = int(read.get(a) == true[a])
                for table, key in ((by_value, true[a]), (by_size, true["size"])):
                    table.setdefault(key, [0, 0])
                    table[key][0] += ok
                    table[key][1] += 1
                if not ok:
                    k = f"{true[a]}→{read.get(a)}"
                    wrong[k] = wrong.get(k, 0) + 1
        out[a] = {"by_value": {k: round(r / n, 4) for k, (r, n) in sorted(by_value.items())},
                  "by_size": {k: round(r / n, 4) for k, (r, n) in sorted(by_size.items())},
                  "misread": dict(sorted(wrong.items(), key=lambda kv: -kv[1])[:top])}
    return out


def _bins(outs: Sequence[Outcome], ss: Sequence[SceneScore]) -> list[dict[str, Any]]:
    """Rows of the 'harder' table from the base set itself: more objects, more overlap."""
    rows = []
    for lo, hi in ((3, 4), (5, 6), (7, 8), (9, 10)):
        o = [x for x in outs if lo <= x.objects <= hi]
        s = [x for x in ss if lo <= x.objects <= hi]
        if o:
            rows.append({"group": "objects", "label": f"{lo}-{hi} objects", **_acc(o), "detector": _det(s),
                         "causes": _causes(o)})
    for lo, hi, label in ((0.999, 2.0, "no object occluded"), (0.8, 0.999, "least visible 80-99%"),
                          (0.0, 0.8, "least visible < 80%")):
        o = [x for x in outs if lo <= x.min_visible < hi]
        s = [x for x in ss if lo <= x.min_visible < hi]
        if o:
            rows.append({"group": "overlap", "label": label, **_acc(o), "detector": _det(s), "causes": _causes(o)})
    return rows


def summarize(outcomes: Sequence[Outcome], scores: Sequence[SceneScore], cfg: BenchConfig, world_seed: int,
              examples: int | None = None) -> dict[str, Any]:
    base = [o for o in outcomes if o.condition == "base"]
    base_scores = [s for s in scores if s.condition == "base"]
    matched = sum(s.matched for s in base_scores)
    attributes = {a: round(sum(s.attributes_right[a] for s in base_scores) / matched, 4) if matched else None
                  for a in ATTRIBUTE_NAMES}
    families = {f: _acc([o for o in base if o.question.family == f]) for f in FAMILIES}
    harder = _bins(base, base_scores)
    for cond in CONDITIONS:
        o = [x for x in outcomes if x.condition == cond.name]
        if o:
            s = [x for x in scores if x.condition == cond.name]
            harder.append({"group": "condition", "label": cond.label, "condition": cond.name, **_acc(o),
                           "detector": _det(s), "causes": _causes(o),
                           "families": {f: _acc([x for x in o if x.question.family == f]) for f in FAMILIES}})
    misses = [o for o in base if not o.correct]
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "world_seed": world_seed,
        "overall": _acc(base),
        "families": families,
        "detector": _det(base_scores),
        "attributes": attributes,
        "confusions": confusions(base_scores),
        "causes": _causes(base),
        "harder": harder,
        "misses": [{"id": o.question.id, "condition": o.condition, "scene": o.question.scene,
                    "family": o.question.family, "question": o.question.question, "program": o.question.program,
                    "expected": o.question.answer, "got": o.got, "error": o.error, **o.why}
                   for o in [x for x in outcomes if not x.correct][:examples]],
        "miss_count": {"base": len(misses), "all": sum(not o.correct for o in outcomes)},
    }


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def print_report(report: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    # Piped into a file, rich would wrap the tables at 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 132)
    o = report["overall"]
    oracle = " [yellow](oracle perception: LOC reads ground truth)[/yellow]" if report["weights"].get("oracle") else ""
    console.print(f"[bold]shapes bench[/bold]{oracle}: {o['correct']}/{o['questions']} answers right = "
                  f"[bold]{_pct(o['accuracy'])}[/bold] on held-out scenes (world seed {report['world_seed']}), "
                  f"device {report.get('device')}, {report['time_s']['questions_per_s']} questions/s")
    t = Table(title="accuracy by family")
    for col in ("family", "questions", "correct", "accuracy"):
        t.add_column(col)
    for f, v in report["families"].items():
        t.add_row(f, str(v["questions"]), str(v["correct"]), _pct(v["accuracy"]))
    console.print(t)
    d = report["detector"]
    console.print(f"detector @ IoU {IOU}: precision {_pct(d['precision'])}, recall {_pct(d['recall'])} "
                  f"({d['tp']} matched, {d['fp']} spurious, {d['fn']} missed of {d['objects']} objects "
                  f"in {d['scenes']} scenes)")
    console.print("attribute accuracy on matched detections: "
                  + ", ".join(f"{a} {_pct(v)}" for a, v in report["attributes"].items()))
    for a, c in report["confusions"].items():
        if c["misread"]:
            console.print(f"  {a}: by value " + ", ".join(f"{k} {_pct(v)}" for k, v in c["by_value"].items())
                          + "; by size " + ", ".join(f"{k} {_pct(v)}" for k, v in c["by_size"].items())
                          + "; misread " + ", ".join(f"{k} ×{v}" for k, v in c["misread"].items()))
    if report["causes"]:
        console.print("why the misses: " + ", ".join(f"{k} {v}" for k, v in report["causes"].items()))
    t = Table(title="as scenes get harder")
    for col in ("scenes", "questions", "accuracy", "det. precision", "det. recall", "misses by cause"):
        t.add_column(col)
    for row in report["harder"]:
        det = row["detector"]
        t.add_row(row["label"], str(row["questions"]), _pct(row["accuracy"]), _pct(det["precision"]),
                  _pct(det["recall"]), ", ".join(f"{k} {v}" for k, v in row["causes"].items()) or "-")
    console.print(t)
    for m in report["misses"][:10]:
        detail = m.get("missed") or m.get("spurious") or m.get("wrong") or m.get("flips") or []
        console.print(f"[dim]{m['condition']} scene {m['scene']}[/dim] {m['question']} expected {m['expected']}, "
                      f"got {m['got']} → {m.get('cause')}" + (f": {'; '.join(detail[:3])}" if detail else ""))


def cmd_bench_shapes(args: argparse.Namespace) -> int:
    cfg = BenchConfig(questions=args.questions, seed=args.seed, per_scene=args.per_scene,
                      hard_questions=args.hard_questions, weights=Path(args.weights) if args.weights else None,
                      device=args.device or os.environ.get("NSX_DEVICE", "auto"), concurrency=args.concurrency,
                      oracle=args.oracle)
    if args.conditions:
        cfg.conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    try:
        report = asyncio.run(run_bench(cfg, progress=not args.quiet))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"nsx: {e}") from None
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0


def add_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` with its ``shapes`` benchmark to an argparse sub-parser set."""
    bench = subparsers.add_parser("bench", help="benchmarks that run programs through the executor")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    p = sub.add_parser("shapes", help="CLEVR-style question answering on held-out shapes scenes",
                       description="Answer accuracy (overall, per family), detector precision/recall at IoU 0.5, "
                                   "attribute accuracy, a harder-scenes table and the cause of every miss.")
    p.add_argument("--questions", type=int, default=1000, help="questions on the held-out set (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="picks the held-out scenes and questions (default 0)")
    p.add_argument("--per-scene", type=int, default=5, help="most questions per scene (default 5)")
    p.add_argument("--hard-questions", type=int, default=200,
                   help="questions on each harder set: crowded, overlap, 192px, 128px (default 200; 0 skips)")
    p.add_argument("--conditions", default=None, help="which harder sets, comma-separated (default all)")
    p.add_argument("--weights", default=None, metavar="DIR", help="weights directory (default: the pack's own)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default NSX_DEVICE or auto)")
    p.add_argument("--concurrency", type=int, default=8, help="scenes in flight at once (default 8)")
    p.add_argument("--oracle", action="store_true",
                   help="perfect perception (LOC reads ground truth): checks everything but the networks; "
                        "anything under 100%% is a bug")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON report to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_bench_shapes)
    return bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nsx")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
