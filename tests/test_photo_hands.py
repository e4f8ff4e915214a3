"""Hands on photos: MediaPipe Hands through ``modules.photo.hands``.

No photo that ships in a package here shows a bare hand (the astronaut's are gloved and out of
frame, the cameraman's gloved; MediaPipe finds none on any of them), so the hands are rendered: an
open right hand seen from its back, fingers up, nails towards the camera, shaded like a cylinder,
pasted on the astronaut photo; mirrored, it is a left hand. The model is loaded once per process.
"""

from __future__ import annotations

import threading
from itertools import pairwise
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
from PIL import Image
from skimage import data

from modules.photo.hands import LANDMARKS, Hand, HandFinder, find_hands, hands_files, shared_hand_finder
from modules.values import ImageValue, Obj, box_iou

Box = tuple[float, float, float, float]

# The hand in a 100×100 frame: wrist at the bottom, and each finger's joints from the knuckle out
# with its width at the knuckle and at the tip.
WRIST = (50, 96)
FINGERS = {
    "thumb": ([(37, 84), (28, 74), (21, 64), (16, 55)], 10.0, 8.0),
    "index": ([(39, 55), (36, 39), (35, 29), (34, 20)], 9.0, 7.5),
    "middle": ([(50, 53), (50, 35), (50, 24), (50, 14)], 9.4, 7.8),
    "ring": ([(61, 55), (63, 39), (64, 29), (65, 21)], 9.0, 7.4),
    "pinky": ([(71, 59), (75, 48), (77, 41), (79, 34)], 7.8, 6.4),
}
PALM = [(40, 97), (36, 86), (33, 70), (35, 55), (50, 52), (66, 55), (75, 60), (70, 82), (61, 97)]
SKIN = (222, 170, 135)


def hand_picture(size: int) -> Image.Image:
    """An RGBA size×size right hand from the back (see the module doc); alpha is the hand."""
    s = size * 4 / 100  # drawn at 4× and downsampled, for smooth edges

    def px(*pts: tuple[float, float]) -> np.ndarray:
        return np.array([(x * s, y * s) for x, y in pts], np.int32)

    def at(pt: tuple[float, float]) -> tuple[int, int]:
        return int(pt[0] * s), int(pt[1] * s)

    alpha = np.zeros((size * 4, size * 4), np.uint8)
    cv2.fillPoly(alpha, [px(*PALM), px((40, 96), (61, 96), (63, 100), (38, 100))], (255,))
    for name, (joints, w0, w1) in FINGERS.items():
        chain = ([(45.0, 90.0)] if name == "thumb" else []) + joints
        for i, (a, b) in enumerate(pairwise(chain)):
            width = w0 + (w1 - w0) * i / max(1, len(chain) - 2)
            cv2.line(alpha, at(a), at(b), (255,), int(width * s))
        cv2.circle(alpha, at(joints[-1]), int(w1 * s / 2), (255,), -1)
    depth = cv2.distanceTransform(alpha, cv2.DIST_L2, 5)
    shade = 0.5 + 0.5 * np.clip(depth / (4.5 * s), 0, 1) ** 0.6  # darker towards the edges: round
    grain = 1 + 0.04 * cv2.GaussianBlur(np.random.default_rng(0).standard_normal(alpha.shape).astype(np.float32),
                                        (0, 0), 0.6 * s)
    light = np.linspace(1.05, 0.9, alpha.shape[1], dtype=np.float32)[None, :]  # lit from the left
    rgb = np.array(SKIN, np.float32) * (shade * grain * light)[..., None]
    for joints, _, w1 in FINGERS.values():
        (ax, ay), (bx, by) = joints[-2], joints[-1]
        length = float(np.hypot(bx - ax, by - ay))
        dx, dy = (bx - ax) / length, (by - ay) / length
        centre = at((ax + dx * length * 0.62, ay + dy * length * 0.62))
        axes = (int(length * 0.32 * s), int(w1 * 0.33 * s))
        angle = float(np.degrees(np.arctan2(dy, dx)))
        cv2.ellipse(rgb, centre, axes, angle, 0, 360, (238, 200, 190), -1)  # the nail
        cv2.ellipse(rgb, centre, axes, angle, 0, 360, (170, 120, 105), max(1, int(0.25 * s)))
        for jx, jy in joints[1:-1]:  # wrinkles across the knuckles
            ex, ey = -dy * w1 * 0.36, dx * w1 * 0.36
            for k in (-0.6, 0.0, 0.6):
                cv2.line(rgb, at((jx - ex + dx * k, jy - ey + dy * k)), at((jx + ex + dx * k, jy + ey + dy * k)),
                         (175, 128, 105), max(1, int(0.2 * s)))
    for joints, _, _ in list(FINGERS.values())[1:]:
        kx, ky = joints[0]
        cv2.circle(rgb, at((kx, ky + 2)), int(2.5 * s), (235, 190, 158), -1)  # the knuckles' highlights
    rgb = cv2.GaussianBlur(rgb, (0, 0), 0.4 * s)
    rgba = np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), alpha])
    return Image.fromarray(rgba, "RGBA").resize((size, size), Image.Resampling.LANCZOS)


def paste_hand(canvas: Image.Image, size: int, at: tuple[int, int], left: bool = False) -> tuple[Box, np.ndarray]:
    """Paste a hand (a left one: mirrored) on ``canvas``; its box and silhouette in canvas pixels."""
    picture = hand_picture(size)
    if left:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas.paste(picture, at, picture)
    silhouette = np.zeros((canvas.height, canvas.width), bool)
    silhouette[at[1]:at[1] + size, at[0]:at[0] + size] = np.asarray(picture)[..., 3] > 127
    ys, xs = np.nonzero(silhouette)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), silhouette


