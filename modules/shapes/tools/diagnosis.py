"""Why the shapes bench missed a question: detections matched to the ground truth, and the detected
scene repaired one stage at a time until the symbolic reference gives the right answer.

1. ``detector``: answered right once missed objects are added and spurious ones removed;
2. ``attribute``: right once the matched objects get their true attributes;
3. ``relation``: right only once boxes move to their true centres (two centres close on one axis);
4. ``executor``: the modules answered differently from the reference over the same detections,
   which is a bug in a module or in the language, not a perception error;
5. ``reference``: none of the repairs helps: the truth itself gives another answer (a generator bug).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...values import box_iou
from .. import most_likely
from ..vocab import ATTRIBUTE_NAMES, WORD_ORDER
from .questions import Question
from .reference import Unanswerable, reference_answer

IOU = 0.5  # a detection is an object's when their boxes overlap this much (intersection over union)
CAUSES: tuple[str, ...] = ("detector", "attribute", "relation", "executor", "reference")


@dataclass
class Detected:
    """One detection as the bench reads it: box, score and the most likely value of each attribute."""

    box: tuple[float, float, float, float]
    score: float
    values: dict[str, str]

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def detections(result: Mapping[str, Any] | None) -> list[Detected]:
    """The detections in LOC's answer as a run record gives it (``{"type": "objects", "items": […]}``,
    each item with its box, score and ``{attribute: {value: probability}}``)."""
    out = []
    for item in (result or {}).get("items", ()):
        x1, y1, x2, y2 = (float(v) for v in item["box"])
        out.append(Detected((x1, y1, x2, y2), float(item["score"]), most_likely(item.get("attributes") or {})))
    return out


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
    except Unanswerable:
        return "<none>"


def diagnose(q: Question, got: str, dets: Sequence[Detected], truth: Mapping[str, Any], m: Matching
             ) -> dict[str, Any]:
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
        out["spurious"] = [f"{_describe(dets[d].values)} at {[round(v) for v in dets[d].box]} "
                           f"score {dets[d].score:.2f}" for d in m.spurious]
    elif cause == "attribute":
        out["wrong"] = [f"{_describe(gt[g])}: {a} read as {dets[d].values.get(a)}"
                        for d, g in m.pairs for a in ATTRIBUTE_NAMES if dets[d].values.get(a) != gt[g][a]]
    elif cause == "relation":
        out["flips"] = _flips(dets, truth, m)
    return out


def _describe(o: Mapping[str, Any]) -> str:
    return " ".join(str(o.get(a, "?")) for a in WORD_ORDER)


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
