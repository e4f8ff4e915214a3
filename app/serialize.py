"""Values ↔ bytes for the cache, and ↔ the typed JSON of a trace. JSON for structure, PNG for
pixels; never pickle. Images are artifacts stored once under their own key.

Masks travel in the JSON as run-length encoding (COCO's uncompressed RLE: ``{"size": [h, w],
"counts": [...]}``, column-major, starting with a run of zeros), which costs a few microseconds
where a PNG cost milliseconds. Each mask is also an artifact under the key of its RLE, so its URL
answers a PNG, rendered only when someone asks for it.

A value's JSON names its artifacts by key only: it is what the step cache keeps for a week, so it
must not depend on the API's routes. The records add URLs when a response is built."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pydantic_core
from numpy.typing import NDArray
from PIL import Image

from modules.values import ImageValue, Obj, Objects, sha256_key
from program_dsl import ANY, BOOL, IMAGE, NONE, NUMBER, OBJECTS, TEXT, List, Type

Artifacts = dict[str, bytes]
Fetch = Callable[[str], Awaitable[bytes | None]]


class DecodeError(Exception):
    """A cached value could not be rebuilt (an artifact expired): the step is recomputed instead."""


def mask_rle(mask: NDArray[np.bool_]) -> dict[str, Any]:
    """COCO's uncompressed RLE of a bool H×W mask: run lengths down the columns, zeros first."""
    m = np.asarray(mask)
    h, w = (int(v) for v in m.shape)
    flat = (m if m.dtype == np.bool_ else m > 0.5).ravel(order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": []}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], change, [flat.size])))
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return {"size": [h, w], "counts": counts.tolist()}


def rle_mask(rle: Any) -> NDArray[np.bool_]:
    """The bool H×W mask an RLE describes; DecodeError when it is not one."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise DecodeError(f"not a run-length mask ({e})") from None
    if h < 0 or w < 0 or counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != h * w:
        raise DecodeError(f"run lengths do not cover a {h}×{w} mask")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    mask: NDArray[np.bool_] = np.ascontiguousarray(np.repeat(values, counts).reshape((w, h)).T)
    return mask


def mask_png(mask: NDArray[np.bool_]) -> bytes:
    """A black-and-white PNG, one bit a pixel, lightly compressed: every edit stores its mask, and on
    a 12 MP photo an 8-bit PNG took ~100 ms to write where this takes ~15 ms, in fewer bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=bool)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


_DOC_TYPES = {"image": IMAGE, "objects": OBJECTS, "number": NUMBER, "bool": BOOL, "text": TEXT, "none": NONE}


def doc_type(doc: dict[str, Any]) -> Type:
    """The type of the value a JSON document holds, without decoding it (a cache hit stays JSON)."""
    kind = doc.get("type")
    if kind == "list":
        items = doc.get("items") or []
        first = doc_type(items[0]) if items else ANY
        return List(first if all(doc_type(i) == first for i in items[1:]) else ANY)
    return _DOC_TYPES.get(str(kind), ANY)


def _obj_json(o: Obj, artifacts: Artifacts) -> dict[str, Any]:
    item: dict[str, Any] = {"box": [round(float(v), 2) for v in o.box], "score": round(float(o.score), 4),
                            "label": o.label}
    if o.attributes:
        item["attributes"] = o.attributes
    if o.mask is not None:
        _mask_doc(o.mask, item, artifacts)
    return item


def _mask_doc(mask: NDArray[np.bool_], doc: dict[str, Any], artifacts: Artifacts) -> None:
    rle = mask_rle(mask)
    data = to_bytes(rle)
    key = sha256_key(data)
    artifacts[key] = data
    doc["mask"], doc["mask_key"] = rle, key


def is_rle(data: bytes) -> bool:
    """Whether an artifact is a mask's RLE (its URL renders it as PNG) rather than a PNG."""
    return data[:1] == b"{"


def rle_png(data: bytes) -> bytes:
    """The PNG of a mask artifact stored as RLE."""
    try:
        return mask_png(rle_mask(json.loads(data)))
    except ValueError as e:
        raise DecodeError(f"mask artifact is unreadable ({e})") from None


def encode(value: Any, *, artifacts: bool = True) -> tuple[dict[str, Any], Artifacts]:
    """The typed JSON form of a value (as in a trace) and the artifacts it refers to (``artifacts``
    False: the JSON alone, for a value whose artifacts are stored already)."""
    return _encode(value, {} if artifacts else None)


