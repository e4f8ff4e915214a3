"""Uploaded images, and artifacts: images, masks and step outputs by their keys."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from modules.values import ImageValue

from ..deps import service, tenant_store
from ..errors import ApiError, responses
from ..inputs import decode_image, read_limited
from ..records import ARTIFACT_PATH, UploadedImage, linked
from ..serialize import DecodeError, is_rle, rle_png
from ..service import Service
from ..store import Store

router = APIRouter(tags=["images"])

_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
}}}


@router.post("/v1/images", response_model=UploadedImage, responses=responses(400, 401, 413, 422),
             openapi_extra=_UPLOAD_BODY)
async def upload_image(request: Request, svc: Service = Depends(service),
                       store: Store = Depends(tenant_store)) -> UploadedImage:
    """Upload an image once; refer to it in runs as ``"sha256:<hex>"``."""
    settings = svc.settings
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        # Room for a second file, so sending two gets the hint below rather than the parser's refusal.
        form = await request.form(max_files=2, max_part_size=settings.max_image_bytes)
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if len(files) != 1:
            raise ApiError(422, "send exactly one file in the form", hint="e.g. curl -F file=@cat.png")
        data = await files[0].read()
    else:
        data = await read_limited(request, settings.max_image_bytes)
    if not data:
        raise ApiError(422, "the request body is empty", hint="send the image bytes")
    image, fmt = await decode_image(data, settings, "the image")
    await store.put("img", image.key, data, settings.image_ttl_s)
    return UploadedImage(sha256=image.key, width=image.width, height=image.height, format=fmt)


_ARTIFACT_CONTENT: dict[int | str, dict[str, Any]] = {200: {
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}}},
    "description": "An image or mask as PNG, or a step's output as JSON."}}


@router.get(ARTIFACT_PATH, response_class=Response, responses={**_ARTIFACT_CONTENT, **responses(401, 404, 422)})
async def get_artifact(key: str, store: Store = Depends(tenant_store)) -> Response:
    """An image or mask as PNG, or a step's output as JSON, by its key."""
    if len(key) > 200:
        raise ApiError(404, "no such artifact")
    data = await store.get("art", key)
    if data is not None and is_rle(data):
        try:
            return Response(rle_png(data), media_type="image/png")  # a mask, drawn only when asked for
        except DecodeError:
            raise ApiError(404, f"artifact {key} is unreadable", hint="run the program again") from None
    if data is not None:
        return Response(data, media_type="image/png" if data.startswith(b"\x89PNG") else "application/octet-stream")
    data = await store.get("img", key)
    if data is not None:
        png = data if data.startswith(b"\x89PNG") else ImageValue.stored(data, key).png()
        return Response(png, media_type="image/png")
    data = await store.get("step", key)
    if data is not None:
        return JSONResponse(linked(json.loads(data)))
    raise ApiError(404, f"no artifact {key}", hint="artifacts expire with their steps; run the program again")
