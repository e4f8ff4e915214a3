"""The shapes benchmark: scoring and diagnosis on hand-made detections, and the whole run, through the
service's own runner, on a tiny configuration when trained weights are there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modules.shapes.files import REPORT_FILE, WEIGHTS, have_weights
from modules.shapes.tools.bench import SceneSource, check_held_out
from modules.shapes.tools.bench_report import SceneScore, confusions
from modules.shapes.tools.cli import main
from modules.shapes.tools.diagnosis import CAUSES, Detected, detections, diagnose, match
from modules.shapes.tools.questions import FAMILIES, Question
from modules.shapes.tools.seeds import BENCH_SEED_OFFSET
from modules.shapes.tools.world import ObjectSpec, WorldConfig, compose

HAVE_WEIGHTS = have_weights()

# The star and the triangle are 10 px apart on x: a box shifted by more than that, yet still matched at
# IoU 0.5, flips 'right of'.
SPECS = [
    ObjectSpec("circle", "red", "large", "solid", 60, 60),
    ObjectSpec("square", "blue", "small", "striped", 180, 70),
    ObjectSpec("star", "green", "small", "solid", 130, 180),
    ObjectSpec("triangle", "yellow", "large", "striped", 140, 120),
]


@pytest.fixture(scope="module")
def truth() -> dict[str, Any]:
    return compose(SPECS, seed=1).truth


def perfect(truth: dict[str, Any]) -> list[Detected]:
    return [Detected(tuple(float(v) for v in o["box"]), 0.9, {a: o[a] for a in ("shape", "color", "size", "material")})
            for o in truth["objects"]]


def question(program: str, answer: str) -> Question:
    return Question("t", 0, "count", "count", "?", program, answer, "nested")


def test_match_at_iou_half(truth: dict[str, Any]) -> None:
    dets = perfect(truth)
    m = match(dets, truth)
    assert m.exact and sorted(g for _, g in m.pairs) == [0, 1, 2, 3]
    x1, y1, x2, y2 = dets[0].box
    w = x2 - x1
    dets[0] = Detected((x1 + 0.6 * w, y1, x2 + 0.6 * w, y2), 0.9, dets[0].values)  # IoU 0.25: no longer a match
    dets.append(Detected((0, 0, 5, 5), 0.4, dets[1].values))
    m = match(dets, truth)
    assert m.missed == [0] and sorted(m.spurious) == [0, 4]


def test_detections_are_read_from_the_record_json() -> None:
    """The bench reads LOC's answer as a run record gives it: boxes, scores and, per attribute, the
    most likely value of its distribution ('matched' and other keys are not attributes)."""
    result = {"type": "objects", "count": 1, "items": [{
        "box": [1.5, 2, 11, 12.25], "score": 0.97, "label": "small red solid circle", "mask_key": "sha256:m",
        "attributes": {"shape": {"circle": 0.8, "star": 0.2}, "color": {"red": 0.6, "purple": 0.4},
                       "size": {"small": 0.9, "large": 0.1}, "material": {"solid": 0.7, "striped": 0.3},
                       "matched": [{"word": "red", "attribute": "color", "value": "red"}]}}]}
    [d] = detections(result)
    assert d.box == (1.5, 2.0, 11.0, 12.25) and d.score == 0.97
    assert d.values == {"shape": "circle", "color": "red", "size": "small", "material": "solid"}
    assert detections({"type": "objects", "count": 0, "items": []}) == [] and detections(None) == []


def test_diagnosis_finds_the_stage_that_failed(truth: dict[str, Any]) -> None:
    count_red = question("COUNT(LOC(IMAGE, 'red'))", "1")
    dets = perfect(truth)
    missed = dets[1:]
    why = diagnose(count_red, "0", missed, truth, match(missed, truth))
    assert why["cause"] == "detector" and why["missed"][0].startswith("large red solid circle")

    misread = perfect(truth)
    misread[0] = Detected(misread[0].box, 0.9, {**misread[0].values, "color": "purple"})
    why = diagnose(count_red, "0", misread, truth, match(misread, truth))
    assert why["cause"] == "attribute" and why["wrong"] == ["large red solid circle: color read as purple"]

    # The triangle (x 140) is right of the star (x 130); a box 12 px too far left says otherwise.
    right_of_star = question("s = LOC(IMAGE, 'object')\nCOUNT(RELATE(s, UNIQUE(FILTER(s, 'star')), 'right'))", "2")
    shifted = perfect(truth)
    x1, y1, x2, y2 = shifted[3].box
    shifted[3] = Detected((x1 - 12, y1, x2 - 12, y2), 0.9, shifted[3].values)
    m = match(shifted, truth)
    assert m.exact  # still the same object at IoU 0.5 … but on the other side of the star
    why = diagnose(right_of_star, "1", shifted, truth, m)
    assert why["cause"] == "relation" and any("x gap" in f for f in why["flips"])

    # The modules said something the same detections cannot give: a bug, not perception.
    why = diagnose(count_red, "7", perfect(truth), truth, match(perfect(truth), truth))
    assert why["cause"] == "executor"


def test_confusions_name_the_misreadings() -> None:
    true = {"shape": "star", "color": "red", "size": "small", "material": "solid"}
    s = SceneScore("base", 2, 1.0, 2, 0, 0, {}, 2, [(true, {**true, "shape": "circle"}), (true, true)])
    c = confusions([s])
    assert c["shape"]["misread"] == {"star→circle": 1}
    assert c["shape"]["by_value"] == {"star": 0.5} and c["shape"]["by_size"] == {"small": 0.5}
    assert c["color"]["misread"] == {}


def test_held_out_scenes_are_not_training_scenes(tmp_path: Path) -> None:
    (tmp_path / REPORT_FILE).write_text(json.dumps({"seed": BENCH_SEED_OFFSET, "scene_counts": {"heldout_seed": 9}}))
    with pytest.raises(ValueError, match="trained or scored on"):
        check_held_out(BENCH_SEED_OFFSET, tmp_path)
    check_held_out(BENCH_SEED_OFFSET + 1, tmp_path)
    # Conditions draw from separate blocks of scene indices: no scene is shared.
    a, b = SceneSource(BENCH_SEED_OFFSET, 0, WorldConfig()), SceneSource(BENCH_SEED_OFFSET, 1, WorldConfig())
    assert a.get(0).truth["index"] != b.get(0).truth["index"]


def test_bench_with_oracle_perception_answers_everything(capsys: pytest.CaptureFixture[str]) -> None:
    """No weights needed: LOC reads ground truth, so the real compiler, executor, cache and symbolic
    modules must reproduce every generated answer, on the held-out set and on a harder one."""
    from app.service import open_runner

    rc = main(["bench", "shapes", "--oracle", "--questions", "80", "--hard-questions", "24", "--conditions",
               "crowded", "--seed", "1", "--device", "cpu", "--json", "-q"], open_runner)
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["weights"] == {"oracle": True}
    assert report["overall"] == {"questions": 80, "correct": 80, "accuracy": 1.0}
    assert all(f["questions"] == 10 and f["accuracy"] == 1.0 for f in report["families"].values())
    assert report["detector"]["precision"] == report["detector"]["recall"] == 1.0
    crowded = next(r for r in report["harder"] if r.get("condition") == "crowded")
    assert crowded["questions"] == 24 and crowded["accuracy"] == 1.0
    assert report["misses"] == [] and report["causes"] == {}


@pytest.mark.skipif(not HAVE_WEIGHTS, reason=f"no trained weights in {WEIGHTS} (run `nsx shapes train`)")
def test_bench_end_to_end_on_a_tiny_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    from app.service import open_runner

    rc = main(["bench", "shapes", "--questions", "24", "--hard-questions", "8", "--conditions", "128px",
               "--per-scene", "4", "--seed", "3", "--device", "cpu", "--json", "-q"], open_runner)
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overall"]["questions"] == 24
    assert set(report["families"]) == set(FAMILIES)
    assert sum(f["questions"] for f in report["families"].values()) == 24
    assert 0 <= report["detector"]["precision"] <= 1 and 0 <= report["detector"]["recall"] <= 1
    assert set(report["attributes"]) == {"shape", "color", "size", "material"}
    assert [r["condition"] for r in report["harder"] if r["group"] == "condition"] == ["base", "128px"]
    for miss in report["misses"]:
        assert miss["cause"] in CAUSES
        # Misses are perception's; the modules and the reference never disagree over the same detections.
        assert miss["cause"] not in ("executor", "reference"), miss
