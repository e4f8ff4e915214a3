"""Galleries: named reference sets a pack's modules read, such as known faces.

A pack declares its galleries (``Pack(..., galleries=[Gallery("faces", embed, ...)])``) and gives
each the function that turns a reference image into an embedding; the engine knows no pack by
name. A gallery holds any number of images per name and is edited while the service runs, so the
modules that read it return ``digest()`` from ``Module.state()``: a changed gallery changes their
cache keys, and an answer computed before a name was added is never served after.

``Galleries`` is what the service keeps: every enabled pack's galleries, loaded at start-up from
the service's store (names added through the API) and from a folder (``NSX_GALLERY_DIR``), and
written back to the store on every change. Embedding is slow (a face detector and a network), so
the blocking calls are made on a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from .base import ModuleError
from .values import ImageValue

if TYPE_CHECKING:
    from .base import Pack

__all__ = ["IMAGE_SUFFIXES", "Embed", "Entry", "Galleries", "Gallery", "GalleryError", "Shelf", "clean_name"]

log = logging.getLogger("nsx.gallery")

Vector = NDArray[np.float32]
# A reference image → its embedding; raises ModuleError saying what to fix (no face, two faces).
Embed = Callable[[ImageValue], Vector]
Source = Literal["api", "folder"]

MAX_NAME = 100
# Programs name several people in one SELECT query separated by commas, and names travel in URL
# paths: a name with either could never be asked for.
_FORBIDDEN = {",": "a comma (SELECT separates names with commas)", "/": "a slash", "\\": "a backslash"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# The copy of a reference image kept in the store, to embed it again when the model changes: a
# photo's face needs no more than this, and the store should not hold 20 MB per name.
COPY_SIDE = 1024
DOC_VERSION = 1


class GalleryError(ModuleError):
    """A name or reference image a gallery cannot use; the message says what to fix."""


def clean_name(name: str, reserved: frozenset[str] = frozenset()) -> str:
    """``name`` as a gallery keeps it: spaces trimmed and collapsed; refused when empty, too long,
    only dots (a URL path cannot name it), one of the ``reserved`` words (lower case) the modules
    read otherwise, or holding a character that would make it impossible to ask for."""
    text = " ".join(str(name).split())
    if not text:
        raise GalleryError("the name is empty; give the person's name, e.g. name=Nicole Kidman")
    if len(text) > MAX_NAME:
        raise GalleryError(f"the name is {len(text)} characters long; at most {MAX_NAME} are allowed")
    if not text.strip("."):
        raise GalleryError(f"the name {text!r} is only dots; give the person's name")
    if text.casefold() in reserved:
        raise GalleryError(f"the name {text!r} is a word the modules already read (a query for {text!r} "
                           f"means that, not a person); give the person's name")
    for ch in text:
        if ch in _FORBIDDEN:
            raise GalleryError(f"the name {text!r} contains {_FORBIDDEN[ch]}; leave it out")
        if unicodedata.category(ch).startswith("C"):
            raise GalleryError(f"the name {text!r} contains a control character; leave it out")
    return text


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


@dataclass(frozen=True, eq=False)
class Entry:
    """One reference image of a name, as embedded."""

    name: str
    image: str  # sha256 key of the reference image's bytes
    vector: Vector
    source: Source
    model: str  # the gallery's model version it was embedded with
    file: str | None = None  # for a folder entry, its path inside the folder
    added_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "image": self.image, "model": self.model, "added_at": self.added_at,
                "vector": base64.b64encode(self.vector.astype("<f4").tobytes()).decode()}

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> Entry:
        vector = np.frombuffer(base64.b64decode(str(doc["vector"])), dtype="<f4").astype(np.float32)
        added = doc.get("added_at")
        return cls(str(doc["name"]), str(doc["image"]), vector, "api", str(doc["model"]),
                   added_at=float(added) if isinstance(added, (int, float)) else time.time())


class Gallery:
    """Named reference embeddings, several per name; names are matched case-insensitively and
    shown as first written. Thread-safe: the API adds on a thread while modules read on theirs."""

    def __init__(self, name: str, embed: Embed, *, model: Callable[[], str], doc: str = "",
                 reserved: Iterable[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.reserved = frozenset(w.casefold() for w in reserved)
        self._embed = embed
        self._model = model
        self._lock = threading.Lock()
        self._entries: dict[str, list[Entry]] = {}  # lower-case name → its entries
        self._removed: set[str] = set()  # lower-case names deleted through the API
        self._digest: str | None = None
        # Each tenant's own copy: the folder's entries, then what the tenant added and removed.
        self._tenants: dict[str, Gallery] = {}

    def for_tenant(self, tenant: str) -> Gallery:
        """The gallery as ``tenant`` sees it: the deployment's folder names, and the names that
        tenant added or removed through the API, which no other tenant sees. The default tenant
        ("", a deployment without API keys) is this gallery itself."""
        if not tenant:
            return self
        with self._lock:
            child = self._tenants.get(tenant)
            if child is None:
                child = Gallery(self.name, self._embed, model=self._model, doc=self.doc, reserved=self.reserved)
                for entries in self._entries.values():
                    for e in entries:
                        if e.source == "folder":
                            child.insert(e)
                self._tenants[tenant] = child
            return child

    @property
    def model(self) -> str:
        """The version of what embeds (code and weights): an entry embedded by another is stale."""
        return self._model()

    # -- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def lookup(self, name: str) -> str | None:
        """The name as the gallery shows it, for any spelling of its case; None when unknown."""
        with self._lock:
            found = self._entries.get(_key(name))
            return found[0].name if found else None

    def names(self) -> dict[str, int]:
        """Every name with its number of images, in alphabetical order."""
        with self._lock:
            return {v[0].name: len(v) for _, v in sorted(self._entries.items())}

    def entries(self, name: str | None = None) -> list[Entry]:
        with self._lock:
            if name is not None:
                return list(self._entries.get(_key(name), ()))
            return [e for _, v in sorted(self._entries.items()) for e in v]

    def matrix(self) -> tuple[tuple[str, ...], Vector]:
        """One row per image and the name each row is of: what a module measures distances to."""
        entries = self.entries()
        if not entries:
            return (), np.zeros((0, 0), np.float32)
        return tuple(e.name for e in entries), np.stack([e.vector for e in entries]).astype(np.float32)

    def digest(self) -> str:
        """A digest of everything answers depend on: the model version, and each entry's name and
        vector. Two processes with the same entries agree; any add or remove changes it."""
        with self._lock:
            if self._digest is None:
                h = hashlib.sha256(self.model.encode() + b"\0")
                for key in sorted(self._entries):
                    for e in sorted(self._entries[key], key=lambda e: e.image):
                        h.update(e.name.encode() + b"\0" + e.vector.astype("<f4").tobytes())
                self._digest = h.hexdigest()[:16]
            return self._digest

    def removed(self, name: str) -> bool:
        """Whether ``name`` was deleted through the API (its folder images then stay out)."""
        with self._lock:
            return _key(name) in self._removed

    # -- changing -----------------------------------------------------------------------------

    def embed(self, image: ImageValue) -> Vector:
        """The reference embedding of ``image``; ModuleError (say, no face) names what to fix.
        Blocking: call it off the event loop."""
        vector = np.asarray(self._embed(image), dtype=np.float32).reshape(-1)
        if vector.size == 0 or not np.all(np.isfinite(vector)):
            raise GalleryError(f"the {self.name} gallery could not embed this image")
        return vector

    def add(self, name: str, image: ImageValue, *, source: Source = "api", file: str | None = None) -> Entry:
        """Embed ``image`` as one more image of ``name``; the same image twice is one entry.
        Blocking: call it off the event loop."""
        name = clean_name(name, self.reserved)
        vector = self.embed(image)
        return self.insert(Entry(name, image.key, vector, source, self.model, file))

    def insert(self, entry: Entry) -> Entry:
        """Keep an already embedded entry (from the store); an API entry undoes a deletion."""
        key = _key(entry.name)
        with self._lock:
            have = self._entries.setdefault(key, [])
            for old in have:
                if old.image == entry.image:
                    return old
            # The name keeps the spelling it was first given, so its images stay one person.
            if have:
                entry = Entry(have[0].name, entry.image, entry.vector, entry.source, entry.model, entry.file,
                              entry.added_at)
            have.append(entry)
            if entry.source == "api":
                self._removed.discard(key)
            self._digest = None
            return entry

    def remove(self, name: str) -> list[Entry]:
        """Every image of ``name`` (KeyError when there is none). Folder images of a removed name
        stay out at the next start-up too, until the name is added again through the API."""
        key = _key(name)
        with self._lock:
            gone = self._entries.pop(key)
            if any(e.source == "folder" for e in gone):
                self._removed.add(key)
            self._digest = None
            return gone

    # -- the stored form ----------------------------------------------------------------------

    def document(self) -> bytes:
        """What the store keeps: the API's entries and deletions (the folder is read at start-up)."""
        with self._lock:
            entries = [e.to_json() for _, v in sorted(self._entries.items()) for e in v if e.source == "api"]
            removed = sorted(self._removed)
        return json.dumps({"version": DOC_VERSION, "gallery": self.name, "entries": entries,
                           "removed": removed}).encode()

    def restore_removed(self, names: Iterable[str]) -> None:
        """Names deleted through the API, from the stored form: their folder images stay out."""
        with self._lock:
            for key in (_key(n) for n in names):
                self._removed.add(key)
                kept = [e for e in self._entries.pop(key, []) if e.source != "folder"]
                if kept:
                    self._entries[key] = kept
            self._digest = None


