"""SEG: the people on a real photo, their faces, hands and text regions, each with a mask.

People and faces come from three MediaPipe models:

- Selfie segmentation gives a foreground mask that covers every person, but it is not a person
  detector: it also marks a coffee cup or a cat (measured: 23% of ``coffee``, 91% of ``chelsea``).
  Its regions are therefore only kept where there is evidence of a person in them:
- a face (``faces.FaceFinder``, tiled, so the small faces of a group count), or
- the one person MediaPipe Pose finds (pose detection finds at most one person per image), whose own
  segmentation is tighter than the selfie mask (it leaves out a held helmet).

Instances: each face claims the connected part of the foreground under it, within a window where
its body can be (3 face widths to each side, 8 face heights below); a small person's window is
segmented on its own, so the segmenter (which sees 256×256) sees them large. Pixels two faces claim
go to the nearer face, horizontal distance counting more than vertical (people stand side by side,
a body hangs below its face) and distance measured in face widths (a nearer, larger face claims
more). The pose person, when their nose is at a face, takes Pose's own mask instead of their share;
when it is at no face (seen from behind), they are one more person. Limits: foreground with no face
and no pose is dropped (several people seen from behind count as at most one); people one in front
of the other split badly; a share smaller than two face boxes is dropped as a sliver; a face too
small or too odd for the segmenter still comes back, as a face without a person.

Hands come from MediaPipe Hands (``hands.HandFinder``): on the whole image, and on its tiles (for
small hands) only where a person was found, so a photo without people costs one hand-model call,
not ten; a large hand with no person found is still returned. Text regions come from PP-OCR's
detector alone (``text.find_text_regions``: not reading is 2–5× faster on an image with text).

Cost, on the 512×512 astronaut (a busy 2-core machine; medians of 5): ~100 ms for people and faces
alone (SEG before hands and text), ~270–430 ms with them: the hand model on the whole image and
nine tiles ~90 ms, the text detector 45–170 ms.

Objects come back people first, then faces, then hands, then text regions, each group left to
right (by the box's left edge):

- ``person``: ``score`` its face's detector score (Pose's mean mask confidence for a pose-only
  person), ``attributes["evidence"]`` (``face`` and/or ``pose``);
- ``face``: the detector's score and ``attributes["keypoints"]``, and a mask of the ellipse in its
  box, cut to the people's mask when that keeps at least half of it;
- ``hand``: the handedness score, ``attributes`` ``{"handedness", "keypoints"}`` (the person's own
  left or right hand; 21 landmarks), a mask of the landmarks' hull, grown a little;
- ``text``: the detector's score, ``attributes["quad"]`` (four corners, clockwise from top left)
  and a mask of that quadrilateral, filled.

Every mask is bool H×W over the source image and every box is its mask's bounding box. Nothing found
is an empty ``Objects``. Separately: ``find_people`` here, ``faces.find_faces``, ``hands.find_hands``
and ``text.find_text_regions`` each run one detector alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from program_dsl import param, signature

from ..base import Module
from ..values import ImageValue, Obj, Objects
from . import text
from .common import MIN_SIDE, RGB, Confidence, CpuModel, Mask, image_of, mask_box, model_input, package_dir
from .faces import Face, FaceFinder, ellipse_mask, face_files
from .hands import hand_obj, hands_files, shared_hand_finder

__all__ = ["SEG_SIG", "PeopleFinder", "Seg", "find_people", "modules", "people_files", "seg_files",
           "shared_people_finder"]

CODE_VERSION = "2"
SEG_SIG = signature("SEG", "Objects", param("image", "Image"),
                    doc="Segment the people (one object each, with a mask), their faces and hands, and the text.",
                    pack="photo")

MASK_THRESHOLD = 0.5
MIN_REGION = 0.001  # of the image: smaller foreground specks are the segmenter's noise
VERTICAL_WEIGHT = 0.3  # how much a pixel's vertical distance to a face counts against its horizontal one
MIN_SHARE_FACES = 2.0  # a face's share of a region smaller than this many face boxes is a sliver
WINDOW_SIDES = 3.0  # face widths either side of a face where its body may be
WINDOW_BELOW = 8.0  # face heights below a face where its body may be
SMALL_WINDOW = 0.5  # a body window under this share of the image is segmented on its own


def people_files() -> list[Path]:
    """Selfie segmentation, pose (detector, full landmark model, graph) and the face detector."""
    root = package_dir("mediapipe") / "modules"
    return [
        root / "selfie_segmentation" / "selfie_segmentation_cpu.binarypb",
        root / "selfie_segmentation" / "selfie_segmentation.tflite",
        root / "pose_landmark" / "pose_landmark_cpu.binarypb",
        root / "pose_landmark" / "pose_landmark_full.tflite",
        root / "pose_detection" / "pose_detection.tflite",
        *face_files(),
    ]


def seg_files() -> list[Path]:
    """Every model file SEG runs: the people's, the hands' and PP-OCR's text detector."""
    return [*people_files(), *hands_files(), text.text_files()[0]]


