"""FACEDET: faces on real photos with MediaPipe's full-range BlazeFace.

The model sees a 192×192 letterboxed copy of its input and, measured on the astronaut photo pasted
at several sizes, stops finding a face once it is narrower than about 7% of the image's longer
side (≈ 35 px on a 512 px photo). A group photo's faces are smaller than that, so ``FaceFinder``
also runs the model on overlapping tiles: two levels, of half and a quarter of the longer side,
down to no less than 192 px (the model's input; a smaller tile gains nothing). Measured: the four
~35 px faces of a 1024 px group are found, none on the whole image. Each level costs a model call
per tile (~6–10 ms here): 10 calls for a 512 px photo, 59 for 1024 px and larger (the models get at
most 2048 px on the longer side). Zooming further in (8×) found faces in a spacesuit's patches, and
tiles find false faces up to score 0.64 where the whole image finds none, so a tile's detection
needs 0.65. Tiles overlap by half, so a face narrower than half a tile lies whole inside one; a
detection that touches a tile's edge inside the image is a cut face and is dropped there; one face
found at several levels is kept once, with its highest score.

Each face is an ``Obj`` labelled ``face``: its box in source pixels (clamped to the image), the
model's score, no mask, and ``attributes["keypoints"]``: the six points BlazeFace gives, in source
pixels, named from the person's point of view (``right_eye`` is on the image's left for a person
facing the camera). No face is an empty ``Objects``, not an error.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from program_dsl import param, signature

from ..base import Module
from ..values import ImageValue, Obj, Objects, box_iou
from .common import (
    MIN_SIDE,
    RGB,
    CpuModel,
    Mask,
    box_containment,
    clamp_box,
    image_of,
    mask_box,
    model_input,
    package_dir,
)

__all__ = ["FACEDET_SIG", "Face", "FaceDet", "FaceFinder", "ellipse_mask", "face_files", "find_faces", "modules"]

CODE_VERSION = "1"
FACEDET_SIG = signature("FACEDET", "Objects", param("image", "Image"),
                        doc="Detect faces (MediaPipe full-range BlazeFace, tiled for small faces).", pack="photo")

# BlazeFace's keypoints in the order the model emits them.
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
MIN_SCORE = 0.5
TILE_MIN_SCORE = 0.65  # tiles see more clutter up close than the whole image: measured false faces ≤ 0.64
MIN_TILE = 192  # the model's input side: smaller tiles would only be upsampled
LEVELS = 2  # tiled levels below the whole image
# A tile detection this close (px) to a tile edge that is not the image's edge is a cut-off face.
EDGE_MARGIN = 1.0


def face_files() -> list[Path]:
    """The full-range graph and its weights, as the MediaPipe wheel installs them."""
    root = package_dir("mediapipe") / "modules" / "face_detection"
    return [root / "face_detection_full_range_cpu.binarypb", root / "face_detection_full_range_sparse.tflite"]


@dataclass(frozen=True)
class Face:
    """One face in the pixels of the array it was found in."""

    box: tuple[float, float, float, float]
    score: float
    keypoints: dict[str, tuple[float, float]] = field(default_factory=dict)

    def scaled(self, s: float) -> Face:
        x1, y1, x2, y2 = self.box
        return Face((x1 * s, y1 * s, x2 * s, y2 * s), self.score,
                    {k: (x * s, y * s) for k, (x, y) in self.keypoints.items()})


def _positions(length: int, tile: int) -> list[int]:
    """Tile offsets along one axis: evenly spaced, overlapping by at least half a tile, covering it."""
    if tile >= length:
        return [0]
    count = math.ceil((length - tile) / (tile / 2)) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tiles(width: int, height: int, min_tile: int = MIN_TILE) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of every tile: the whole image first, then each level's tiles, at most ``LEVELS``
    of them (zoomed ≤ 4×: measured, closer zooms find faces in a spacesuit's patches and folds)."""
    out = [(0, 0, width, height)]
    side = max(width, height) // 2
    smallest = max(min_tile, max(width, height) // 2**LEVELS)
    while side >= smallest:
        tw, th = min(side, width), min(side, height)
        out += [(x, y, tw, th) for y in _positions(height, th) for x in _positions(width, tw)]
        side //= 2
    return out


def merge(faces: list[Face], iou: float = 0.3, contained: float = 0.6) -> list[Face]:
    """Greedy suppression: the same face seen at two levels overlaps by IoU or lies inside the other."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.score):
        if all(box_iou(f.box, k.box) < iou and box_containment(f.box, k.box) < contained for k in kept):
            kept.append(f)
    return kept


class FaceFinder:
    """MediaPipe's full-range face detector run over the tile pyramid. Not thread-safe (the graph is
    not): its owner serialises calls."""

    def __init__(self, min_score: float = MIN_SCORE, min_tile: int = MIN_TILE) -> None:
        self.min_score = min_score
        self.min_tile = min_tile
        self._detector: Any = None

    def open(self) -> None:
        # Imported here: importing MediaPipe costs ~1 s and starts its runtime, which building the
        # pack must not do.
        from mediapipe.python.solutions import face_detection

        self._detector = face_detection.FaceDetection(model_selection=1, min_detection_confidence=self.min_score)

    def _detect(self, rgb: RGB) -> list[Face]:
        h, w = rgb.shape[:2]
        result = self._detector.process(rgb)
        faces = []
        for d in result.detections or ():
            bb = d.location_data.relative_bounding_box
            box = (bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h)
            points = {name: (k.x * w, k.y * h) for name, k in zip(KEYPOINTS, d.location_data.relative_keypoints)}
            faces.append(Face(box, float(d.score[0]), points))
        return faces

    def find(self, rgb: RGB) -> list[Face]:
        """Faces in ``rgb`` (H×W×3 uint8), in its pixels, left to right."""
        if self._detector is None:
            self.open()
        H, W = rgb.shape[:2]
        found: list[Face] = []
        for x, y, w, h in tiles(W, H, self.min_tile):
            whole = (w, h) == (W, H)
            crop = rgb if whole else np.ascontiguousarray(rgb[y:y + h, x:x + w])
            for f in self._detect(crop):
                x1, y1, x2, y2 = f.box
                if not whole and f.score < TILE_MIN_SCORE:
                    continue
                if not whole and ((x > 0 and x1 < EDGE_MARGIN) or (y > 0 and y1 < EDGE_MARGIN)
                                  or (x + w < W and x2 > w - EDGE_MARGIN) or (y + h < H and y2 > h - EDGE_MARGIN)):
                    continue
                found.append(Face((x1 + x, y1 + y, x2 + x, y2 + y), f.score,
                                  {k: (px + x, py + y) for k, (px, py) in f.keypoints.items()}))
        return sorted(merge(found), key=lambda f: (f.box[0], f.box[1]))


def face_obj(face: Face, width: int, height: int) -> Obj:
    points = {k: [round(min(max(px, 0.0), width), 1), round(min(max(py, 0.0), height), 1)]
              for k, (px, py) in face.keypoints.items()}
    box = tuple(round(v, 1) for v in clamp_box(face.box, width, height))
    return Obj((box[0], box[1], box[2], box[3]), round(face.score, 4), "face", {"keypoints": points})


class FaceDet(CpuModel):
    """FACEDET on MediaPipe, CPU only (see ``CpuModel``)."""

    code_version = CODE_VERSION
    packages = ("mediapipe",)

    def __init__(self, min_score: float = MIN_SCORE) -> None:
        super().__init__()
        self.signature = FACEDET_SIG
        self.finder = FaceFinder(min_score)

    def model_files(self) -> list[Path]:
        return face_files()

    def _open(self) -> None:
        self.finder.open()

    def warmup(self) -> None:
        self.forward([{"image": ImageValue(Image.new("RGB", (256, 256), (128, 128, 128)), "sha256:warmup")}])

    def _one(self, args: dict[str, Any]) -> Objects:
        image = image_of(args, "FACEDET")
        rgb, scale = model_input(image)
        faces = [f.scaled(scale) for f in self.finder.find(rgb)]
        return Objects(tuple(face_obj(f, image.width, image.height) for f in faces), image.key,
                       (image.width, image.height))


def ellipse_mask(box: tuple[float, float, float, float], h: int, w: int) -> Mask:
    """The ellipse inscribed in ``box``, as a bool h×w mask: a face's shape, near enough."""
    out = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    centre = (round((x1 + x2) / 2), round((y1 + y2) / 2))
    axes = (max(1, round((x2 - x1) / 2)), max(1, round((y2 - y1) / 2)))
    cv2.ellipse(out, centre, axes, 0, 0, 360, (1,), thickness=-1)
    return out.astype(bool)


# For ``find_faces``: one finder per process, and a lock, since the finder itself is not thread-safe.
_SHARED = FaceFinder()
_SHARED_LOCK = threading.Lock()


def find_faces(image: ImageValue) -> list[Obj]:
    """FACEDET's faces, left to right, each with a mask of the ellipse in its box (and ``box`` that
    mask's bounding box, as SEG gives a face no person was found under): for a caller that wants the
    faces alone, without SEG's people. An empty list when there is none or the image is too small."""
    if min(image.width, image.height) < MIN_SIDE:
        return []
    rgb, scale = model_input(image)
    with _SHARED_LOCK:
        faces = _SHARED.find(rgb)
    out = []
    for f in faces:
        face = face_obj(f.scaled(scale), image.width, image.height)
        mask = ellipse_mask(face.box, image.height, image.width)
        box = mask_box(mask)
        if box is not None:
            out.append(Obj(box, face.score, "face", face.attributes, mask))
    return out


def modules() -> list[Module]:
    return [FaceDet()]