class Shelf(Protocol):
    """The part of the service's store a gallery needs (``app.store.Store`` is one)."""

    async def get(self, kind: str, key: str) -> bytes | None: ...

    async def put(self, kind: str, key: str, value: bytes, ttl_s: int | None = None) -> bool: ...


def reference_copy(image: ImageValue) -> bytes:
    """A JPEG of the reference, no larger than COPY_SIDE, kept to embed it again after a model change."""
    im = image.image.convert("RGB")
    if max(im.size) > COPY_SIDE:
        im.thumbnail((COPY_SIDE, COPY_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _read_image(path: Path, max_bytes: int, max_pixels: int) -> ImageValue:
    size = path.stat().st_size
    if size > max_bytes:
        raise GalleryError(f"it is {size} bytes; the limit is {max_bytes}")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as probe:
            w, h = probe.size
        if w * h > max_pixels:
            raise GalleryError(f"it is {w}×{h} pixels; the limit is {max_pixels}")
        return ImageValue.from_bytes(data)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise GalleryError(f"it is not a readable image ({e})") from None


def folder_files(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(name, file) for every image of one gallery's sub-folder: ``Nicole Kidman.jpg`` or
    ``Nicole Kidman/*.jpg``; and a warning for each file that is not one."""
    found: list[tuple[str, Path]] = []
    problems: list[str] = []
    for item in sorted(root.iterdir()):
        if item.name.startswith("."):
            continue  # .DS_Store, editors' swap files: never meant as faces
        if item.is_dir():
            for inner in sorted(item.iterdir()):
                if inner.name.startswith("."):
                    continue
                if inner.is_file() and inner.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((item.name, inner))
                else:
                    problems.append(f"{inner}: skipped: not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif item.suffix.lower() in IMAGE_SUFFIXES:
            found.append((item.stem, item))
        else:
            problems.append(f"{item}: skipped: not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found, problems


class Galleries(Mapping[str, Gallery]):
    """Every enabled pack's galleries, by name, with the store that keeps the API's changes."""

    def __init__(self, galleries: Iterable[Gallery] = (), shelf: Shelf | None = None, *,
                 max_bytes: int = 20 * 1024 * 1024, max_pixels: int = 40_000_000,
                 shelves: Callable[[str], Shelf] | None = None) -> None:
        self._by_name: dict[str, Gallery] = {}
        for g in galleries:
            if g.name in self._by_name:
                raise ValueError(f"two packs declare a gallery named {g.name!r}")
            self._by_name[g.name] = g
        self.shelf = shelf
        # A tenant's part of the store (``shelves(tenant)``), where its changes are kept.
        self.shelves = shelves
        self._tenants_loaded: set[str] = set()
        self._tenant_lock: asyncio.Lock | None = None
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._writing: asyncio.Lock | None = None
        # Set while ``load`` has yet to run: a write before it would save a gallery without the
        # stored names over the stored names.
        self._loaded: asyncio.Event | None = None

    def expect_load(self) -> None:
        """Make writes wait until ``load`` has run (the service calls it before starting up)."""
        self._loaded = asyncio.Event()

    async def _until_loaded(self) -> None:
        if self._loaded is not None:
            await self._loaded.wait()

    @classmethod
    def of(cls, packs: Iterable[Pack], shelf: Shelf | None = None, *, shelves: Callable[[str], Shelf] | None = None,
           **limits: int) -> Galleries:
        return cls([g for p in packs for g in p.galleries], shelf, shelves=shelves, **limits)

    def shelf_for(self, tenant: str) -> Shelf | None:
        if not tenant or self.shelves is None:
            return self.shelf
        return self.shelves(tenant)

    def view(self, tenant: str) -> dict[str, Gallery]:
        """Every gallery as ``tenant`` sees it (after ``ensure``)."""
        return {name: g.for_tenant(tenant) for name, g in self._by_name.items()}

    async def ensure(self, tenant: str) -> None:
        """Read ``tenant``'s changes from the store, once, before it runs a program or reads a gallery."""
        if not tenant or tenant in self._tenants_loaded:
            return
        await self._until_loaded()
        if self._tenant_lock is None:
            self._tenant_lock = asyncio.Lock()
        async with self._tenant_lock:
            if tenant in self._tenants_loaded:
                return
            shelf = self.shelf_for(tenant)
            for g in self._by_name.values():
                mine = g.for_tenant(tenant)
                if shelf is not None:
                    try:
                        await self._load_stored(mine, shelf)
                    except Exception:  # a broken document must not keep the tenant from running
                        log.exception("gallery %s of tenant %s could not be loaded", g.name, tenant)
            self._tenants_loaded.add(tenant)

    def __getitem__(self, name: str) -> Gallery:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    @staticmethod
    def index_key(gallery: str) -> str:
        # A slash keeps these keys out of every route that reads the store by a key in its path.
        return f"gallery/{gallery}/index"

    @staticmethod
    def image_key(gallery: str, image: str) -> str:
        return f"gallery/{gallery}/{image}"

    # -- changes through the API ----------------------------------------------------------------

    async def add(self, gallery: str, name: str, image: ImageValue, *, tenant: str = "") -> Entry:
        """Embed on a thread, then keep the entry and a copy of its image in the tenant's store."""
        await self._until_loaded()
        await self.ensure(tenant)
        g = self._by_name[gallery].for_tenant(tenant)
        entry = await asyncio.to_thread(g.add, name, image)
        shelf = self.shelf_for(tenant)
        if shelf is not None:
            copy = await asyncio.to_thread(reference_copy, image)
            await shelf.put("img", self.image_key(gallery, entry.image), copy)
            await self._save(g, shelf)
        return entry

    async def remove(self, gallery: str, name: str, *, tenant: str = "") -> list[Entry]:
        """Every image of ``name`` (KeyError when there is none)."""
        await self._until_loaded()
        await self.ensure(tenant)
        g = self._by_name[gallery].for_tenant(tenant)
        gone = g.remove(name)
        shelf = self.shelf_for(tenant)
        if shelf is not None:
            await self._save(g, shelf)
        return gone

    async def _save(self, g: Gallery, shelf: Shelf) -> None:
        # One writer at a time, the document taken inside the lock: two adds racing must not let
        # the older snapshot land last and drop the newer name.
        if self._writing is None:
            self._writing = asyncio.Lock()
        async with self._writing:
            if not await shelf.put("art", self.index_key(g.name), g.document()):
                log.warning("gallery %s: the store did not keep the change; it lasts until this process ends",
                            g.name)

    # -- start-up -----------------------------------------------------------------------------

    async def load(self, folder: Path | None = None) -> None:
        """The API's entries from the store, then the folder's images; problems are logged and
        skipped, never fatal. Writes waiting for it go ahead once it is done."""
        try:
            await self._load(folder)
        finally:
            if self._loaded is not None:
                self._loaded.set()

    async def _load(self, folder: Path | None) -> None:
        for g in self._by_name.values():
            try:
                if self.shelf is not None:
                    await self._load_stored(g, self.shelf)
                if folder is not None:
                    await asyncio.to_thread(self._load_folder, g, folder)
            except Exception:  # a broken gallery must not keep the service from starting
                log.exception("gallery %s could not be loaded", g.name)
        if folder is not None:
            self._check_folder(folder)
        for g in self._by_name.values():
            log.info("gallery %s: %d names, %d images", g.name, len(g), len(g.entries()))

    async def _load_stored(self, g: Gallery, shelf: Shelf) -> None:
        raw = await shelf.get("art", self.index_key(g.name))
        if raw is None:
            return
        try:
            doc = json.loads(raw)
            stored = [Entry.from_json(e) for e in doc.get("entries", [])]
            removed = [str(n) for n in doc.get("removed", [])]
        except (ValueError, KeyError, TypeError) as e:
            log.warning("gallery %s: the stored entries are unreadable (%s); starting without them", g.name, e)
            return
        g.restore_removed(removed)
        model = await asyncio.to_thread(lambda: g.model)
        changed = False
        for entry in stored:
            if entry.model == model:
                g.insert(entry)
                continue
            # Embedded by another model: its vector means nothing to this one; embed the kept copy.
            changed = True
            data = await shelf.get("img", self.image_key(g.name, entry.image))
            if data is None:
                log.warning("gallery %s: %r (image %s) was embedded by another model and its image is "
                            "gone from the store; add it again", g.name, entry.name, entry.image)
                continue
            try:
                vector = await asyncio.to_thread(g.embed, ImageValue.from_bytes(data))
            except (ModuleError, OSError, ValueError) as e:
                log.warning("gallery %s: %r (image %s) could not be embedded again: %s",
                            g.name, entry.name, entry.image, e)
                continue
            g.insert(Entry(entry.name, entry.image, vector, "api", model, added_at=entry.added_at))
        if changed:
            await self._save(g, shelf)

    def _load_folder(self, g: Gallery, folder: Path) -> None:
        root = folder / g.name
        if not root.is_dir():
            return
        files, problems = folder_files(root)
        for p in problems:
            log.warning("gallery %s: %s", g.name, p)
        for name, path in files:
            where = path.relative_to(folder).as_posix()
            if g.removed(name):
                log.info("gallery %s: %s: skipped: %r was deleted through the API (add it again to restore)",
                         g.name, where, name)
                continue
            try:
                g.add(name, _read_image(path, self.max_bytes, self.max_pixels), source="folder", file=where)
            except (ModuleError, OSError) as e:
                log.warning("gallery %s: %s: skipped: %s", g.name, path, e)

    def _check_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            log.warning("NSX_GALLERY_DIR %s is not a folder; no gallery images loaded from it", folder)
            return
        for item in sorted(folder.iterdir()):
            if item.name.startswith(".") or (item.is_dir() and item.name in self._by_name):
                continue
            known = ", ".join(sorted(self._by_name)) or "none"
            log.warning("%s: skipped: not the folder of a gallery (galleries here: %s; put images in "
                        "%s/<gallery>/<name>.jpg)", item, known, folder)