@dataclass
class _Person:
    mask: Mask  # model-input pixels
    evidence: list[str]
    score: float


def _centre(f: Face) -> tuple[float, float]:
    return (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2


def _window(f: Face, w: int, h: int) -> tuple[int, int, int, int]:
    """Where the body of the person with face ``f`` can be: a few face widths to each side and
    several face heights below (a standing person is ~7–8 heads tall), clipped to the image."""
    x1, y1, x2, y2 = f.box
    fw, fh = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2
    return (max(0, int(cx - WINDOW_SIDES * fw)), max(0, int(y1 - 0.5 * fh)),
            min(w, int(cx + WINDOW_SIDES * fw) + 1), min(h, int(y2 + WINDOW_BELOW * fh) + 1))


def _component_at(mask: Mask, f: Face, offset: tuple[int, int]) -> Mask | None:
    """The connected part of ``mask`` (a window at ``offset``) that holds the face: the one under its
    centre, else the largest one touching its box; None when the face is on no foreground."""
    h, w = mask.shape
    k = max(3, min(h, w) // 128) | 1
    # Opening cuts the thin bridges the segmenter leaves between people standing close.
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    n, labels = cv2.connectedComponents(opened, connectivity=8)
    if n <= 1:
        return None
    ox, oy = offset
    cx, cy = _centre(f)
    px, py = int(cx) - ox, int(cy) - oy
    label = int(labels[py, px]) if 0 <= px < w and 0 <= py < h else 0
    if label == 0:
        x1, y1, x2, y2 = (int(v) for v in f.box)
        inside = labels[max(0, y1 - oy):max(0, y2 - oy), max(0, x1 - ox):max(0, x2 - ox)]
        counts = np.bincount(inside.ravel(), minlength=n)[1:]
        if counts.size == 0 or counts.max() == 0:
            return None
        label = int(counts.argmax()) + 1
    return np.asarray(labels == label)


def resolve(claims: list[Mask], faces: list[Face | None]) -> list[Mask]:
    """Give each pixel claimed by several people to the nearest face (see the module doc); a claim
    without a face (the pose person seen from behind) loses its contested pixels to those with one."""
    count = np.sum(claims, axis=0, dtype=np.int32) if claims else None
    if count is None or count.max() <= 1:
        return claims
    ys, xs = np.nonzero(count > 1)
    dist = np.full((len(claims), xs.size), np.inf, np.float32)
    for i, (claim, f) in enumerate(zip(claims, faces)):
        mine = claim[ys, xs]
        if f is None:
            dist[i, mine] = 1e6  # only where nobody with a face claims the pixel
            continue
        cx, cy = _centre(f)
        width = max(1.0, f.box[2] - f.box[0])
        dist[i, mine] = np.hypot(xs[mine] - cx, VERTICAL_WEIGHT * (ys[mine] - cy)) / width
    owner = dist.argmin(axis=0)
    out = []
    for i, claim in enumerate(claims):
        c = claim.copy()
        lost = owner != i
        c[ys[lost], xs[lost]] = False
        out.append(c)
    return out


def split_people(rgb: RGB, foreground: Mask, faces: list[Face],
                segment: Callable[[RGB], Confidence], pose_mask: Mask | None,
                pose_nose: tuple[float, float] | None, pose_score: float = 1.0) -> list[_Person]:
    """One person per face on the foreground, plus the pose person if no face is theirs."""
    h, w = foreground.shape
    claims: list[Mask] = []
    owners: list[Face | None] = []
    evidence: list[list[str]] = []
    pose_face: Face | None = None
    if pose_mask is not None and pose_nose is not None:
        nx, ny = pose_nose
        for f in faces:
            x1, y1, x2, y2 = f.box
            mx, my = (x2 - x1) / 4, (y2 - y1) / 4
            if x1 - mx <= nx <= x2 + mx and y1 - my <= ny <= y2 + my:
                pose_face = f
                break
    for f in faces:
        x0, y0, x1, y1 = _window(f, w, h)
        if (x1 - x0) * (y1 - y0) < SMALL_WINDOW * w * h:
            # A small person: the segmenter, which sees 256×256, gets a crop where they are large.
            local = segment(np.ascontiguousarray(rgb[y0:y1, x0:x1])) > MASK_THRESHOLD
        else:
            local = foreground[y0:y1, x0:x1]
        part = _component_at(local, f, (x0, y0))
        if part is None:
            continue
        claim = np.zeros((h, w), bool)
        claim[y0:y1, x0:x1] = part
        claims.append(claim)
        owners.append(f)
        evidence.append(["face", "pose"] if f is pose_face else ["face"])
    if pose_mask is not None and pose_face is None and pose_mask.sum() >= MIN_REGION * h * w:
        claims.append(pose_mask)
        owners.append(None)
        evidence.append(["pose"])
    shares = resolve(claims, owners)
    if pose_mask is not None and pose_face is not None:
        # Pose's own mask is of this very person and tighter than their share of the foreground
        # (it leaves out what they hold); where it overlaps a neighbour's share, it knows better.
        shares = [pose_mask if f is pose_face else share & ~pose_mask for share, f in zip(shares, owners)]
        if all(o is not pose_face for o in owners):  # the face was on no foreground the segmenter kept
            shares.append(pose_mask)
            owners.append(pose_face)
            evidence.append(["face", "pose"])
    people = []
    for claim, owner, ev in zip(shares, owners, evidence):
        if owner is None:
            least, score = MIN_REGION * h * w, pose_score
        else:
            least = MIN_SHARE_FACES * (owner.box[2] - owner.box[0]) * (owner.box[3] - owner.box[1])
            score = owner.score
        if claim.sum() >= least:
            people.append(_Person(claim, ev, score))
    return people


def _to_source(mask: Mask, size: tuple[int, int]) -> Mask:
    if mask.shape[::-1] == size:
        return mask
    scaled = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    return np.asarray(scaled) > 127


class PeopleFinder:
    """Selfie segmentation, Pose and the tiled face finder, loaded once (on first use or ``open``),
    one image at a time under its own lock: MediaPipe's graphs keep per-stream state and are not
    thread-safe, and SEG and ``find_people`` share one finder."""

    def __init__(self) -> None:
        self.faces = FaceFinder()
        self._selfie: Any = None
        self._pose: Any = None
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if self._selfie is not None:
                return
            from mediapipe.python.solutions import pose, selfie_segmentation

            self.faces.open()
            # The general model (256×256), not the landscape one: photos are not video calls.
            self._selfie = selfie_segmentation.SelfieSegmentation(model_selection=0)
            # static_image_mode: every call is a new photo, not the next frame of a tracked video.
            self._pose = pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=True,
                                   min_detection_confidence=0.5)

    def _segment(self, rgb: RGB) -> Confidence:
        return np.asarray(self._selfie.process(rgb).segmentation_mask, np.float32)

    def find(self, rgb: RGB) -> tuple[list[_Person], list[Face]]:
        """The people (masks in ``rgb``'s pixels) and every face, in ``rgb``'s pixels."""
        if self._selfie is None:
            self.open()
        h, w = rgb.shape[:2]
        with self._lock:
            foreground = self._segment(rgb) > MASK_THRESHOLD
            faces = self.faces.find(rgb)
            posed = self._pose.process(rgb)
            pose_mask = nose = None
            pose_score = 0.0
            if posed.pose_landmarks is not None and posed.segmentation_mask is not None:
                pose_conf = np.asarray(posed.segmentation_mask, np.float32)
                pose_mask = pose_conf > MASK_THRESHOLD
                pose_score = float(pose_conf[pose_mask].mean()) if pose_mask.any() else 0.0
                landmark = posed.pose_landmarks.landmark[0]
                if landmark.visibility > 0.5:
                    nose = (landmark.x * w, landmark.y * h)
            people = split_people(rgb, foreground, faces, self._segment, pose_mask, nose, pose_score)
        return people, faces


_SHARED = PeopleFinder()


def shared_people_finder() -> PeopleFinder:
    """The process's one ``PeopleFinder``, which SEG and ``find_people`` share (one load, one lock)."""
    return _SHARED


def _left_to_right(items: list[Obj]) -> list[Obj]:
    return sorted(items, key=lambda o: o.box[0])


def person_objects(people: list[_Person], size: tuple[int, int]) -> list[Obj]:
    """The people as SEG returns them, left to right; ``size`` is the source image's (w, h)."""
    items = []
    for p in people:
        mask = _to_source(p.mask, size)
        box = mask_box(mask)
        if box is not None:
            items.append(Obj(box, round(p.score, 4), "person", {"evidence": p.evidence}, mask))
    return _left_to_right(items)


def face_objects(faces: list[Face], people: list[_Person], rgb: RGB, scale: float, size: tuple[int, int]) -> list[Obj]:
    """SEG's faces, left to right: each an ellipse, cut to the people's mask where that keeps at
    least half of it (the module doc); ``faces`` and ``people`` in the pixels of ``rgb``, the model
    input, which ``scale`` maps to the source image of ``size``."""
    h, w = rgb.shape[:2]
    anyone = np.zeros((h, w), bool)
    for p in people:
        anyone |= p.mask
    items = []
    for f in faces:
        ellipse = ellipse_mask(f.box, h, w)
        cut = ellipse & anyone
        mask = _to_source(cut if cut.sum() >= 0.5 * ellipse.sum() else ellipse, size)
        box = mask_box(mask)
        if box is not None:
            points = {k: [round(x * scale, 1), round(y * scale, 1)] for k, (x, y) in f.keypoints.items()}
            items.append(Obj(box, round(f.score, 4), "face", {"keypoints": points}, mask))
    return _left_to_right(items)


def find_people(image: ImageValue) -> list[Obj]:
    """SEG's ``person`` objects alone, left to right (faces are found, as evidence, but not
    returned); an empty list when there is none or the image is too small to hold one."""
    if min(image.width, image.height) < MIN_SIDE:
        return []
    rgb, _ = model_input(image)
    people, _ = _SHARED.find(rgb)
    return person_objects(people, (image.width, image.height))


class Seg(CpuModel):
    """SEG on MediaPipe (selfie segmentation, pose, face detection, hands) and PP-OCR's text
    detector, CPU only (see ``CpuModel``). The models are the process's shared finders, so a LOC that
    finds faces, people, hands or text alone loads nothing twice."""

    code_version = CODE_VERSION
    packages = ("mediapipe", "rapidocr", "onnxruntime")

    def __init__(self) -> None:
        super().__init__()
        self.signature = SEG_SIG
        self.people = shared_people_finder()
        self.hands = shared_hand_finder()
        self.text = text.shared_engine()

    def model_files(self) -> list[Path]:
        return seg_files()

    def _open(self) -> None:
        self.people.open()
        self.hands.open()
        self.text.open()

    def warmup(self) -> None:
        self.forward([{"image": ImageValue(Image.new("RGB", (256, 256), (128, 128, 128)), "sha256:warmup")}])

    def _one(self, args: dict[str, Any]) -> Objects:
        image = image_of(args, "SEG")
        rgb, scale = model_input(image)
        size = (image.width, image.height)
        people, faces = self.people.find(rgb)
        anyone = np.zeros(rgb.shape[:2], bool)
        for p in people:
            anyone |= p.mask
        # Small hands are looked for (on tiles) only where the people are: SEG's hands are theirs,
        # and a photo with no person costs one hand-model call, not ten.
        hands = (hand_obj(h.moved(0, 0, scale), *size) for h in self.hands.find(rgb, anyone))
        items = [*person_objects(people, size), *face_objects(faces, people, rgb, scale, size),
                 *_left_to_right([o for o in hands if o is not None]), *self.text.regions(image, "SEG")]
        return Objects(tuple(items), image.key, size)


def modules() -> list[Module]:
    return [Seg()]
