"""The shapes world's words: the attributes an object has, the values each takes, the relations
between objects, and the order the words go in a phrase.

The modules, the networks and the words → concepts layer read them here, so the service never
imports the world generator; the generator (``tools/world.py``) draws its scenes in these words.
"""

from __future__ import annotations

from collections.abc import Mapping

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
COLORS: tuple[str, ...] = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")  # CLEVR's eight
SIZES: tuple[str, ...] = ("small", "large")
MATERIALS: tuple[str, ...] = ("solid", "striped")
ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": COLORS, "size": SIZES, "material": MATERIALS}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
WORD_ORDER: tuple[str, ...] = ("size", "color", "material", "shape")  # 'large red striped circle'


def label(values: Mapping[str, str]) -> str:
    """An object's label from its attribute values, in phrase order: 'large red striped circle'."""
    return " ".join(values[a] for a in WORD_ORDER if a in values)
