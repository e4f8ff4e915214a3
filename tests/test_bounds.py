"""What a client can make the service remember is bounded by bytes, not by a count of entries:
compiled plans, parsed expressions and ranked words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modules.words import MEMO_WORD, Anchors
from program_dsl import compile_cached
from program_dsl.compiler import PLANS, PlanMemo
from program_dsl.evaluate import MEMO_EXPRESSION, _memo_expression, compiled_expression
from tests.test_dsl_eval import CATALOG


def test_the_plan_memo_keeps_within_its_bytes_dropping_the_oldest() -> None:
    memo = PlanMemo(max_bytes=200_000)
    plan: Any = object()
    for i in range(100):
        memo.put(("p", i), plan, "x" * 1000, 0)  # 8 KiB + 64 KB estimated each
        assert memo.bytes <= memo.max_bytes
    assert len(memo) == 2 and memo.get(("p", 99)) is plan and memo.get(("p", 0)) is None
    memo.put(("huge",), plan, "x" * 10_000, 0)  # larger than the whole memo: not kept at all
    assert memo.get(("huge",)) is None and len(memo) == 2


def test_compile_cached_counts_what_it_keeps() -> None:
    before = PLANS.bytes
    text = "n = 1 + 2\nm = n * 3\n# a comment to make this text its own\n"
    first = compile_cached(text, CATALOG)
    assert compile_cached(text, CATALOG) is first
    assert PLANS.bytes - before == PlanMemo.PER_ENTRY + PlanMemo.PER_BYTE * len(text)


def test_long_expressions_are_parsed_but_not_kept() -> None:
    short = "1 + 2"
    long = "'" + "a" * MEMO_EXPRESSION + "'"
    assert len(long) > MEMO_EXPRESSION
    _memo_expression.cache_clear()
    compiled_expression(short)
    compiled_expression(long)
    assert _memo_expression.cache_info().currsize == 1


class Letters:
    """An embedder that needs no model: a word's vector is its letter counts."""

    def encode(self, words: Sequence[str]) -> Any:
        out = np.zeros((len(words), 26), np.float32)
        for i, w in enumerate(words):
            for ch in w:
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_ranked_words_are_kept_only_when_they_are_words() -> None:
    anchors: Anchors[str] = Anchors({"red": ["red"], "blue": ["blue"]}, model=Letters(), memo=3)  # type: ignore[arg-type]
    invented = "r" * (MEMO_WORD + 1)
    assert anchors.rank(invented)[0][0] == "red"
    assert anchors.rank("reed")[0][0] == "red"
    assert list(anchors._seen) == ["reed"]
    for w in ("bleu", "rde", "blu"):
        anchors.rank(w)
    assert list(anchors._seen) == ["bleu", "rde", "blu"]  # at most memo words
