"""What the photo pack's model modules share: finding and hashing the model files that ship in
packages, checking an input image, and the small geometry every detector needs.

Nothing here imports a model runtime: the pool reads a module's ``version`` (which hashes its model
files) before it loads anything, and building the pack must stay cheap.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from ..base import Module, ModuleError, files_digest
from ..values import ImageValue

Mask = npt.NDArray[np.bool_]  # H×W, True on the object
RGB = npt.NDArray[np.uint8]  # H×W×3
Confidence = npt.NDArray[np.float32]  # H×W in [0, 1]

# Smaller than this, no detector here has anything to look at; the models resize to 128–256 px
# inputs, so a tiny crop would be upsampled into noise and answered with confident nonsense.
MIN_SIDE = 16
# The models see at most this many pixels on the longer side; larger images are downscaled for
# them and the results mapped back. The service already refuses images over 40 MP, but a module may
# get a larger one from another step, and no model here gains from more than this.
MAX_MODEL_SIDE = 2048


def package_dir(package: str) -> Path:
    """The installed folder of ``package``, found without importing it (importing MediaPipe or
    RapidOCR costs a second and starts their runtimes)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleError(f"the {package!r} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def require_files(paths: Sequence[Path], what: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{what} model files are missing ({', '.join(missing)}); reinstall the package")


def image_of(args: dict[str, Any], module: str) -> ImageValue:
    """The ``image`` argument, checked: an Image of at least MIN_SIDE on each side."""
    image = args.get("image")
    if not isinstance(image, ImageValue):
        raise ModuleError(f"{module} needs an image, got {type(image).__name__}")
    if min(image.width, image.height) < MIN_SIDE:
        raise ModuleError(f"{module} needs an image at least {MIN_SIDE}×{MIN_SIDE} pixels, "
                          f"got {image.width}×{image.height}")
    return image


def model_input(image: ImageValue, max_side: int = MAX_MODEL_SIDE) -> tuple[RGB, float]:
    """The image as a contiguous RGB uint8 array no larger than ``max_side``, and the factor that
    maps its pixels back to the source image's (1.0 when it was not resized)."""
    im = image.image.convert("RGB")
    scale = 1.0
    if max(im.size) > max_side:
        scale = max(im.size) / max_side
        im = im.resize((max(1, round(im.width / scale)), max(1, round(im.height / scale))),
                       Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8)), scale


def clamp_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
            min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def mask_box(mask: Mask) -> tuple[float, float, float, float] | None:
    """The tight box (x2, y2 exclusive, in pixels) of a bool mask; None when it is empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


def box_containment(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box's area: 1.0 when one box lies inside the other."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


class CpuModel(Module):
    """A module around a CPU-only model runtime (MediaPipe's TFLite graphs, ONNX Runtime).

    - ``version`` is the code version plus a digest of the model files and runtime versions, known
      before ``load`` as the pool requires.
    - ``device`` is always ``cpu``: with ``NSX_DEVICE=cuda`` the pool still asks for ``cuda``, and
      the request is kept in ``requested_device``; claiming ``cuda`` would make the pool synchronise
      a GPU this module never touches and tell ``/v1/modules`` something untrue.
    - One call at a time, under a lock: MediaPipe's solution graphs keep per-stream state and are
      not thread-safe. The pool already calls from one worker thread per device; the lock keeps a
      direct caller (a test, a benchmark) from breaking that.
    - Not batchable: neither runtime has a batched forward for these graphs, so a batch would only
      be a loop that delays every caller until the last image is done.
    """

    code_version = "1"
    packages: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version: str | None = None
        self._opened = False
        self.requested_device = "cpu"

    @property
    def device(self) -> str:
        return "cpu"

    @device.setter
    def device(self, requested: str) -> None:
        self.requested_device = requested

    @abstractmethod
    def model_files(self) -> list[Path]:
        """The model files this module runs, as installed (they need not exist yet)."""

    @abstractmethod
    def _open(self) -> None:
        """Build the runtime's objects; called once, under the lock."""

    @abstractmethod
    def _one(self, args: dict[str, Any]) -> Any:
        """The result for one call's arguments; raise ModuleError for a bad input."""

    @property
    def version(self) -> str:
        if self._version is None:
            extra = [f"{p}={package_version(p)}" for p in self.packages]
            self._version = f"{self.code_version}-{files_digest(self.model_files(), *extra)}"
        return self._version

    def load(self, device: str) -> None:
        self.device = device
        require_files(self.model_files(), self.name)
        with self._lock:
            if not self._opened:
                self._open()
                self._opened = True

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        if not self._opened:
            self.load(self.requested_device)
        out: list[Any] = []
        with self._lock:
            for args in batch:
                try:
                    out.append(self._one(args))
                except ModuleError as e:
                    out.append(e)
        return out
