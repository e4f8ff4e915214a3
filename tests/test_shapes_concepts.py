"""Words → concepts: exact words need no model; synonyms and unseen words go to the nearest concept
by all-MiniLM-L6-v2 (shipped in a package, offline); words too far from any concept fail clearly."""

from __future__ import annotations

import pytest

from modules.base import ModuleError
from modules.shapes.concepts import Concepts, UnknownConcept, shared


@pytest.fixture(scope="module")
def mapper() -> Concepts:
    m = shared()  # the pack's own mapper: the text model loads once for all the shapes tests
    m.warm()
    return m


def test_exact_words_bypass_the_model() -> None:
    fresh = Concepts()
    q = fresh.phrase("the large red striped circles")
    assert [(m.attribute, m.value, m.exact) for m in q.matches] == [
        ("size", "large", True), ("color", "red", True), ("material", "striped", True), ("shape", "circle", True)]
    assert fresh.phrase("object").matches == () and fresh.phrase("things").matches == ()
    assert not fresh.loaded  # no model was needed


@pytest.mark.parametrize(("word", "attribute", "value"), [
    ("ball", "shape", "circle"), ("round", "shape", "circle"), ("cube", "shape", "square"),
    ("crimson", "color", "red"), ("big", "size", "large"), ("tiny", "size", "small"),
    ("metallic", "material", "striped"), ("shiny", "material", "striped"), ("rubber", "material", "solid"),
])
def test_synonyms(mapper: Concepts, word: str, attribute: str, value: str) -> None:
    m = mapper.word(word)
    assert (m.attribute, m.value, m.exact) == (attribute, value, False)
    assert m.similarity > mapper.threshold


@pytest.mark.parametrize(("word", "attribute", "value"), [
    ("enormous", "size", "large"), ("spherical", "shape", "circle"), ("reddish", "color", "red"),
    ("cubes", "shape", "square"), ("pyramidal", "shape", "triangle"),
])
def test_unseen_words_go_to_the_nearest_concept(mapper: Concepts, word: str, attribute: str, value: str) -> None:
    m = mapper.word(word)
    assert (m.attribute, m.value) == (attribute, value)
    assert mapper.threshold < m.similarity < 1.0


def test_a_phrase_records_each_mapping(mapper: Concepts) -> None:
    q = mapper.phrase("big crimson ball")
    assert q.wants() == {"size": {"large"}, "color": {"red"}, "shape": {"circle"}}
    doc = q.to_json()
    assert doc[2]["word"] == "ball" and doc[2]["value"] == "circle" and 0 < doc[2]["similarity"] <= 1
    assert q.accepts({"size": "large", "color": "red", "shape": "circle", "material": "solid"})
    assert not q.accepts({"size": "small", "color": "red", "shape": "circle", "material": "solid"})


@pytest.mark.parametrize("word", ["xylophone", "democracy", "quickly"])
def test_words_far_from_every_concept_fail_naming_the_concepts(mapper: Concepts, word: str) -> None:
    with pytest.raises(UnknownConcept) as e:
        mapper.phrase(f"large {word}")
    assert isinstance(e.value, ModuleError)
    assert f"'{word}'" in str(e.value)
    assert "color: gray, red, blue" in str(e.value) and "shape: circle" in str(e.value)


def test_a_word_between_two_values_is_refused(mapper: Concepts) -> None:
    with pytest.raises(UnknownConcept, match="ambiguous"):
        mapper.word("orange")
