"""The workload benchmark's baselines (``bench/baselines.py``): the sequential interpreter and its
dict memo answer as the run service does, and the memo computes each distinct call once. Correctness
only: no timing is asserted."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from app.service import open_runner
from bench.baselines import Memo, Sequential, load
from bench.workload import answer_of, distinct_calls, make_workload, metric
from modules.packs import load_packs
from modules.shapes.files import WEIGHTS, have_weights
from modules.shapes.tools.bench import answer_of as record_answer
from modules.shapes.tools.programs import normalize_answer
from modules.values import ImageValue

needs_weights = pytest.mark.skipif(not have_weights(), reason=f"no trained weights in {WEIGHTS}")


def image(colour: tuple[int, int, int]) -> ImageValue:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(buf, format="PNG")
    return ImageValue.from_bytes(buf.getvalue())


def test_memo_keys_on_constants_and_inputs() -> None:
    loaded = load(load_packs(["core"]), "cpu")
    memo = Memo(loaded)
    a, b = image((10, 20, 30)), image((200, 0, 0))
    program = "n = COUNT(box=REGION(image=IMAGE, box=[1, 1, 9, 9]))"
    other = "n = COUNT(box=REGION(image=IMAGE, box=[2, 2, 9, 9]))"
    assert [memo.run(p, {"IMAGE": im}).value for p, im in ((program, a), (program, a), (program, b), (other, a))] \
        == [1, 1, 1, 1]
    # The same call on the same image once; another image or another constant is another call.
    assert memo.misses["core.REGION"] == 3 and memo.hits["core.REGION"] == 1
    assert memo.forwards["core.REGION"] == 3 and memo.forwards["core.COUNT"] == 3
    seq = Sequential(loaded)
    for _ in range(3):
        assert seq.run(program, {"IMAGE": a}).value == 1
    assert seq.forwards["core.REGION"] == 3
    memo.reset()
    assert not memo.memo and not memo.forwards and not memo.plans


def test_failures_are_answers_not_crashes() -> None:
    loaded = load(load_packs(["core"]), "cpu")
    out = Sequential(loaded).run("x = EVAL(expr='1 +')", {"IMAGE": image((0, 0, 0))})
    assert out.value is None and out.error
    assert Sequential(loaded).run("x = NOPE(image=IMAGE)", {"IMAGE": image((0, 0, 0))}).error


def test_record_answers_and_metrics_parse() -> None:
    assert answer_of({"status": "succeeded", "result": {"type": "Bool", "value": True}}) == "yes"
    assert answer_of({"status": "succeeded", "result": {"type": "Number", "value": 3.0}}) == "3"
    assert answer_of({"status": "failed", "result": None}) == "<none>"
    text = ('# HELP x\nnsx_module_batches_total{module="LOC"} 4.0\nnsx_module_batches_total{module="PROBE"} 9.0\n'
            'nsx_step_cache_total{module="LOC",outcome="hit"} 2.0\n')
    assert metric(text, "nsx_module_batches_total", module="LOC") == 4.0
    assert metric(text, "nsx_step_cache_total", module="LOC", outcome="hit") == 2.0
    assert metric(text, "nsx_module_batches_total", module="VQA") == 0.0


@needs_weights
def test_baselines_answer_as_the_run_service() -> None:
    work = make_workload(24, 8, seed=0)
    assert len(work.pngs) == 3 and len(work.questions) == 24
    packs = load_packs(["core", "shapes"])
    loaded = load(packs, "cpu")  # the very module objects the runner below runs
    images = {s: ImageValue.from_bytes(png) for s, png in work.pngs.items()}
    seq, memo = Sequential(loaded), Memo(loaded)
    local = []
    for q in work.questions:
        a, b = seq.run(q.program, {"IMAGE": images[q.scene]}), memo.run(q.program, {"IMAGE": images[q.scene]})
        assert a.error is None and b.error is None, (q.program, a.error, b.error)
        local.append((normalize_answer(a.value), normalize_answer(b.value)))

    async def service() -> list[str]:
        async with open_runner(packs, device="cpu") as runner:
            records = await asyncio.gather(*(runner.run(q.program, {"IMAGE": images[q.scene]})
                                             for q in work.questions))
        return [record_answer(r) for r in records]

    served = asyncio.run(service())
    assert [a for a, _ in local] == served
    assert [b for _, b in local] == served

    # Every distinct LOC call computed once by the memo, every LOC step by the sequential loop.
    distinct = distinct_calls(seq, work.questions)
    loc_steps = sum(s.module == "LOC" for q in work.questions for s in seq.compile(q.program).steps)
    assert memo.misses["shapes.LOC"] == memo.forwards["shapes.LOC"] == distinct < loc_steps
    assert seq.forwards["shapes.LOC"] == loc_steps
    assert sum(memo.forwards.values()) == len(memo.memo)
    before = dict(memo.forwards)
    for q in work.questions:
        memo.run(q.program, {"IMAGE": images[q.scene]})
    assert dict(memo.forwards) == before  # a second pass is all hits
