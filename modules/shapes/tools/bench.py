"""``nsx bench shapes``: how well the shapes pack answers CLEVR-style questions, and why it misses.

Scenes are held out: they are drawn from the world seed ``seeds.bench_seed(--seed)``, which no
training run uses (see ``seeds``; the bench refuses weights whose report names its seed). Each
question's program runs through the service's own run path in this process (the ``Runner`` that
``nsx`` gives the pack's commands: the same compiler, pool, batching, cache and modules as the
service), and its answer is compared with the one computed from ground truth.

Beside answer accuracy (overall and per family) the bench scores the perception the answers rest
on: the detector's precision and recall at IoU 0.5 and the attribute classifier's accuracy on the
detections it matched, read from LOC's answer in the run record as a client would. Every missed
question gets a cause (``diagnosis``): detector, attribute, relation, or executor (the modules
answered differently from the symbolic reference over the same detections: a bug, not perception).

A table shows how accuracy holds as scenes get harder: by number of objects and by overlap within
the held-out set, and on extra held-out sets that are more crowded, more overlapped, or smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from modules.base import Module, ModuleError, Pack
from modules.commands import OpenRunner, RunView
from modules.values import Obj, Objects

from .. import LOC_SIG, LOC_VOCABULARY, select
from ..files import REPORT_FILE, WEIGHTS, weight_files
from ..vocab import ATTRIBUTE_NAMES, ATTRIBUTES, label
from .bench_report import Outcome, SceneScore, print_report, summarize
from .diagnosis import detections, diagnose, match
from .programs import normalize_answer
from .questions import Question, generate_questions
from .seeds import CONDITION_STRIDE, bench_seed, question_seed
from .world import Scene, WorldConfig, render_scene

DETECT = "LOC(IMAGE, 'object')"  # every object of a scene: what perception is scored on


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
    report = weights / REPORT_FILE
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


# ----------------------------------------------------------------------------- the modules


class OracleLoc(Module):
    """LOC with perfect perception: every object of the scene, from its ground truth, with certain
    attributes. With it the bench measures everything but the networks — compiler, executor, the
    symbolic modules, the generator — and anything short of 100% is a bug, not a perception error."""

    signature = replace(LOC_SIG, version="oracle")  # its own cache keys: never mixed with LOC's
    cheap = True
    bounded = True  # a lookup in the ground truth
    vocabulary = LOC_VOCABULARY  # the phrases go where the real LOC's would

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
                x1, y1, x2, y2 = (float(v) for v in o["box"])
                items.append(Obj((x1, y1, x2, y2), 1.0, label({a: str(o[a]) for a in ATTRIBUTE_NAMES}), attrs))
            items.sort(key=lambda ob: (ob.box[0] + ob.box[2], ob.box[1] + ob.box[3]))
            found = Objects(tuple(items), image.key, (image.width, image.height))
            try:
                out.append(select(found, str(args.get("object", "object")), "LOC"))
            except ModuleError as e:
                out.append(e)
        return out


def bench_packs(weights: Path | None = None, oracle: OracleLoc | None = None) -> tuple[list[Pack], Module]:
    """core + shapes, with LOC reading ``weights`` when given (a training run's output, say), or the
    oracle in its place; and the LOC they hold."""
    from modules.core import pack as core_pack

    from .. import Loc
    from .. import pack as shapes_pack

    shapes = shapes_pack()
    loc: Module
    if oracle is not None:
        loc = oracle
    elif weights is not None:
        loc = Loc(weights)
    else:
        loc = next(m for m in shapes.modules if m.name == "LOC")
    shapes = replace(shapes, modules=[loc if m.name == "LOC" else m for m in shapes.modules])
    return [core_pack(), shapes], loc


def answer_of(record: RunView) -> str:
    """A run's answer, normalised as the questions' are; ``<none>`` when it has none."""
    doc = record.result
    if record.status != "succeeded" or doc is None:
        return "<none>"
    return normalize_answer(doc["value"]) if "value" in doc else f"<{doc.get('type')}>"


# ----------------------------------------------------------------------------- the run


async def run_bench(cfg: BenchConfig, open_runner: OpenRunner, progress: bool = True) -> dict[str, Any]:
    """Generate the questions, run them all through a runner from ``open_runner``, score and explain.
    Returns the report."""
    from tqdm import tqdm

    from modules.values import ImageValue

    if cfg.seed < 0 or cfg.questions < 0 or cfg.hard_questions < 0:
        raise ValueError("--seed, --questions and --hard-questions must be >= 0")
    weights = cfg.weights or WEIGHTS
    world_seed = bench_seed(cfg.seed)
    oracle = OracleLoc() if cfg.oracle else None
    if oracle is None:
        check_held_out(world_seed, weights)
        for f in weight_files(weights):
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
        qs = generate_questions(iter(source), n, seed=question_seed(cfg.seed, ci), per_scene=cfg.per_scene)
        plan_jobs.append((cond, source, qs))
    t_generate = time.perf_counter() - t0

    packs, loc = bench_packs(cfg.weights, oracle)
    outcomes: list[Outcome] = []
    scores: list[SceneScore] = []
    total = sum(len(qs) for _, _, qs in plan_jobs)
    async with open_runner(packs, device=cfg.device, store_mb=cfg.store_mb) as runner:
        t_load = time.perf_counter() - t0 - t_generate
        bar = tqdm(total=total, desc="questions", unit="q", disable=not progress, file=sys.stderr)

        async def one_scene(cond: Condition, source: SceneSource, scene_id: int, qs: list[Question]) -> None:
            truth = source.get(scene_id).truth
            image = ImageValue.from_bytes(source.png(scene_id))
            if oracle is not None:
                oracle.truths[image.key] = truth
            images = {"IMAGE": image}
            runs = await asyncio.gather(runner.run(DETECT, images), *(runner.run(q.program, images) for q in qs))
            detection, answers = runs[0], runs[1:]
            if detection.status != "succeeded":
                raise RuntimeError(f"LOC failed on scene {scene_id} of {cond.name}: {detection.error}")
            dets = detections(detection.result)
            m = match(dets, truth)
            objs = truth["objects"]
            min_vis = min((float(o.get("visible_fraction", 1.0)) for o in objs), default=1.0)
            right = {a: sum(dets[d].values.get(a) == objs[g][a] for d, g in m.pairs) for a in ATTRIBUTE_NAMES}
            pairs = [({a: str(objs[g][a]) for a in ATTRIBUTE_NAMES}, dets[d].values) for d, g in m.pairs]
            scores.append(SceneScore(cond.name, len(objs), min_vis, len(m.pairs), len(m.spurious), len(m.missed),
                                     right, len(m.pairs), pairs))
            for q, record in zip(qs, answers):
                got = answer_of(record)
                o = Outcome(q, cond.name, got, got == q.answer, record.error, len(objs), min_vis)
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
    t_run = time.perf_counter() - t0 - t_generate - t_load
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    report = summarize(outcomes, scores, config, world_seed, {c.name: c.label for c in CONDITIONS},
                       examples=cfg.examples)
    report["weights"] = {"oracle": True} if oracle is not None else {"dir": str(weights), "loc_version": loc.version}
    report["device"] = loc.device
    report["time_s"] = {"generate": round(t_generate, 2), "load": round(t_load, 2), "run": round(t_run, 2),
                        "questions_per_s": round(total / t_run, 2) if t_run > 0 else None}
    return report


def cmd_bench_shapes(args: argparse.Namespace, open_runner: OpenRunner) -> int:
    cfg = BenchConfig(questions=args.questions, seed=args.seed, per_scene=args.per_scene,
                      hard_questions=args.hard_questions, weights=Path(args.weights) if args.weights else None,
                      device=args.device or os.environ.get("NSX_DEVICE", "auto"), concurrency=args.concurrency,
                      oracle=args.oracle)
    if args.conditions:
        cfg.conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    try:
        report = asyncio.run(run_bench(cfg, open_runner, progress=not args.quiet))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"nsx: {e}") from None
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0
