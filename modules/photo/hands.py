"""Hands on real photos with MediaPipe Hands: a palm detector, then 21 landmarks and a handedness
for each palm, on the CPU, from the model files the ``mediapipe`` wheel ships.

The palm detector sees a 192×192 letterboxed copy of its input. Measured with a rendered hand pasted
at 16 places on two 512 px photos (the astronaut, coffee), by the hand's longer side: on the whole
image, all were found at 180 px, three in four at 115 px, about half at 85 px, none at 36 px.
``HandFinder`` therefore also runs the models on overlapping tiles of half the longer side (not
below 192 px, the detector's input): nine more calls of ~10 ms for a 512 px photo, after which all
were found at 85 px, 27 in 32 at 65 px, 25 in 32 at 50 px and 20 in 32 at 36 px. Unlike faces, a
second, closer level is not run: it would cost 50 more calls on a 1024 px photo. On the shipped
photos with no hand (the astronaut, coffee, a cat, the cameraman, Grace Hopper, a rocket, …)
neither the whole image nor a tile finds one. A tile's hand that reaches a tile edge inside the
image is cut and dropped there; a hand found on the whole image and on tiles is kept once, as the
whole image saw it (with more context around it).

Each hand is an ``Obj`` labelled ``hand``:

- ``mask``: the convex hull of its landmarks grown by a tenth of the palm's length, clipped to the
  image; bool H×W over the source image, and ``box`` is its bounding box. The landmarks are the
  joints' centres, so the bare hull leaves out the fingers' sides and tips: against the rendered
  hand's silhouette its IoU is 0.59 (it covers 76%), grown by a tenth 0.67 (covers 91%), the best
  of 0–0.2; what is left over is mostly the gaps between spread fingers, which any hull spans.
- ``score``: the model's confidence in the handedness. The solution API gives no detection score;
  every hand returned has passed the palm detector's 0.5 and the landmark model's presence 0.5.
- ``attributes["handedness"]``: ``left`` or ``right``, as the person's own hand. MediaPipe labels
  hands as if the image were a mirrored selfie; a photo taken of someone is not mirrored, so its
  label is swapped here (checked against the model's own 3-D landmarks: the hand it calls ``Left``
  in a photo has a right hand's chirality).
- ``attributes["keypoints"]``: the 21 landmarks in source pixels, named as MediaPipe names them
  (``wrist``, ``thumb_cmc`` … ``pinky_tip``), clamped to the image.

No hand is an empty list, not an error.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..values import ImageValue, Obj, box_iou
from .common import MIN_SIDE, RGB, Mask, box_containment, mask_box, model_input, package_dir
from .faces import tiles

__all__ = ["LANDMARKS", "Hand", "HandFinder", "find_hands", "hand_obj", "hands_files", "shared_hand_finder"]

# Of what ``find_hands`` returns: SEG (people.CODE_VERSION) and a LOC that return these objects bump
# their own versions with it, so no cached step outlives a change here.
CODE_VERSION = "1"
# In the order the landmark model emits them (mediapipe.python.solutions.hands.HandLandmark, named
# here so that naming them does not import MediaPipe).
LANDMARKS = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_finger_mcp", "index_finger_pip", "index_finger_dip", "index_finger_tip",
    "middle_finger_mcp", "middle_finger_pip", "middle_finger_dip", "middle_finger_tip",
    "ring_finger_mcp", "ring_finger_pip", "ring_finger_dip", "ring_finger_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)
MAX_HANDS = 8  # per model call: a group photo's tile rarely holds more
MIN_SCORE = 0.5  # MediaPipe's default for both the palm detector and the landmarks' presence
MIN_TILE = 192  # the palm detector's input side: smaller tiles would only be upsampled
GROW = 0.1  # of the palm's length (wrist to middle knuckle): about half a finger's width
# Duplicates: the same hand seen whole and on a tile overlaps by IoU or lies inside the other.
SAME_IOU, SAME_CONTAINED = 0.3, 0.6


def hands_files() -> list[Path]:
    """The graph, the full palm detector and landmark model (``model_complexity=1``) and the
    handedness labels, as the MediaPipe wheel installs them (the files the graph opens, traced)."""
    root = package_dir("mediapipe") / "modules"
    return [
        root / "hand_landmark" / "hand_landmark_tracking_cpu.binarypb",
        root / "hand_landmark" / "hand_landmark_full.tflite",
        root / "hand_landmark" / "handedness.txt",
        root / "palm_detection" / "palm_detection_full.tflite",
    ]


@dataclass(frozen=True)
class Hand:
    """One hand in the pixels of the array it was found in; ``points`` are the 21 landmarks as
    (x, y, z), z the depth relative to the wrist on x's scale (smaller is nearer the camera)."""

    points: tuple[tuple[float, float, float], ...]
    handedness: str  # the person's own hand: 'left' or 'right'
    score: float

    @property
    def palm(self) -> float:
        """The palm's length in pixels: wrist to the middle finger's knuckle, at least 1."""
        (wx, wy, _), (mx, my, _) = self.points[0], self.points[9]
        return max(1.0, math.hypot(mx - wx, my - wy))

    def box(self, grow: float = GROW) -> tuple[float, float, float, float]:
        """The landmarks' box grown by the margin the mask gets."""
        g = grow * self.palm
        xs, ys = [p[0] for p in self.points], [p[1] for p in self.points]
        return min(xs) - g, min(ys) - g, max(xs) + g, max(ys) + g

    def moved(self, dx: float, dy: float, s: float = 1.0) -> Hand:
        """Shifted by (dx, dy), then scaled by ``s``."""
        return Hand(tuple(((x + dx) * s, (y + dy) * s, z * s) for x, y, z in self.points), self.handedness, self.score)


