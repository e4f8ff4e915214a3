"""A scene's ground truth read the way CLEVR's question engine reads it, and descriptions of its
objects: one that fits a single object (what a question may call 'the small square'), or one
that picks a set (what it may count)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..vocab import ATTRIBUTES, WORD_ORDER
from .programs import Desc


class SceneTruth:
    """A scene's ground truth, read the way CLEVR's question engine reads its scenes."""

    def __init__(self, truth: Mapping[str, Any]) -> None:
        self.objects: list[Mapping[str, Any]] = list(truth["objects"])
        self.n = len(self.objects)
        self.all = tuple(range(self.n))
        self.rel: Mapping[str, list[list[int]]] = truth["relationships"]

    def select(self, ids: Iterable[int], desc: Desc) -> tuple[int, ...]:
        return tuple(i for i in ids if all(self.objects[i][a] == v for a, v in desc.items()))

    def related(self, anchor: int, relation: str) -> tuple[int, ...]:
        return tuple(sorted(self.rel[relation][anchor]))

    def value(self, i: int, attribute: str) -> str:
        return str(self.objects[i][attribute])


def _subsets(attrs: Sequence[str]) -> list[tuple[str, ...]]:
    return [c for k in range(len(attrs) + 1) for c in itertools.combinations(attrs, k)]


def unique_description(truth: SceneTruth, target: int, among: Sequence[int], rng: np.random.Generator,
                       exclude: Iterable[str] = (), allow_empty: bool = False) -> dict[str, str] | None:
    """A description of ``target`` that fits no other object of ``among``, or None when none does
    (two objects alike in every attribute that may be named). Shorter descriptions are likelier, as
    people use them, but longer ones appear too so every attribute word is exercised."""
    attrs = [a for a in WORD_ORDER if a not in set(exclude)]
    fits = []
    for subset in _subsets(attrs):
        if not subset and not allow_empty:
            continue
        desc = {a: truth.value(target, a) for a in subset}
        if truth.select(among, desc) == (target,):
            fits.append(desc)
    if not fits:
        return None
    shortest = min(len(d) for d in fits)
    weights = np.array([1.0 / (1 + len(d) - shortest) ** 2 for d in fits])
    return fits[int(rng.choice(len(fits), p=weights / weights.sum()))]


def random_description(truth: SceneTruth, rng: np.random.Generator, among: Sequence[int] | None = None,
                       allow_empty: bool = False) -> dict[str, str]:
    """A description for a filter: usually some attributes of an object that is there (so sets are
    seldom empty), sometimes values drawn at random (so some are)."""
    among = truth.all if among is None else among
    if allow_empty and rng.uniform() < 0.15:
        return {}
    k = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    attrs = sorted(rng.choice(len(WORD_ORDER), size=k, replace=False))
    names = [WORD_ORDER[i] for i in attrs]
    if among and rng.uniform() < 0.75:
        o = int(rng.choice(among))
        return {a: truth.value(o, a) for a in names}
    return {a: str(ATTRIBUTES[a][int(rng.integers(len(ATTRIBUTES[a])))]) for a in names}
