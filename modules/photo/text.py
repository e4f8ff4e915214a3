"""OCR and READ: text on real photos with PP-OCR (detection, 180° orientation, recognition) through
RapidOCR on ONNX Runtime, from the model files the ``rapidocr`` wheel ships.

- ``OCR(image) -> Objects``: one object per text line, labelled with the text read; ``score`` is the
  recogniser's confidence (lines under 0.5 are dropped, RapidOCR's default); ``box`` the axis-aligned
  box of the detected quadrilateral, clamped to the image; ``attributes`` ``{"text", "quad"}`` (the
  four corners, clockwise from top left, in source pixels); no mask. In reading order.
- ``READ(image) -> Text``: the lines in reading order, a line's pieces joined by a space and rows by a
  newline; ``''`` when there is no text.

Reading order: lines whose vertical extents overlap by half the smaller height are one row; rows top
to bottom, pieces left to right. Right-to-left scripts and columns of text are not handled.

``find_text_regions(image) -> list[Obj]`` (SEG's text) runs the detector alone: one object per
detected line, labelled ``text``, with the detector's score (its mean text probability inside the
region, at least 0.5), ``attributes["quad"]`` and a mask of the quadrilateral filled; ``box`` is the
mask's bounding box; left to right. Masks are full-image arrays, so past ``MASK_BUDGET`` (a page
of small print on a large scan: 180 lines of 12 MP would take 2 GB) the regions come without masks,
their box the quadrilateral's. A region at least half the image wide and half its height is
dropped: no line of text is, and the detector returns one such for the ``coffee`` photo (score 0.69;
the recogniser reads it as "8" with 0.89, so OCR keeps it). Not reading is 2–5× faster where there
is text (two rendered lines, 640×240: 28–67 ms against 121–248 ms, medians over runs on a busy
2-core machine) and the same where the detector finds nothing (the astronaut: ~60 ms either way).
Without the recogniser's filter (lines read as nothing or with under 0.5), a region OCR drops is
kept: five regions on the Grace Hopper photo against OCR's four lines. Both take the flag's stars
for text (regions scored 0.61–0.73; OCR reads "***" with 0.94).

The detector sees the image with its longer side at most 960 px (PaddleOCR's own default; RapidOCR's
"shorter side at least 736" upscales a 640×200 banner to 2355×736 and takes 4× as long here): text
smaller than ~1% of a large photo's side is missed. The recogniser is PaddleOCR's Chinese–English
model: Latin text reads well, other scripts do not.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

from program_dsl import param, signature

from ..base import Module, ModuleError
from ..values import ImageValue, Obj, Objects
from .common import MIN_SIDE, CpuModel, Mask, clamp_box, image_of, mask_box, package_dir

__all__ = ["OCR_SIG", "PPOCR", "READ_SIG", "Ocr", "Read", "find_text_regions", "modules", "reading_order",
           "shared_engine", "text_files"]

CODE_VERSION = "1"
OCR_SIG = signature("OCR", "Objects", param("image", "Image"),
                    doc="The text lines in the image, each with its text, confidence and box (PP-OCR).",
                    pack="photo")
READ_SIG = signature("READ", "Text", param("image", "Image"),
                     doc="The text in the image, in reading order ('' when there is none).", pack="photo")

DET_MAX_SIDE = 960
MIN_SCORE = 0.5
ROW_OVERLAP = 0.5  # of the smaller line's height, for two lines to be one row
MAX_REGION_SIDES = 0.5  # of the image's width and height: a region larger in both is not a line
MASK_BUDGET = 256 * 2**20  # bytes of text-region masks per image (one byte per pixel per region)


def text_files() -> list[Path]:
    root = package_dir("rapidocr") / "models"
    return [root / "PP-OCRv6_det_small.onnx", root / "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
            root / "PP-OCRv6_rec_small.onnx"]


def reading_order(lines: list[Obj]) -> list[list[Obj]]:
    """Rows top to bottom, each row's lines left to right (see the module doc)."""
    rows: list[list[Obj]] = []
    for line in sorted(lines, key=lambda o: (o.box[1] + o.box[3]) / 2):
        if rows:
            last = rows[-1]
            top, bottom = min(o.box[1] for o in last), max(o.box[3] for o in last)
            overlap = min(bottom, line.box[3]) - max(top, line.box[1])
            if overlap >= ROW_OVERLAP * min(bottom - top, line.box[3] - line.box[1]):
                last.append(line)
                continue
        rows.append([line])
    return [sorted(row, key=lambda o: o.box[0]) for row in rows]


def _bgr(image: ImageValue) -> Any:
    return np.ascontiguousarray(np.asarray(image.image.convert("RGB"))[:, :, ::-1])


