"""Runtime values that flow between steps. Images carry their content key, so keys chain."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from program_dsl import IMAGE, OBJECTS, Type


def sha256_key(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, eq=False)
class ImageValue:
    """An RGB image and the key it is known by: sha256 of the uploaded bytes, or the step key that made it."""

    nsx_type: ClassVar[Type] = IMAGE
    image: Image.Image
    key: str

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageValue:
        img = Image.open(io.BytesIO(data))
        img.load()
        return cls(img.convert("RGB"), sha256_key(data))

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG", optimize=False, compress_level=3)
        return buf.getvalue()


@dataclass(frozen=True, eq=False)
class Obj:
    """One detected object; ``box`` is (x1, y1, x2, y2) in pixels of the source image."""

    box: tuple[float, float, float, float]
    score: float = 1.0
    label: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    mask: NDArray[np.bool_] | None = None  # bool H×W over the source image

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def same(self, other: Obj) -> bool:
        """Identity for set operations: the same box and label on the same image."""
        return self.label == other.label and all(abs(a - b) < 0.5 for a, b in zip(self.box, other.box))


def pixel_box(box: tuple[float, float, float, float], w: int, h: int) -> tuple[int, int, int, int]:
    """A box as whole pixels inside a w×h image, at least one pixel wide and high."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)  # noqa: RUF046 - a numpy float rounds to a float
    x1, x2 = sorted((max(0, min(w, x1)), max(0, min(w, x2))))
    y1, y2 = sorted((max(0, min(h, y1)), max(0, min(h, y2))))
    # Never an empty crop: PIL would give a 0-pixel image that no later module can use.
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when either is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True, eq=False)
class Objects:
    nsx_type: ClassVar[Type] = OBJECTS
    items: tuple[Obj, ...]
    image_key: str
    image_size: tuple[int, int]  # width, height of the source image

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Obj]:
        return iter(self.items)

    def with_items(self, items: list[Obj] | tuple[Obj, ...]) -> Objects:
        return replace(self, items=tuple(items))
