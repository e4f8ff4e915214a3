"""Runtime values that flow between steps. Images carry their content key, so keys chain."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from program_dsl import IMAGE, OBJECTS, Type

from .base import ModuleError


def sha256_key(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


Mask = NDArray[np.bool_]


class _Decoded:
    """Decoded pixels of stored images by key, the most recently used kept within ``max_bytes``:
    programs come back to the same images (ten questions about one photo), and decoding a PNG again
    each time cost more than the rest of a run's overhead."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # pixels are decoded on worker threads

    def get(self, key: str) -> Image.Image | None:
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
            return image

    def put(self, key: str, image: Image.Image) -> None:
        size = image.width * image.height * 3
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._images:
                return
            self._images[key] = image
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._images.popitem(last=False)
                self._bytes -= old.width * old.height * 3


DECODED = _Decoded(128 * 1024 * 1024)


class ImageValue:
    """An RGB image and the key it is known by: sha256 of the uploaded bytes, or the step key that made it.

    ``grid`` is the key of the pixel grid it shares: its own key for an upload or a crop, the input's
    grid for an edit that moves no pixel (BGBLUR, EMOJI, TAG…). Boxes found on any image of a grid
    land on the same pixels of every other, so an edit of an edit may use objects found on the
    original; the key alone could not say so, since every edit's output has a key of its own.
    ``region`` is the mask an edit worked on, kept as an artifact of its step for the audit trail.

    An image read from stored bytes (``stored``) decodes its pixels on first use: a run whose steps
    all hit the cache never needs them. Treat it as immutable."""

    nsx_type: ClassVar[Type] = IMAGE
    __slots__ = ("_data", "_image", "_size", "grid", "key", "region")

    def __init__(self, image: Image.Image, key: str, grid: str = "", region: Mask | None = None) -> None:
        self._image: Image.Image | None = image
        self._data: bytes | None = None
        self._size: tuple[int, int] = image.size
        self.key = key
        self.grid = grid or key
        self.region = region

    def __repr__(self) -> str:
        return f"ImageValue(key={self.key!r}, size={self._size[0]}x{self._size[1]})"

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            assert self._data is not None  # one of the two is always set
            img = Image.open(io.BytesIO(self._data))
            img.load()
            # Two threads decoding at once both assign the same pixels: harmless.
            self._image = img.convert("RGB")
            DECODED.put(self.key, self._image)
        return self._image

    def edited(self, image: Image.Image, region: Mask | None = None) -> ImageValue:
        """``image``, made from this one without moving a pixel, on this one's grid. Its key is a
        placeholder: the executor keys every step's output by the step (``step_output``)."""
        return ImageValue(image, f"{self.key}+edit", self.grid, region)

    @property
    def width(self) -> int:
        return self._size[0]

    @property
    def height(self) -> int:
        return self._size[1]

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageValue:
        """Decoded now: bytes a client just sent are checked in full before anything is stored."""
        img = Image.open(io.BytesIO(data))
        img.load()
        value = cls(img.convert("RGB"), sha256_key(data))
        DECODED.put(value.key, value.image)
        return value

    @classmethod
    def stored(cls, data: bytes, key: str) -> ImageValue:
        """Bytes checked when they were stored under ``key``: only the header is read now, and the
        pixels are decoded on first use (or found decoded already, ``DECODED``)."""
        decoded = DECODED.get(key)
        if decoded is not None:
            return cls(decoded, key)
        with Image.open(io.BytesIO(data)) as probe:
            size = probe.size
        value = cls.__new__(cls)
        value._image, value._data, value._size = None, data, size
        value.key = value.grid = key
        value.region = None
        return value

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


def region_mask(op: str, image: ImageValue, objects: Objects, index: int | None = None) -> Mask:
    """The union of the objects' regions (or of one, by ``index``) as a bool H×W mask."""
    w, h = image.width, image.height
    region = np.zeros((h, w), dtype=bool)
    items = list(enumerate(objects.items))
    for i, o in items if index is None else [items[index]]:
        if o.mask is None:
            x1, y1, x2, y2 = pixel_box(o.box, w, h)
            region[y1:y2, x1:x2] = True
            continue
        mask = np.asarray(o.mask)
        if mask.shape != (h, w):
            raise ModuleError(f"{op}: object {i} ({o.label or 'unlabelled'}) has a mask of shape "
                              f"{'×'.join(map(str, mask.shape))} (rows×columns), but the image is {h}×{w}")
        # Masks are bool by contract; a probability or 0/255 map is read as "more than half in".
        region |= mask if mask.dtype == np.bool_ else mask > 0.5
    return region


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when either is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True, eq=False)
class Objects:
    """What a detector found in one image: the image's key and size, and the grid its pixels are on
    (see ``ImageValue``), which tells the images the boxes may be used on."""

    nsx_type: ClassVar[Type] = OBJECTS
    items: tuple[Obj, ...]
    image_key: str
    image_size: tuple[int, int]  # width, height of the source image
    grid: str = ""  # empty: image_key; the executor fills it in from the image they were found in

    def __post_init__(self) -> None:
        if not self.grid:
            object.__setattr__(self, "grid", self.image_key)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Obj]:
        return iter(self.items)

    def with_items(self, items: list[Obj] | tuple[Obj, ...]) -> Objects:
        return replace(self, items=tuple(items))

    def found_on(self, image: ImageValue) -> bool:
        """Whether the boxes are in ``image``'s pixels: found in it, or in an image of its grid."""
        return self.image_key == image.key or self.grid == image.grid


def step_output(value: Any, key: str, inputs: Iterable[Any]) -> Any:
    """A module's result as its step keeps it. An image is keyed by the step, keeping the grid its
    module gave it (a bare PIL image, like a crop's, starts a grid of its own). Objects learn the grid
    of the input they were found in: a detector names only that image's key, and an edit's output
    has a key of its own but its input's grid."""
    if isinstance(value, Image.Image):
        return ImageValue(value.convert("RGB"), key)
    if isinstance(value, ImageValue):
        image = value.image if value.image.mode == "RGB" else value.image.convert("RGB")
        return ImageValue(image, key, value.grid, value.region)
    grids: dict[str, str] = {}
    for v in inputs:
        if isinstance(v, ImageValue):
            grids.setdefault(v.key, v.grid)
        elif isinstance(v, Objects):
            grids.setdefault(v.image_key, v.grid)
    return _on_grids(value, grids)


def _on_grids(value: Any, grids: dict[str, str]) -> Any:
    if isinstance(value, Objects):
        grid = grids.get(value.image_key, value.grid)
        # A grid the module set itself (objects passed through) is kept.
        return replace(value, grid=grid) if value.grid == value.image_key != grid else value
    if isinstance(value, list):
        return [_on_grids(v, grids) for v in value]
    return value
