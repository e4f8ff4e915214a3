"""What a client sends: the run request (JSON or multipart) and its images, read within the
server's limits and decoded, or refused with an ApiError that says what to fix."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Request
from PIL import Image, UnidentifiedImageError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.datastructures import UploadFile

from modules.values import ImageValue

from .errors import ApiError, pydantic_errors
from .serialize import decode_base64_image
from .settings import Settings
from .store import Store

_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_IMAGE_NAME = re.compile(_NAME)
_SHA_REF = re.compile(r"^sha256:[0-9a-f]{64}$")


class _Strict(BaseModel):
    # A misspelled option ({"cahce": false}) must not be silently ignored: it is a 422 naming it.
    model_config = ConfigDict(extra="forbid")


ImageName = Annotated[str, StringConstraints(pattern=_NAME, max_length=64)]

# Room in a body beyond its program and images, for JSON or multipart framing and small fields.
FRAMING = 64 * 1024


def run_body_limit(settings: Settings) -> int:
    """The most bytes a run's body may hold: its images in base64 (a third more), and a program
    whose JSON escapes may double it."""
    return settings.max_program_bytes * 2 + settings.max_images * (settings.max_image_bytes * 4 // 3) + FRAMING


def _unicode(text: str) -> str:
    # JSON may spell half of a surrogate pair (\ud800) alone: a str Python holds but no UTF-8 can
    # carry, so a record or diagnostic that quotes it could never be written.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"holds an unpaired surrogate ({text[e.start]!r} at character {e.start}): "
                         "send valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class RunOptions(_Strict):
    cache: bool = Field(True, description="read and write the step cache")
    timeout_s: float | None = Field(None, gt=0, description="time limit for this run (capped by the server's)")
    run_async: bool = Field(False, alias="async", description="answer 202 with the run's id at once, and run it in "
                                                             "the background: follow it at /v1/runs/{id}/events")


class RunRequest(_Strict):
    program: Text = Field(..., description="the program text")
    images: dict[ImageName, Text] = Field(
        default_factory=dict,
        description='image variable → base64 bytes, a data: URL, or "sha256:<hex>" of an uploaded image')
    options: RunOptions = Field(default_factory=RunOptions)


class CheckRequest(_Strict):
    program: Text
    inputs: list[ImageName] | None = Field(None, max_length=64,
                                     description="image variables the program may use (default IMAGE, LEFT, RIGHT)")


@dataclass
class RunInputs:
    """A run as the request sent it, nothing decoded yet: images are read (``load_images``) only
    once the program has compiled and the run is admitted, and only those the program uses."""

    program: str
    options: RunOptions
    raw: dict[str, bytes]  # image variable → the bytes sent in a form
    refs: dict[str, str]  # image variable → "sha256:…" of an upload
    encoded: dict[str, str]  # image variable → base64 (or a data: URL) sent in JSON, decoded if used

    @property
    def names(self) -> list[str]:
        return [*self.raw, *self.encoded, *self.refs]


# Images up to this many pixels (and bytes) decode on the event loop: a thread hop would cost more
# than decoding them. Larger ones decode on a thread, so the loop keeps answering meanwhile.
INLINE_PIXELS = 1_000_000
INLINE_BYTES = 1_000_000
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError)


def probe_image(data: bytes, settings: Settings, what: str) -> tuple[int, int, str]:
    """Width, height and format from the header alone, within the byte and pixel limits."""
    if len(data) > settings.max_image_bytes:
        raise ApiError(413, f"{what} is {len(data)} bytes; the limit is {settings.max_image_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = (probe.format or "unknown").lower()
            w, h = probe.size
    except _UNREADABLE as e:
        raise ApiError(422, f"{what} is not a readable image", hint="send PNG, JPEG, WebP, GIF or BMP bytes",
                       detail=str(e)[:200], kind="unreadable_image") from None
    if w * h > settings.max_image_pixels:
        raise ApiError(413, f"{what} is {w}×{h} pixels; the limit is {settings.max_image_pixels} pixels",
                       kind="too_many_pixels")
    return w, h, fmt


def _decoded(data: bytes, what: str) -> ImageValue:
    try:
        return ImageValue.from_bytes(data)
    except _UNREADABLE as e:
        raise ApiError(422, f"{what} is not a readable image", hint="send PNG, JPEG, WebP, GIF or BMP bytes",
                       detail=str(e)[:200], kind="unreadable_image") from None


async def decode_image(data: bytes, settings: Settings, what: str) -> tuple[ImageValue, str]:
    """The image and its format, within the size and pixel limits; decoded in full (bytes a client
    sent are checked before anything is stored), on a thread when it is large."""
    w, h, fmt = probe_image(data, settings, what)
    return await _decode_probed(data, w * h, what), fmt


async def _decode_probed(data: bytes, pixels: int, what: str) -> ImageValue:
    if pixels <= INLINE_PIXELS and len(data) <= INLINE_BYTES:
        return _decoded(data, what)
    return await asyncio.to_thread(_decoded, data, what)


def require_json(request: Request, *, multipart: bool = False) -> None:
    """A JSON body, or none declared (read as JSON, as curl's -d with a JSON header-less body is):
    anything else is a 415 rather than parsed as JSON by accident."""
    declared = request.headers.get("content-type", "")
    kind = declared.split(";", 1)[0].strip().lower()
    if not kind or kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return
    wanted = "application/json" + (" or multipart/form-data" if multipart else "")
    raise ApiError(415, f"the body is {kind}; this route reads {wanted}",
                   hint="send the header 'content-type: application/json'")


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length") or "0"
    size = int(declared) if declared.isdigit() else 0  # a bogus length is not trusted: the count below decides
    if size > limit:
        raise ApiError(413, f"the body is {size} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_run(request: Request, settings: Settings) -> RunInputs:
    """The run a request asks for, read within the limits; no image is decoded yet."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        run_req, raw = await _from_form(request, settings)
    else:
        run_req, raw = await _from_json(request, settings)
    refs = {n: v for n, v in run_req.images.items() if v.startswith("sha256:")}
    encoded = {n: v for n, v in run_req.images.items() if n not in refs}
    if len(raw) + len(run_req.images) > settings.max_images:
        raise ApiError(422, f"a run takes at most {settings.max_images} images")
    return RunInputs(run_req.program, run_req.options, raw, refs, encoded)


async def load_images(run: RunInputs, used: Iterable[str], settings: Settings, store: Store) -> dict[str, ImageValue]:
    """The images of ``used`` (the plan's inputs; the others are neither decoded nor kept), each
    within the limits and all of them within NSX_MAX_RUN_PIXELS, checked by their headers before
    any is decoded; inline ones are stored for reuse."""
    used = set(used)
    wanted = [n for n in run.names if n in used]
    texts = {n: run.encoded[n] for n in wanted if n in run.encoded}
    raw = {n: run.raw[n] for n in wanted if n in run.raw}
    if texts:
        # On a thread once they are large, where the decoder's chunks let the loop in between them.
        if sum(map(len, texts.values())) <= INLINE_BYTES:
            raw.update(_from_base64(texts))
        else:
            raw.update(await asyncio.to_thread(_from_base64, texts))
    images: dict[str, ImageValue] = {}
    for name in wanted:
        if name in run.refs:
            data = await store.get("img", run.refs[name])
            if data is None and not store.available:
                # It may well be there: the store that would say is away. Not the client's mistake.
                raise ApiError(503, f"image {name} ({run.refs[name]}) cannot be read now: the image store is "
                                    "unreachable", hint="retry shortly, or send the image's bytes instead",
                               headers={"Retry-After": "2"})
            if data is None:
                raise ApiError(422, f"image {name} refers to {run.refs[name]}, which this server does not have",
                               hint="upload it with POST /v1/images first, or send the bytes", kind="unknown_image")
            images[name] = ImageValue.stored(data, run.refs[name])  # checked when uploaded: decoded if needed
    pixels = {n: w * h for n in wanted if n in raw for w, h, _ in [probe_image(raw[n], settings, f"image {n}")]}
    total = sum(pixels.values()) + sum(im.width * im.height for im in images.values())
    if total > settings.max_run_pixels:
        raise ApiError(413, f"the images this program uses have {total} pixels in all; the limit is "
                            f"{settings.max_run_pixels} (NSX_MAX_RUN_PIXELS)", hint="send smaller images, or fewer",
                       kind="too_many_pixels")
    for name, count in pixels.items():
        images[name] = await _decode_probed(raw[name], count, f"image {name}")
        await store.put("img", images[name].key, raw[name], settings.image_ttl_s)
    return {n: images[n] for n in wanted}


async def _from_form(request: Request, settings: Settings) -> tuple[RunRequest, dict[str, bytes]]:
    form = await request.form(max_files=settings.max_images, max_part_size=settings.max_image_bytes)
    program: Any = form.get("program")
    if isinstance(program, UploadFile):
        try:
            program = (await program.read()).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, "the program is not UTF-8 text") from None
    if not isinstance(program, str):
        raise ApiError(422, "the form needs a 'program' field", hint="curl -F program=@prog.nsx -F IMAGE=@cat.png")
    options = RunOptions()
    refs: dict[str, str] = {}
    raw: dict[str, bytes] = {}
    for name, value in form.multi_items():
        if name == "program":
            continue
        if name == "options":
            try:
                options = RunOptions.model_validate_json(str(value))
            except ValidationError as e:
                raise ApiError(422, "options: " + "; ".join(x["message"] for x in pydantic_errors(e.errors())),
                               hint='send a JSON object, e.g. {"cache": false}') from None
        elif not _IMAGE_NAME.match(name):
            raise ApiError(422, f"form field {name!r} is not an image variable name")
        elif isinstance(value, UploadFile):
            raw[name] = await value.read()
        else:
            refs[name] = _reference(name, value)
    return RunRequest(program=program, images=refs, options=options), raw


