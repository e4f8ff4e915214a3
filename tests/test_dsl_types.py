"""One value → type function for the compiler, the evaluator and the service: scalars and lists by
their Python type, other values by the ``nsx_type`` their class declares, anything else Any."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from modules.catalog import declared_catalog
from modules.core import SIGNATURES as CORE
from program_dsl import EvalError, compile_program, evaluate_text
from program_dsl.types import ANY, BOOL, IMAGE, NONE, NUMBER, OBJECTS, TEXT, List, Type, join_types, type_label, type_of

CATALOG = declared_catalog(*CORE)


class Picture:
    nsx_type: ClassVar[Type] = IMAGE


class Boxes(list[object]):
    """A list that says what it is: its declared type wins over being a list."""

    nsx_type: ClassVar[Type] = OBJECTS


class NotAType:
    nsx_type = "Image"


class Plain:
    pass


@pytest.mark.parametrize(
    ("value", "typ"),
    [
        (True, BOOL), (False, BOOL), (0, NUMBER), (2.5, NUMBER), (float("nan"), NUMBER), ("", TEXT),
        ("a", TEXT), (None, NONE), ([], List(ANY)), ([1, 2.5], List(NUMBER)), (["a", 1], List(ANY)),
        ([[1], [2]], List(List(NUMBER))), ([True, 1], List(ANY)), ([None], List(NONE)),
        (Picture(), IMAGE), (Boxes(), OBJECTS), ([Picture(), Picture()], List(IMAGE)),
        (NotAType(), ANY), (Plain(), ANY), ((1, 2), ANY), ({"a": 1}, ANY),
    ],
)
def test_type_of(value: Any, typ: Type) -> None:
    assert type_of(value) == typ


def test_nsx_type_is_read_from_the_class_not_the_instance() -> None:
    value = Plain()
    value.nsx_type = IMAGE  # type: ignore[attr-defined]
    assert type_of(value) == ANY


def test_join_types() -> None:
    assert join_types([]) == ANY
    assert join_types([TEXT, TEXT]) == TEXT
    assert join_types([TEXT, NUMBER]) == ANY
    assert join_types(iter([IMAGE])) == IMAGE


@pytest.mark.parametrize(
    ("value", "label"),
    [(True, "Bool"), (1, "Number"), ("a", "Text"), (None, "None"), ([1], "List"), ([], "List"),
     (Picture(), "Image"), (Plain(), "Plain"), ((1,), "tuple")],
)
def test_type_label_names_the_language_type_or_the_python_class(value: Any, label: str) -> None:
    assert type_label(value) == label


def test_the_evaluator_names_types_as_the_language_does() -> None:
    with pytest.raises(EvalError, match="^cannot compare Image > Number$"):
        evaluate_text("x > 1", {"x": Picture()})
    with pytest.raises(EvalError, match="^'-' needs numbers, got Objects$"):
        evaluate_text("-x", {"x": Boxes()})
    # A value the language has no type for is named by its Python class, as before.
    with pytest.raises(EvalError, match="^'in' needs a text or a list on its right, got Plain$"):
        evaluate_text("1 in x", {"x": Plain()})


@pytest.mark.parametrize(
    ("text", "typ"),
    [("[]", List(ANY)), ("[1, 2]", List(NUMBER)), ("[[1], ['a']]", List(ANY)), ("None", NONE), ("'a' + 'b'", TEXT),
     # The branches' types differ, so the folded value's own type is the result's.
     ("[1] if True else ['a']", List(NUMBER))],
)
def test_the_compiler_types_constants_with_the_same_function(text: str, typ: Type) -> None:
    plan = compile_program(text, CATALOG)
    assert plan.result_type == typ
    assert type_of(plan.result.value) == typ  # type: ignore[union-attr]
