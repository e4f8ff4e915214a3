"""Galleries: the named reference images modules read (the photo pack's known faces), listed,
added to and removed from while the service runs. Each tenant has its own copy: the deployment's
folder names, and what it added or removed itself."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from modules.base import ModuleError
from modules.gallery import Gallery, GalleryError, clean_name

from ..deps import service, tenant_of
from ..errors import ApiError, responses
from ..inputs import FRAMING, decode_image, read_limited
from ..records import GalleryDetail, GalleryEntry, GalleryInfo, GalleryList, GalleryName
from ..service import Service

router = APIRouter(prefix="/v1", tags=["galleries"])

MAX_SHOWN = 20

_ADD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["name", "image"], "properties": {
        "name": {"type": "string", "description": "the person's name, e.g. Nicole Kidman"},
        "image": {"type": "string", "format": "binary", "description": "a photo with exactly one face"}}}},
}}}


def _hint(gallery: str) -> str:
    return f"e.g. curl -F 'name=Nicole Kidman' -F image=@kidman.jpg http://HOST/v1/galleries/{gallery}"


def _listed(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:MAX_SHOWN])
    return shown + (f", … ({len(names)} in all)" if len(names) > MAX_SHOWN else "")


async def tenant(request: Request, svc: Service = Depends(service)) -> str:
    """The request's tenant, its galleries read from the store."""
    name = tenant_of(request)
    await svc.galleries.ensure(name)
    return name


def _gallery(svc: Service, name: str, tenant: str) -> Gallery:
    g = svc.galleries.get(name)
    if g is None:
        have = list(svc.galleries)
        raise ApiError(404, f"no gallery {name!r}; this deployment has {_listed(have)}",
                       hint=None if have else "galleries come with packs: enable one that declares some (photo)")
    return g.for_tenant(tenant)


def _info(g: Gallery) -> GalleryInfo:
    return GalleryInfo(name=g.name, doc=g.doc, names=len(g), images=len(g.entries()))


@router.get("/galleries", response_model=GalleryList, responses=responses(401))
async def list_galleries(svc: Service = Depends(service), who: str = Depends(tenant)) -> GalleryList:
    """Every gallery the enabled packs declare, with how many names each holds."""
    mine = svc.galleries.view(who)
    return GalleryList(galleries=[_info(mine[n]) for n in sorted(mine)])


@router.get("/galleries/{gallery}", response_model=GalleryDetail, responses=responses(401, 404, 422))
async def get_gallery(gallery: str, svc: Service = Depends(service), who: str = Depends(tenant)) -> GalleryDetail:
    """A gallery's names, with the number of images of each and where they came from."""
    g = _gallery(svc, gallery, who)
    entries = []
    for name in g.names():
        mine = g.entries(name)
        entries.append(GalleryName(name=name, images=len(mine), sources=sorted({e.source for e in mine})))
    return GalleryDetail(**_info(g).model_dump(), digest=g.digest(), entries=entries)


async def _form(request: Request, limit: int, gallery: str) -> tuple[str, bytes]:
    """The form's name and image bytes. The body is read within the limit first: Starlette's form
    parser bounds text fields only, and would spool a file of any size to disk."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(422, "send a multipart form with the fields 'name' and 'image'", hint=_hint(gallery))
    try:
        body = await read_limited(request, limit + FRAMING)
    except ApiError as e:
        raise ApiError(413, f"the form is over the limit: an image may be at most {limit} bytes",
                       hint="send a smaller photo: a face needs no more than about 1000 pixels across",
                       detail=e.body["message"]) from None

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, chunks(), max_files=2, max_fields=4,
                                     max_part_size=FRAMING).parse()
    except MultiPartException as e:
        raise ApiError(400, f"the form could not be read: {e.message}", hint=_hint(gallery)) from None
    name = form.get("name")
    files = [v for k, v in form.multi_items() if k == "image"]
    if isinstance(name, UploadFile):
        try:
            name = (await name.read()).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, "the name is not UTF-8 text") from None
    if name is None:
        raise ApiError(422, "the form has no 'name' field: whose face is it?", hint=_hint(gallery))
    if len(files) != 1 or not isinstance(files[0], UploadFile):
        got = "no 'image' field" if not files else ("two images" if len(files) > 1 else "'image' as text")
        raise ApiError(422, f"the form needs one 'image' file, got {got}", hint=_hint(gallery))
    return name, await files[0].read()


@router.post("/galleries/{gallery}", response_model=GalleryEntry, status_code=201,
             responses=responses(400, 401, 404, 413, 422), openapi_extra=_ADD_BODY)
async def add_to_gallery(gallery: str, request: Request, svc: Service = Depends(service),
                         who: str = Depends(tenant)) -> GalleryEntry:
    """Add a reference image of a name (a photo with exactly one face); a name may have several.
    Embedding runs on a thread, so other requests carry on meanwhile."""
    g = _gallery(svc, gallery, who)
    settings = svc.settings
    name, data = await _form(request, settings.max_image_bytes, gallery)
    try:
        name = clean_name(name, g.reserved)
    except GalleryError as e:
        raise ApiError(422, str(e), hint=_hint(gallery)) from None
    if not data:
        raise ApiError(422, "the image is empty", hint=_hint(gallery))
    image, _ = await decode_image(data, settings, "the image")
    try:
        entry = await svc.galleries.add(g.name, name, image, tenant=who)
    except ModuleError as e:
        raise ApiError(422, str(e), hint="send a photo with exactly one clearly visible face") from None
    return GalleryEntry(gallery=g.name, name=entry.name, image=entry.image, images=len(g.entries(entry.name)),
                        digest=g.digest())


@router.delete("/galleries/{gallery}/{name}", status_code=204, response_class=Response,
               responses={204: {"description": "Removed, with every image of the name."}, **responses(401, 404, 422)})
async def remove_from_gallery(gallery: str, name: str, svc: Service = Depends(service),
                              who: str = Depends(tenant)) -> Response:
    """Remove a name and all its images (folder images too, until the name is added again)."""
    g = _gallery(svc, gallery, who)
    try:
        await svc.galleries.remove(g.name, name, tenant=who)
    except KeyError:
        raise ApiError(404, f"no name {name!r} in the {g.name} gallery; it has {_listed(list(g.names()))}",
                       hint="names match in any case; GET /v1/galleries/" + g.name + " lists them") from None
    return Response(status_code=204)