class PPOCR:
    """The PP-OCR pipeline, shared by OCR, READ and SEG (one load, ~0.7 s and 35 MB, not three).
    Its own lock, since the modules' locks do not exclude each other. RapidOCR loads each model on
    first use, so a process that only detects never loads the recogniser."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if self._engine is not None:
                return
            from rapidocr import RapidOCR

            det, cls, rec = text_files()
            # Explicit model paths: RapidOCR downloads whatever its defaults name and it cannot find,
            # and nothing may be downloaded at run time.
            self._engine = RapidOCR(params={
                "Global.log_level": "error", "Global.text_score": MIN_SCORE,
                "Det.model_path": str(det), "Cls.model_path": str(cls), "Rec.model_path": str(rec),
                "Det.limit_type": "max", "Det.limit_side_len": DET_MAX_SIDE,
            })

    def _run(self, image: ImageValue, module: str, read: bool) -> Any:
        if self._engine is None:
            self.open()
        try:
            with self._lock:
                # Every flag, every call: RapidOCR keeps the last call's flags as its new defaults.
                return self._engine(_bgr(image), use_det=True, use_cls=read, use_rec=read)
        except Exception as e:
            raise ModuleError(f"{module} could not read the image: {type(e).__name__}: {e}") from e

    def regions(self, image: ImageValue, module: str) -> list[Obj]:
        """The detected text regions, not read, left to right (see the module doc)."""
        result = self._run(image, module, read=False)
        if result.boxes is None or result.scores is None:
            return []
        W, H = image.width, image.height
        quads = [(np.clip(corners, 0, [W, H]), score)
                 for corners, score in zip(np.asarray(result.boxes, np.float64), result.scores)]
        quads = [(q, sc) for q, sc in quads
                 if not (np.ptp(q[:, 0]) >= MAX_REGION_SIDES * W and np.ptp(q[:, 1]) >= MAX_REGION_SIDES * H)]
        # A page of small print has hundreds of lines, and every mask is the whole image: past a
        # budget the regions keep their box and quadrilateral only (edits then use the box).
        with_masks = len(quads) * W * H <= MASK_BUDGET
        out = []
        for quad, score in quads:
            corners_px = [[round(float(x), 1), round(float(y), 1)] for x, y in quad]
            mask = _quad_mask(quad, W, H) if with_masks else None
            box = mask_box(mask) if mask is not None else _quad_box(quad, W, H)
            if box is not None:
                out.append(Obj(box, round(float(score), 4), "text", {"quad": corners_px}, mask))
        return sorted(out, key=lambda o: o.box[0])

    def lines(self, image: ImageValue, module: str) -> list[Obj]:
        """The text lines, in reading order."""
        result = self._run(image, module, read=True)
        if result.txts is None or result.boxes is None:
            return []
        W, H = image.width, image.height
        out = []
        for corners, raw, score in zip(np.asarray(result.boxes, np.float64), result.txts, result.scores):
            text = str(raw).strip()
            if not text:
                continue
            quad = np.clip(corners, 0, [W, H])
            x1, y1, x2, y2 = (round(v, 1) for v in clamp_box(
                (quad[:, 0].min(), quad[:, 1].min(), quad[:, 0].max(), quad[:, 1].max()), W, H))
            out.append(Obj((x1, y1, x2, y2), round(float(score), 4), text,
                           {"text": text, "quad": [[round(float(x), 1), round(float(y), 1)] for x, y in quad]}))
        return [o for row in reading_order(out) for o in row]


_SHARED = PPOCR()


def _quad_mask(quad: Any, width: int, height: int) -> Mask:
    """The filled quadrilateral as a bool mask over the image, drawn in its own window only."""
    mask = np.zeros((height, width), bool)
    x0, y0 = (int(v) for v in np.floor(quad.min(axis=0)))
    x1, y1 = (int(v) + 1 for v in np.ceil(quad.max(axis=0)))
    x1, y1 = min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return mask
    window = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(window, [(quad - [x0, y0]).round().astype(np.int32)], (1,))
    mask[y0:y1, x0:x1] = window.astype(bool)
    return mask


def _quad_box(quad: Any, width: int, height: int) -> tuple[float, float, float, float] | None:
    x0, y0 = (float(v) for v in quad.min(axis=0))
    x1, y1 = (float(v) for v in quad.max(axis=0))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return x0, y0, min(x1, float(width)), min(y1, float(height))


def shared_engine() -> PPOCR:
    """The process's one PP-OCR pipeline, which OCR, READ, SEG and ``find_text_regions`` share."""
    return _SHARED


def find_text_regions(image: ImageValue) -> list[Obj]:
    """Where the text is, without reading it: PP-OCR's detected lines, left to right, each with a
    mask (see the module doc); an empty list when there is none or the image is too small."""
    if min(image.width, image.height) < MIN_SIDE:
        return []
    return _SHARED.regions(image, "find_text_regions")


class _TextModule(CpuModel):
    code_version = CODE_VERSION
    packages = ("rapidocr", "onnxruntime")

    def __init__(self, engine: PPOCR) -> None:
        super().__init__()
        self.engine = engine

    def model_files(self) -> list[Path]:
        return text_files()

    def _open(self) -> None:
        self.engine.open()

    def warmup(self) -> None:
        # Text, not a blank: a blank image stops after detection, and the recogniser's session must
        # be built too.
        im = Image.new("RGB", (160, 48), "white")
        ImageDraw.Draw(im).text((8, 16), "warm 123", fill="black")
        self.forward([{"image": ImageValue(im, "sha256:warmup")}])


class Ocr(_TextModule):
    """OCR: the text lines as objects."""

    def __init__(self, engine: PPOCR) -> None:
        super().__init__(engine)
        self.signature = OCR_SIG

    def _one(self, args: dict[str, Any]) -> Objects:
        image = image_of(args, "OCR")
        return Objects(tuple(self.engine.lines(image, "OCR")), image.key, (image.width, image.height))


class Read(_TextModule):
    """READ: the text as one string."""

    def __init__(self, engine: PPOCR) -> None:
        super().__init__(engine)
        self.signature = READ_SIG

    def _one(self, args: dict[str, Any]) -> str:
        image = image_of(args, "READ")
        rows = reading_order(self.engine.lines(image, "READ"))
        return "\n".join(" ".join(o.attributes["text"] for o in row) for row in rows)


def modules() -> list[Module]:
    engine = shared_engine()
    return [Ocr(engine), Read(engine)]
