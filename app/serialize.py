"""Values ↔ bytes for the cache, and ↔ the typed JSON of a trace. JSON for structure, PNG for
pixels; never pickle. Large payloads (images, masks) are artifacts stored once under their own key.

A value's JSON names its artifacts by key only: it is what the step cache keeps for a week, so it
must not depend on the API's routes. The records add URLs when a response is built."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from modules.values import ImageValue, Obj, Objects, sha256_key
from program_dsl import ANY, BOOL, IMAGE, NONE, NUMBER, OBJECTS, TEXT, List, Type

Artifacts = dict[str, bytes]
Fetch = Callable[[str], Awaitable[bytes | None]]


class DecodeError(Exception):
    """A cached value could not be rebuilt (an artifact expired): the step is recomputed instead."""


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


def _obj_json(o: Obj, mask_key: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"box": [round(float(v), 2) for v in o.box], "score": round(float(o.score), 4),
                            "label": o.label}
    if o.attributes:
        item["attributes"] = o.attributes
    if mask_key is not None:
        item["mask_key"] = mask_key
    return item


def _mask_artifact(mask: NDArray[np.bool_], artifacts: Artifacts) -> str:
    png = mask_png(mask)
    key = sha256_key(png)
    artifacts[key] = png
    return key


def encode(value: Any) -> tuple[dict[str, Any], Artifacts]:
    """The typed JSON form of a value (as in a trace) and the artifacts it refers to."""
    artifacts: Artifacts = {}
    if isinstance(value, ImageValue):
        artifacts[value.key] = value.png()
        doc: dict[str, Any] = {"type": "image", "key": value.key, "width": value.width, "height": value.height,
                               "grid": value.grid}
        if value.region is not None:
            doc["mask_key"] = _mask_artifact(value.region, artifacts)
        return doc, artifacts
    if isinstance(value, Objects):
        items = [_obj_json(o, None if o.mask is None else _mask_artifact(o.mask, artifacts)) for o in value]
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
        items_json = []
        for v in value:
            j, a = encode(v)
            items_json.append(j)
            artifacts.update(a)
        return {"type": "list", "items": items_json}, artifacts
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


def to_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


async def decode(doc: dict[str, Any], fetch: Fetch) -> Any:
    """Rebuild a value from its JSON form, fetching the artifacts it names."""
    kind = doc.get("type")
    if kind == "image":
        data = await _artifact(doc["key"], fetch)
        img = Image.open(io.BytesIO(data))
        img.load()
        region = await _mask(doc["mask_key"], fetch) if "mask_key" in doc else None
        # Docs from before grids existed have none: such an image was its own grid.
        return ImageValue(img.convert("RGB"), doc["key"], doc.get("grid") or doc["key"], region)
    if kind == "objects":
        items = []
        for it in doc["items"]:
            mask = await _mask(it["mask_key"], fetch) if "mask_key" in it else None
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


async def _mask(key: str, fetch: Fetch) -> NDArray[np.bool_]:
    # Through "L": masks stored before were 8-bit (0/255), those stored now are 1-bit.
    mask: NDArray[np.bool_] = np.asarray(Image.open(io.BytesIO(await _artifact(key, fetch))).convert("L")) > 127
    return mask


def decode_base64_image(text: str) -> bytes:
    """Accept plain base64 or a ``data:image/...;base64,`` URL."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    return base64.b64decode(text, validate=True)
