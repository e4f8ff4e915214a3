"""LOC's post-processing works on all of an image's objects at once (``nets.decode``, ``nets.classify``,
``Loc.forward``): its answers must be exactly those of the per-object path it replaced, which is kept
here as the reference — same boxes, scores, labels, attribute probabilities and mask pixels, at the
detector's input size and at other sizes (where masks are scaled to the image)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modules.shapes import Loc, domain, nets
from modules.shapes.files import WEIGHTS, have_weights
from modules.shapes.nets import (
    FG,
    HEAT,
    OFF_X,
    OFF_Y,
    SIZE_H,
    SIZE_SCALE,
    SIZE_W,
    VEC_UNIT,
    VEC_X,
    VEC_Y,
    Detection,
    Maps,
    Prediction,
    box_iou,
    peaks,
)
from modules.shapes.tools.world import render_scene
from modules.shapes.vocab import ATTRIBUTE_NAMES, label
from modules.values import ImageValue, Obj, Objects

needs_weights = pytest.mark.skipif(not have_weights(), reason=f"no trained weights in {WEIGHTS}")


# ----------------------------------------------------------------------------- the per-object reference


def ref_nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    order = torch.argsort(scores, descending=True)
    ious = box_iou(boxes, boxes)
    keep: list[int] = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= ious[i] > iou
    return torch.tensor(keep, dtype=torch.long)


def ref_decode(outputs: tuple[torch.Tensor, torch.Tensor], cfg: nets.DetectorConfig,
               mask_stride: int = 8) -> list[list[Detection]]:
    out, fine = outputs
    S, st = cfg.input_size, cfg.stride
    heat = torch.sigmoid(out[:, HEAT:HEAT + 1])
    fg_logits = F.interpolate(fine[:, FG:FG + 1], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    fg_prob = torch.sigmoid(fg_logits)
    fg_full = fg_logits > 0
    vec_full = F.interpolate(fine[:, VEC_X:VEC_Y + 1], size=(S, S), mode="bilinear", align_corners=False)
    pix = (torch.arange(S, dtype=out.dtype) + 0.5)
    results: list[list[Detection]] = []
    for b, (ys, xs, scores) in enumerate(peaks(heat, cfg.peak_threshold, cfg.max_objects)):
        if len(ys) == 0:
            results.append([])
            continue
        o = out[b]
        cx = (xs.to(out.dtype) + o[OFF_X, ys, xs]) * st
        cy = (ys.to(out.dtype) + o[OFF_Y, ys, xs]) * st
        bw = o[SIZE_W, ys, xs].clamp(min=0.01) * SIZE_SCALE
        bh = o[SIZE_H, ys, xs].clamp(min=0.01) * SIZE_SCALE
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).clamp(0, S)
        keep = ref_nms(boxes, scores, 0.7)
        boxes, scores, cx, cy = boxes[keep], scores[keep], cx[keep], cy[keep]
        K = len(keep)
        regions = torch.zeros((K, S, S), dtype=torch.bool)
        for k in range(K):
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            rows = slice(max(0, int(y1) - 2), min(S, math.ceil(y2) + 2))
            regions[k, rows, max(0, int(x1) - 2):min(S, math.ceil(x2) + 2)] = True
        tx = pix[None, :] + vec_full[b, 0] * VEC_UNIT
        ty = pix[:, None] + vec_full[b, 1] * VEC_UNIT
        d2 = (tx[None] - cx[:, None, None]) ** 2 + (ty[None] - cy[:, None, None]) ** 2
        d2 = d2.masked_fill(~regions, float("inf"))
        owner = d2.argmin(0)
        owned = regions.any(0)
        dets: list[Detection] = []
        for k in range(K):
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            mine = (owner == k) & owned
            m = fg_full[b] & mine
            if not bool(m.any()):
                m = torch.zeros((S, S), dtype=torch.bool)
                m[int(y1):math.ceil(y2), int(x1):math.ceil(x2)] = True
                mine = m
            soft = F.avg_pool2d((fg_prob[b] * mine.to(out.dtype))[None, None], mask_stride)[0, 0]
            dets.append(Detection((x1, y1, x2, y2), float(scores[k]), m, soft))
        results.append(dets)
    return results


def ref_classify(attrnet: nets.AttributeNet, images: torch.Tensor, dets: list[list[Detection]]
                 ) -> list[list[Prediction]]:
    size = images.shape[-1]
    with torch.inference_mode():
        flat = [(b, d) for b, ds in enumerate(dets) for d in ds]
        if not flat:
            return [[] for _ in dets]
        boxes = torch.tensor([d.box for _, d in flat], dtype=torch.float32)
        owners = torch.tensor([b for b, _ in flat])
        softs = torch.stack([d.soft for _, d in flat])
        areas = torch.tensor([float(d.mask.sum()) for _, d in flat], dtype=torch.float32)
        crops = nets.sample_crops(images.float().contiguous(), softs, owners, boxes, attrnet.cfg)
        logits = attrnet(crops, nets.geometry(boxes, areas, size))
        probs = {a: torch.softmax(v.float(), 1).cpu() for a, v in logits.items()}
    out: list[list[Prediction]] = [[] for _ in dets]
    for n, (b, d) in enumerate(flat):
        p = {a: {name: float(probs[a][n, i]) for i, name in enumerate(attrnet.cfg.attributes[a])} for a in probs}
        best = {a: max(v, key=v.__getitem__) for a, v in p.items()}
        out[b].append(Prediction(d.box, d.score, d.mask, p, best))
    return out


def ref_forward(loc: Loc, images: list[ImageValue]) -> list[Any]:
    """LOC(image, 'object') as the per-object path computed it (images that pass the domain check)."""
    detector, attrnet = loc._nets()
    S = detector.cfg.input_size
    x = loc._tensor([im.image for im in images])
    with torch.inference_mode():
        raw, fg = detector(x)
        raw, fg = raw.float().cpu(), fg.float().cpu()
        dets = ref_decode((raw, fg), detector.cfg, attrnet.cfg.mask_stride)
    maps = Maps(torch.sigmoid(raw[:, HEAT]), torch.sigmoid(fg[:, FG]))
    assert loc.limits is not None
    verdicts = [domain.judge(e, loc.limits) for e in domain.measure(x, dets, maps, loc.limits)]
    assert all(v.ok for v in verdicts)
    out: list[Any] = []
    for image, objs in zip(images, ref_classify(attrnet, x, dets)):
        W, H = image.width, image.height
        sx, sy = W / S, H / S
        items = []
        for p in objs:
            mask = p.mask.cpu().numpy()
            if (W, H) != (S, S):
                scaled = Image.fromarray(mask.astype(np.uint8) * 255).resize((W, H), Image.Resampling.NEAREST)
                mask = np.asarray(scaled) > 127
            x1, y1, x2, y2 = p.box
            attrs: dict[str, Any] = {a: {v: round(pr, 4) for v, pr in p.probs[a].items()} for a in ATTRIBUTE_NAMES}
            items.append(Obj((x1 * sx, y1 * sy, x2 * sx, y2 * sy), round(p.score, 4), label(p.attributes), attrs, mask))
        items.sort(key=lambda o: (o.box[0] + o.box[2], o.box[1] + o.box[3]))
        out.append(Objects(tuple(items), image.key, (W, H)))
    return out


# ----------------------------------------------------------------------------- the checks


def same_objects(got: Objects, want: Objects) -> None:
    assert got.image_key == want.image_key and got.image_size == want.image_size
    assert len(got) == len(want) and len(want) > 0
    for g, w in zip(got, want):
        assert g.box == w.box and g.score == w.score and g.label == w.label
        assert {k: v for k, v in g.attributes.items() if k != "matched"} == w.attributes
        assert g.mask is not None and w.mask is not None
        assert g.mask.dtype == w.mask.dtype and g.mask.shape == w.mask.shape
        assert np.array_equal(g.mask, w.mask)


def scenes(sizes: list[tuple[int, int] | None]) -> list[ImageValue]:
    out = []
    for i, size in enumerate(sizes):
        im = render_scene(4242, i).pil()
        if size is not None:
            im = im.resize(size, Image.Resampling.BICUBIC)
        out.append(ImageValue(im, f"sha256:scene{i}-{size}"))
    return out


@needs_weights
@pytest.mark.parametrize("sizes", [
    [None] * 6,  # the detector's own input size: masks are used as they are
    [(512, 512), (300, 200), (257, 383), (640, 480), None, (199, 199)],  # masks scaled to each image
])
def test_loc_answers_as_the_per_object_path(sizes: list[tuple[int, int] | None]) -> None:
    loc = Loc()
    loc.load("cpu")
    images = scenes(sizes)
    got = loc.forward([{"image": im, "object": "object"} for im in images])
    for g, w in zip(got, ref_forward(loc, images)):
        assert isinstance(g, Objects)
        same_objects(g, w)


@needs_weights
def test_decode_and_classify_as_the_per_object_path() -> None:
    loc = Loc()
    loc.load("cpu")
    detector, attrnet = loc._nets()
    x = loc._tensor([render_scene(77, i).pil() for i in range(8)])
    with torch.inference_mode():
        raw, fg = detector(x)
    raw, fg = raw.float(), fg.float()
    got, want = nets.decode((raw, fg), detector.cfg), ref_decode((raw, fg), detector.cfg)
    assert [len(d) for d in got] == [len(d) for d in want]
    for gs, ws in zip(got, want):
        for g, w in zip(gs, ws):
            assert g.box == w.box and g.score == w.score
            assert torch.equal(g.mask, w.mask) and torch.equal(g.soft, w.soft)
    for gs, ws in zip(nets.classify(attrnet, x, got), ref_classify(attrnet, x, want)):
        assert [(p.box, p.score, p.probs, p.attributes) for p in gs] == [(p.box, p.score, p.probs, p.attributes)
                                                                        for p in ws]


def test_decode_falls_back_to_the_box_where_the_foreground_head_sees_nothing() -> None:
    cfg = nets.DetectorConfig()
    S, st = cfg.input_size, cfg.stride
    h = S // st
    out = torch.full((1, 5, h, h), -10.0)
    out[:, SIZE_W:SIZE_H + 1] = 0.3
    out[0, OFF_X:OFF_Y + 1] = 0.5
    for y, x in [(20, 20), (20, 60), (90, 40)]:
        out[0, HEAT, y, x] = 5.0
    fine = torch.full((1, 3, S // 2, S // 2), -5.0)  # no foreground anywhere
    fine[0, FG, 5:20, 5:20] = 5.0  # except under the first object
    got, want = nets.decode((out, fine), cfg), ref_decode((out, fine), cfg)
    assert len(got[0]) == 3
    for g, w in zip(got[0], want[0]):
        assert g.box == w.box and g.score == w.score
        assert torch.equal(g.mask, w.mask) and torch.equal(g.soft, w.soft)


def test_nms_as_the_tensor_loop() -> None:
    gen = torch.Generator().manual_seed(3)
    for n in (1, 2, 5, 24):
        xy = torch.rand((n, 2), generator=gen) * 200
        wh = torch.rand((n, 2), generator=gen) * 60 + 1
        boxes = torch.cat([xy, xy + wh], 1)
        scores = torch.rand(n, generator=gen).round(decimals=1)  # ties too
        for iou in (0.1, 0.5, 0.7):
            assert torch.equal(nets.nms(boxes, scores, iou), ref_nms(boxes, scores, iou))


@pytest.mark.parametrize("size", [(256, 256), (512, 512), (300, 200), (37, 91), (257, 255), (1920, 1080), (1, 3)])
def test_nearest_tables_are_pils(size: tuple[int, int]) -> None:
    W, H = size
    mask = np.random.default_rng(W * H).random((256, 256)) > 0.5
    want = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((W, H), Image.Resampling.NEAREST)) > 127
    rows, cols = nets.nearest_tables(256, W, H)
    assert np.array_equal(mask[rows[:, None], cols[None, :]], want)