async def _from_json(request: Request, settings: Settings) -> tuple[RunRequest, dict[str, bytes]]:
    require_json(request, multipart=True)
    body = await read_limited(request, run_body_limit(settings))
    try:
        run_req = RunRequest.model_validate_json(body)
    except ValidationError as e:
        errors = pydantic_errors(e.errors())
        hint = errors[0].get("hint") if len(errors) == 1 else None
        raise ApiError(422, "; ".join(x["message"] for x in errors),
                       hint=hint or 'send JSON like {"program": "...", "images": {"IMAGE": "<base64>"}}') from None
    for name, value in run_req.images.items():
        if value.startswith("sha256:"):
            _reference(name, value)
    # Base64 stays text until the program is known to use the image (``load_images``).
    return run_req, {}


def _from_base64(texts: dict[str, str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, text in texts.items():
        try:
            out[name] = decode_base64_image(text)
        except ValueError:
            raise ApiError(422, f"image {name} is not valid base64",
                           hint="send base64 bytes, a data: URL or a sha256: reference") from None
    return out


def _reference(name: str, value: str) -> str:
    if not _SHA_REF.match(value):
        raise ApiError(422, f"image {name}: {value[:80]!r} is not a sha256 reference",
                       hint="use the 'sha256' value POST /v1/images answered")
    return value
