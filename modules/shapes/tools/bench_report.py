"""The shapes bench's figures: answer accuracy (overall, per family, per harder set), detector
precision and recall, attribute accuracy and confusions, the causes of the misses; as JSON and as
the tables ``nsx bench shapes`` prints."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..vocab import ATTRIBUTE_NAMES
from .diagnosis import CAUSES, IOU
from .questions import FAMILIES, Question


@dataclass
class Outcome:
    """One question's run: the answer got, and where it was wrong, why (``diagnosis.diagnose``)."""

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
    """Perception on one scene: detections matched to its objects, attributes read right."""

    condition: str
    objects: int
    min_visible: float
    tp: int
    fp: int
    fn: int
    attributes_right: dict[str, int]
    matched: int
    pairs: list[tuple[dict[str, str], dict[str, str]]] = field(default_factory=list)  # (true, read) per match


def _acc(outs: Sequence[Outcome]) -> dict[str, Any]:
    right = sum(o.correct for o in outs)
    return {"questions": len(outs), "correct": right, "accuracy": round(right / len(outs), 4) if outs else None}


def _det(ss: Sequence[SceneScore]) -> dict[str, Any]:
    tp, fp, fn = sum(s.tp for s in ss), sum(s.fp for s in ss), sum(s.fn for s in ss)
    return {"scenes": len(ss), "objects": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None}


def _causes(outs: Sequence[Outcome]) -> dict[str, int]:
    counts = dict.fromkeys(CAUSES, 0)
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
    for least, most in ((3, 4), (5, 6), (7, 8), (9, 10)):
        o = [x for x in outs if least <= x.objects <= most]
        s = [x for x in ss if least <= x.objects <= most]
        if o:
            rows.append({"group": "objects", "label": f"{least}-{most} objects", **_acc(o), "detector": _det(s),
                         "causes": _causes(o)})
    for lo, hi, label in ((0.999, 2.0, "no object occluded"), (0.8, 0.999, "least visible 80-99%"),
                          (0.0, 0.8, "least visible < 80%")):
        o = [x for x in outs if lo <= x.min_visible < hi]
        s = [x for x in ss if lo <= x.min_visible < hi]
        if o:
            rows.append({"group": "overlap", "label": label, **_acc(o), "detector": _det(s), "causes": _causes(o)})
    return rows


def summarize(outcomes: Sequence[Outcome], scores: Sequence[SceneScore], config: Mapping[str, Any], world_seed: int,
              conditions: Mapping[str, str], examples: int | None = None) -> dict[str, Any]:
    """The report: ``config`` as the run was configured, ``conditions`` every set of scenes by name
    with its label, in the order the table lists them (the base set first)."""
    base = [o for o in outcomes if o.condition == "base"]
    base_scores = [s for s in scores if s.condition == "base"]
    matched = sum(s.matched for s in base_scores)
    attributes = {a: round(sum(s.attributes_right[a] for s in base_scores) / matched, 4) if matched else None
                  for a in ATTRIBUTE_NAMES}
    families = {f: _acc([o for o in base if o.question.family == f]) for f in FAMILIES}
    harder = _bins(base, base_scores)
    for name, label in conditions.items():
        o = [x for x in outcomes if x.condition == name]
        if o:
            s = [x for x in scores if x.condition == name]
            harder.append({"group": "condition", "label": label, "condition": name, **_acc(o),
                           "detector": _det(s), "causes": _causes(o),
                           "families": {f: _acc([x for x in o if x.question.family == f]) for f in FAMILIES}})
    misses = [o for o in base if not o.correct]
    return {
        "config": dict(config),
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
