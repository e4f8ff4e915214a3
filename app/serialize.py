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
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
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


def encode(value: Any) -> tuple[dict[str, Any], Artifacts]:
    """The typed JSON form of a value (as in a trace) and the artifacts it refers to."""
    artifacts: Artifacts = {}
    if isinstance(value, ImageValue):
        artifacts[value.key] = value.png()
        return {"type": "image", "key": value.key, "width": value.width, "height": value.height}, artifacts
    if isinstance(value, Objects):
        items = []
        for o in value:
            mask_key = None
            if o.mask is not None:
                png = mask_png(o.mask)
                mask_key = sha256_key(png)
                artifacts[mask_key] = png
            items.append(_obj_json(o, mask_key))
        return {"type": "objects", "image": value.image_key, "image_size": list(value.image_size),
                "count": len(value), "items": items}, artifacts
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
        return [doc["key"]]
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
        data = await fetch(doc["key"])
        if data is None:
            raise DecodeError(f"artifact {doc['key']} is gone")
        img = Image.open(io.BytesIO(data))
        img.load()
        return ImageValue(img.convert("RGB"), doc["key"])
    if kind == "objects":
        items = []
        for it in doc["items"]:
            mask = None
            if "mask_key" in it:
                data = await fetch(it["mask_key"])
                if data is None:
                    raise DecodeError(f"artifact {it['mask_key']} is gone")
                mask = np.asarray(Image.open(io.BytesIO(data))) > 127
            items.append(Obj(tuple(it["box"]), it["score"], it.get("label", ""), it.get("attributes", {}), mask))
        width, height = doc["image_size"]
        return Objects(tuple(items), doc["image"], (int(width), int(height)))
    if kind in ("bool", "number", "text", "none"):
        return doc["value"]
    if kind == "list":
        return [await decode(d, fetch) for d in doc["items"]]
    raise DecodeError(f"unknown value type {kind!r}")


def decode_base64_image(text: str) -> bytes:
    """Accept plain base64 or a ``data:image/...;base64,`` URL."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    return base64.b64decode(text, validate=True)
