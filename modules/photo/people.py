"""SEG: people and their faces on real photos, each with a mask, from three MediaPipe models.

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

Objects come back people first, then faces, each left to right. A person is labelled ``person``
with ``score`` = its face's detector score (Pose's mean mask confidence for a pose-only person)
and ``attributes["evidence"]`` (``face`` and/or ``pose``); a face is labelled ``face`` with its
detector score and keypoints and a mask of the ellipse in its box, cut to the people's mask when
that keeps at least half of it. Every mask is bool H×W over the source image and every box is its
mask's bounding box. No person and no face is an empty ``Objects``.
"""

from __future__ import annotations

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
from .common import RGB, Confidence, CpuModel, Mask, image_of, mask_box, model_input, package_dir
from .faces import Face, FaceFinder, face_files

__all__ = ["SEG_SIG", "Seg", "modules", "people_files"]

CODE_VERSION = "1"
SEG_SIG = signature("SEG", "Objects", param("image", "Image"),
                    doc="Segment the people (one object each, with a mask) and their faces.", pack="photo")

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


@dataclass
class _Person:
    mask: Mask  # model-input pixels
    evidence: list[str]
    score: float


def _ellipse(box: tuple[float, float, float, float], h: int, w: int) -> Mask:
    out = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    centre = (round((x1 + x2) / 2), round((y1 + y2) / 2))
    axes = (max(1, round((x2 - x1) / 2)), max(1, round((y2 - y1) / 2)))
    cv2.ellipse(out, centre, axes, 0, 0, 360, (1,), thickness=-1)
    return out.astype(bool)


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


def find_people(rgb: RGB, foreground: Mask, faces: list[Face],
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


class Seg(CpuModel):
    """SEG on MediaPipe (selfie segmentation, pose, face detection), CPU only (see ``CpuModel``)."""

    code_version = CODE_VERSION
    packages = ("mediapipe",)

    def __init__(self) -> None:
        super().__init__()
        self.signature = SEG_SIG
        self.faces = FaceFinder()
        self._selfie: Any = None
        self._pose: Any = None

    def model_files(self) -> list[Path]:
        return people_files()

    def _open(self) -> None:
        from mediapipe.python.solutions import pose, selfie_segmentation

        self.faces.open()
        # The general model (256×256), not the landscape one: photos are not video calls.
        self._selfie = selfie_segmentation.SelfieSegmentation(model_selection=0)
        # static_image_mode: every call is a new photo, not the next frame of a tracked video.
        self._pose = pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=True,
                               min_detection_confidence=0.5)

    def warmup(self) -> None:
        self.forward([{"image": ImageValue(Image.new("RGB", (256, 256), (128, 128, 128)), "sha256:warmup")}])

    def _segment(self, rgb: RGB) -> Confidence:
        return np.asarray(self._selfie.process(rgb).segmentation_mask, np.float32)

    def _one(self, args: dict[str, Any]) -> Objects:
        image = image_of(args, "SEG")
        rgb, scale = model_input(image)
        h, w = rgb.shape[:2]
        confidence = self._segment(rgb)
        foreground = confidence > MASK_THRESHOLD
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
        people = find_people(rgb, foreground, faces, self._segment, pose_mask, nose, pose_score)

        size = (image.width, image.height)
        items: list[Obj] = []
        for p in people:
            mask = _to_source(p.mask, size)
            box = mask_box(mask)
            if box is not None:
                items.append(Obj(box, round(p.score, 4), "person",
                                 {"evidence": p.evidence}, mask))
        anyone = np.zeros((h, w), bool)
        for p in people:
            anyone |= p.mask
        face_items: list[Obj] = []
        for f in faces:
            ellipse = _ellipse(f.box, h, w)
            cut = ellipse & anyone
            mask = _to_source(cut if cut.sum() >= 0.5 * ellipse.sum() else ellipse, size)
            box = mask_box(mask)
            if box is not None:
                points = {k: [round(x * scale, 1), round(y * scale, 1)] for k, (x, y) in f.keypoints.items()}
                face_items.append(Obj(box, round(f.score, 4), "face", {"keypoints": points}, mask))
        items.sort(key=lambda o: o.box[0])
        face_items.sort(key=lambda o: o.box[0])
        return Objects(tuple(items + face_items), image.key, size)


def modules() -> list[Module]:
    return [Seg()]