def _cut(hand: Hand, tile: tuple[int, int, int, int], width: int, height: int) -> bool:
    """Whether ``hand`` (in image pixels) reaches an edge of ``tile`` (x, y, w, h) that is not the
    image's own edge: the hand goes on beyond the tile, and the tile saw only part of it."""
    x1, y1, x2, y2 = hand.box()
    x, y, w, h = tile
    return ((x > 0 and x1 <= x) or (y > 0 and y1 <= y)
            or (x + w < width and x2 >= x + w) or (y + h < height and y2 >= y + h))


class HandFinder:
    """MediaPipe Hands over the whole image and one level of tiles, loaded once (on first use or
    ``open``), one call at a time: the solution's graph keeps per-stream state and is not
    thread-safe, so its own lock serialises every caller (SEG, a LOC, a test)."""

    def __init__(self, max_hands: int = MAX_HANDS, min_score: float = MIN_SCORE, min_tile: int = MIN_TILE) -> None:
        self.max_hands = max_hands
        self.min_score = min_score
        self.min_tile = min_tile
        self._hands: Any = None
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if self._hands is None:
                # Imported here: importing MediaPipe costs ~1 s and starts its runtime, which building
                # the pack must not do.
                from mediapipe.python.solutions import hands

                # static_image_mode: every call is a new photo (or tile), never the next frame of a
                # tracked video; model_complexity=1 is the full landmark model.
                self._hands = hands.Hands(static_image_mode=True, max_num_hands=self.max_hands, model_complexity=1,
                                          min_detection_confidence=self.min_score,
                                          min_tracking_confidence=self.min_score)

    def _detect(self, rgb: RGB) -> list[Hand]:
        h, w = rgb.shape[:2]
        result = self._hands.process(rgb)
        found = []
        for landmarks, handedness in zip(result.multi_hand_landmarks or (), result.multi_handedness or ()):
            label = handedness.classification[0]
            # MediaPipe's label is for a mirrored image; a photo's is the other hand (module doc).
            person = "right" if label.label == "Left" else "left"
            points = tuple((p.x * w, p.y * h, p.z * w) for p in landmarks.landmark)
            found.append(Hand(points, person, float(label.score)))
        return found

    def find(self, rgb: RGB, where: Mask | None = None) -> list[Hand]:
        """Hands in ``rgb`` (H×W×3 uint8), in its pixels, left to right. With ``where`` (H×W), only
        the tiles that hold some of it are searched (SEG: its people); the whole image always is."""
        if self._hands is None:
            self.open()
        H, W = rgb.shape[:2]
        # One tiled level: the whole image, then tiles of half its longer side (see the module doc).
        level = tiles(W, H, max(self.min_tile, max(W, H) // 2))
        whole: list[Hand] = []
        tiled: list[tuple[int, Hand]] = []
        with self._lock:
            for x, y, w, h in level:
                if (w, h) == (W, H):
                    whole += self._detect(rgb)
                    continue
                if where is not None and not where[y:y + h, x:x + w].any():
                    continue
                for hand in self._detect(np.ascontiguousarray(rgb[y:y + h, x:x + w])):
                    moved = hand.moved(x, y)
                    if not _cut(moved, (x, y, w, h), W, H):
                        tiled.append((w * h, moved))
        kept = list(whole)
        # A tile's hand counts only where the whole image saw none; among tiles, the larger tile
        # (more context) and then the surer hand wins.
        for _, hand in sorted(tiled, key=lambda t: (-t[0], -t[1].score)):
            box = hand.box()
            if all(box_iou(box, k.box()) < SAME_IOU and box_containment(box, k.box()) < SAME_CONTAINED for k in kept):
                kept.append(hand)
        return sorted(kept, key=lambda h: h.box()[0])


def hand_mask(hand: Hand, width: int, height: int, grow: float = GROW) -> Mask:
    """The convex hull of the hand's landmarks grown by ``grow`` palm lengths, over a width×height
    image (see the module doc). Drawn in a window around the hand only: a photo may be 40 MP."""
    g = max(1, round(grow * hand.palm))
    x1, y1, x2, y2 = hand.box(grow)
    wx1, wy1 = max(0, math.floor(x1) - 1), max(0, math.floor(y1) - 1)
    wx2, wy2 = min(width, math.ceil(x2) + 1), min(height, math.ceil(y2) + 1)
    mask = np.zeros((height, width), bool)
    if wx2 <= wx1 or wy2 <= wy1:
        return mask
    pts = np.array([(x - wx1, y - wy1) for x, y, _ in hand.points], np.float32)
    local = np.zeros((wy2 - wy1, wx2 - wx1), np.uint8)
    hull = cv2.convexHull(pts).round().astype(np.int32)
    cv2.fillConvexPoly(local, hull, (1,))
    # Growing the hull by a disc is drawing its outline with a pen of the disc's diameter.
    cv2.polylines(local, [hull], True, (1,), thickness=2 * g + 1, lineType=cv2.LINE_8)
    mask[wy1:wy2, wx1:wx2] = local.astype(bool)
    return mask


def hand_obj(hand: Hand, width: int, height: int) -> Obj | None:
    """The hand (in source pixels) as SEG returns it; None when its mask misses the image."""
    mask = hand_mask(hand, width, height)
    box = mask_box(mask)
    if box is None:
        return None
    points = {name: [round(min(max(x, 0.0), width), 1), round(min(max(y, 0.0), height), 1)]
              for name, (x, y, _) in zip(LANDMARKS, hand.points)}
    return Obj(box, round(hand.score, 4), "hand", {"handedness": hand.handedness, "keypoints": points}, mask)


_SHARED = HandFinder()


def shared_hand_finder() -> HandFinder:
    """The process's one ``HandFinder``, which SEG and ``find_hands`` share (one load, one lock)."""
    return _SHARED


def find_hands(image: ImageValue) -> list[Obj]:
    """The hands in ``image``, left to right, each with its mask, handedness and landmarks (see the
    module doc); an empty list when there is none or the image is too small to hold one."""
    if min(image.width, image.height) < MIN_SIDE:
        return []
    rgb, scale = model_input(image)
    found = (hand_obj(h.moved(0, 0, scale), image.width, image.height) for h in _SHARED.find(rgb))
    return [o for o in found if o is not None]