def image(pic: Image.Image | np.ndarray, key: str = "sha256:test") -> ImageValue:
    im = pic if isinstance(pic, Image.Image) else Image.fromarray(pic)
    return ImageValue(im.convert("RGB"), key)


def two_hands() -> tuple[ImageValue, list[tuple[Box, np.ndarray]]]:
    """The astronaut with a left hand over the flag and a right hand by the shuttle."""
    canvas = Image.fromarray(data.astronaut())
    left = paste_hand(canvas, 140, (10, 10), left=True)
    right = paste_hand(canvas, 140, (362, 10))
    return image(canvas, "sha256:two-hands"), [left, right]


@pytest.fixture(scope="module", autouse=True)
def opened() -> None:
    shared_hand_finder().open()


def check_mask(hand: Obj, width: int, height: int) -> None:
    assert hand.mask is not None and hand.mask.shape == (height, width) and hand.mask.dtype == bool
    ys, xs = np.nonzero(hand.mask)
    assert hand.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # the box is the mask's


def test_a_left_and_a_right_hand_are_found_where_they_are() -> None:
    img, truth = two_hands()
    hands = find_hands(img)
    assert [h.label for h in hands] == ["hand", "hand"]
    assert [h.attributes["handedness"] for h in hands] == ["left", "right"]  # left to right, as pasted
    for hand, (box, silhouette) in zip(hands, truth):
        assert box_iou(hand.box, box) > 0.8
        assert 0.5 < hand.score <= 1.0
        check_mask(hand, 512, 512)
        assert hand.mask is not None
        covered = (hand.mask & silhouette).sum()
        assert covered > 0.85 * silhouette.sum()  # the fingers' sides and tips too, not only the joints
        assert covered > 0.6 * hand.mask.sum()  # and not much more (the hull spans the fingers' gaps)
        points = hand.attributes["keypoints"]
        assert list(points) == list(LANDMARKS)
        assert all(hand.mask[int(y), int(x)] for x, y in points.values())
        # Fingers up: every fingertip above the wrist; the thumb on the side its hand has it on
        # when seen from the back (a right hand's thumb on the image's left).
        assert all(points[f"{f}_tip"][1] < points["wrist"][1] for f in ("index_finger", "middle_finger", "pinky"))
        thumb_left = points["thumb_tip"][0] < points["pinky_tip"][0]
        assert thumb_left == (hand.attributes["handedness"] == "right")


def test_handedness_is_the_persons_own_hand_by_the_models_3d_landmarks() -> None:
    # The label MediaPipe gives is for a mirrored image; the module swaps it. The model's own 3-D
    # landmarks say which hand it saw: for a right hand, (index knuckle - wrist) × (pinky knuckle -
    # wrist) points out of the palm, the side the fingers bend towards.
    img, _ = two_hands()
    found = shared_hand_finder().find(np.asarray(img.image))
    assert len(found) == 2

    def chirality(hand: Hand) -> str:
        p = np.array(hand.points)
        normal = np.cross(p[5] - p[0], p[17] - p[0])
        towards = np.mean([np.dot(p[tip] - p[0], normal) for tip in (8, 12, 16, 20)])
        return "right" if towards > 0 else "left"

    assert [chirality(h) for h in found] == [h.handedness for h in found] == ["left", "right"]


def test_a_small_hand_is_found_on_the_tiles() -> None:
    canvas = Image.fromarray(data.astronaut())
    box, _ = paste_hand(canvas, 64, (420, 30))  # 45 px wide on a 512 px photo
    rgb = np.asarray(canvas)
    whole_only = HandFinder(min_tile=10**6)  # no tile is that large: the whole image alone
    whole_only.open()
    assert whole_only.find(rgb) == []
    hands = find_hands(image(canvas))
    assert len(hands) == 1 and hands[0].attributes["handedness"] == "right"
    assert box_iou(hands[0].box, box) > 0.7


def test_tiles_are_searched_only_where_asked() -> None:
    canvas = Image.fromarray(data.astronaut())
    paste_hand(canvas, 64, (420, 30))
    rgb = np.asarray(canvas)
    elsewhere = np.zeros((512, 512), bool)
    elsewhere[400:, :100] = True  # only the bottom-left tiles hold it
    assert shared_hand_finder().find(rgb, elsewhere) == []
    assert len(shared_hand_finder().find(rgb, ~elsewhere)) == 1


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera", "grace_hopper"])
def test_no_hand_on_photos_without_one(name: str) -> None:
    if name == "grace_hopper":
        pic = Image.open(Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg")
    else:
        pic = Image.fromarray(getattr(data, name)())
    assert find_hands(image(pic)) == []


def test_a_huge_photo_is_scaled_for_the_model_and_hands_come_back_in_its_pixels() -> None:
    img, truth = two_hands()
    big = img.image.resize((3072, 3072), Image.Resampling.BILINEAR)
    hands = find_hands(image(big))
    assert len(hands) == 2
    for hand, (box, _) in zip(hands, truth):
        assert box_iou(hand.box, tuple(v * 6 for v in box)) > 0.75
        check_mask(hand, 3072, 3072)


def test_a_tiny_image_has_no_hand() -> None:
    assert find_hands(image(Image.new("RGB", (12, 40)))) == []


def test_concurrent_callers_get_the_same_answer() -> None:
    img, _ = two_hands()
    alone = [h.box for h in find_hands(img)]
    results: list[list[Box]] = []

    def call() -> None:
        results.append([h.box for h in find_hands(img)])

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [alone] * 3


def test_the_model_files_ship_with_mediapipe() -> None:
    files = hands_files()
    assert all(f.is_file() for f in files)
    assert {f.name for f in files} >= {"palm_detection_full.tflite", "hand_landmark_full.tflite"}