def _encode(value: Any, out: Artifacts | None) -> tuple[dict[str, Any], Artifacts]:
    artifacts: Artifacts = out if out is not None else {}
    if isinstance(value, ImageValue):
        if out is not None:
            artifacts[value.key] = value.png()
        doc: dict[str, Any] = {"type": "image", "key": value.key, "width": value.width, "height": value.height,
                               "grid": value.grid}
        if value.region is not None:
            _mask_doc(value.region, doc, artifacts)
        return doc, artifacts
    if isinstance(value, Objects):
        items = [_obj_json(o, artifacts) for o in value]
        return {"type": "objects", "image": value.image_key, "image_size": list(value.image_size),
                "grid": value.grid, "count": len(value), "items": items}, artifacts
    if isinstance(value, bool):
        return {"type": "bool", "value": value}, artifacts
    if isinstance(value, (int, float)):
        return {"type": "number", "value": value}, artifacts
    if isinstance(value, str):
        return {"type": "text", "value": value}, artifacts
    if value is None:
        return {"type": "none", "value": None}, artifacts
    if isinstance(value, (list, tuple)):
        return {"type": "list", "items": [_encode(v, out)[0] for v in value]}, artifacts
    raise TypeError(f"cannot serialise a {type(value).__name__}")


def artifact_keys(doc: dict[str, Any]) -> list[str]:
    """Keys of the artifacts a value's JSON refers to (images, masks), at any depth."""
    kind = doc.get("type")
    if kind == "image":
        return [doc["key"], doc["mask_key"]] if "mask_key" in doc else [doc["key"]]
    if kind == "objects":
        return [it["mask_key"] for it in doc["items"] if "mask_key" in it]
    if kind == "list":
        return [k for item in doc["items"] for k in artifact_keys(item)]
    return []


def to_bytes(doc: Any) -> bytes:
    """Compact UTF-8 JSON, as ``json.dumps`` writes it (NaN included), through pydantic's Rust
    encoder: several times faster, and every computed step's output is written this way."""
    return pydantic_core.to_json(doc, inf_nan_mode="constants")


def from_bytes(data: bytes) -> Any:
    """``json.loads``, through pydantic's Rust parser (twice as fast: every cache hit parses its step)."""
    return pydantic_core.from_json(data)


async def decode(doc: dict[str, Any], fetch: Fetch) -> Any:
    """Rebuild a value from its JSON form, fetching the artifacts it names."""
    kind = doc.get("type")
    if kind == "image":
        data = await _artifact(doc["key"], fetch)
        img = Image.open(io.BytesIO(data))
        img.load()
        region = await _mask(doc, fetch)
        # Docs from before grids existed have none: such an image was its own grid.
        return ImageValue(img.convert("RGB"), doc["key"], doc.get("grid") or doc["key"], region)
    if kind == "objects":
        items = []
        for it in doc["items"]:
            mask = await _mask(it, fetch)
            items.append(Obj(tuple(it["box"]), it["score"], it.get("label", ""), it.get("attributes", {}), mask))
        width, height = doc["image_size"]
        return Objects(tuple(items), doc["image"], (int(width), int(height)), doc.get("grid") or doc["image"])
    if kind in ("bool", "number", "text", "none"):
        return doc["value"]
    if kind == "list":
        return [await decode(d, fetch) for d in doc["items"]]
    raise DecodeError(f"unknown value type {kind!r}")


async def _artifact(key: str, fetch: Fetch) -> bytes:
    data = await fetch(key)
    if data is None:
        raise DecodeError(f"artifact {key} is gone")
    return data


async def _mask(doc: dict[str, Any], fetch: Fetch) -> NDArray[np.bool_] | None:
    if "mask" in doc:
        return rle_mask(doc["mask"])
    if "mask_key" not in doc:
        return None
    # Docs from before masks were inline name a PNG; through "L", since the oldest were 8-bit (0/255).
    mask: NDArray[np.bool_] = np.asarray(Image.open(io.BytesIO(await _artifact(doc["mask_key"], fetch)))
                                         .convert("L")) > 127
    return mask


# Base64 is decoded this many characters at a time (a multiple of 4): the decoder holds the GIL, and
# a 20 MB image in one call would keep every other thread, the event loop's too, waiting for it.
B64_CHUNK = 1 << 20


def decode_base64_image(text: str) -> bytes:
    """Accept plain base64 or a ``data:image/...;base64,`` URL."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    if len(text) <= B64_CHUNK:
        return base64.b64decode(text, validate=True)
    if len(text) % 4:
        raise ValueError("base64 text whose length is not a multiple of 4")
    return b"".join(base64.b64decode(text[i:i + B64_CHUNK], validate=True) for i in range(0, len(text), B64_CHUNK))
