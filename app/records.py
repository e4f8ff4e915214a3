"""The records nsx answers with: a run, its steps, and the error body. The API's response models,
what ``nsx run --json`` prints, and what the store keeps under a run's id, all one shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

# A value in a trace: {"type": "image" | "objects" | "number" | "bool" | "text" | "list" | "none", …}.
# Kept as plain JSON: its shape follows the value's type (see DESIGN.md, Values).
ValueDoc = dict[str, Any]

StepStatus = Literal["pending", "succeeded", "failed", "skipped"]
CacheOutcome = Literal["hit", "miss", "off"]
# "running": an async run read while it runs (``GET /v1/runs/{id}``); its steps say which have ended.
RunStatus = Literal["running", "succeeded", "failed"]


class StepRecord(BaseModel):
    """One step of a run: what ran, on what, how (cache, device, batch) and what came out."""

    # Assignment is not validated: the executor fills a record in as the step runs.
    model_config = ConfigDict(validate_assignment=False)

    id: str = Field(description="the step's id in the plan, e.g. s3")
    module: str
    # A default, so records written before steps named their pack still read.
    pack: str = Field("", description="the pack whose module ran the step")
    version: str = Field(description="the module's version (code and weights): part of the step's key")
    route: str | None = Field(None, description="why this pack's module ran, when several packs offer the name "
                                                "(the phrase decides, when the program is compiled)")
    vars: list[str] = Field(description="program variables bound to this step's output")
    args: dict[str, Any] = Field(description='constants as themselves, inputs as {"step": id} or {"input": name}')
    inputs: dict[str, str] = Field(default_factory=dict, description="argument → key of the value it received")
    key: str | None = Field(None,
                            description="content key of the output: sha256 of module, version, args and input keys")
    status: StepStatus = "pending"
    output: ValueDoc | None = None
    cache: CacheOutcome = "off"
    shared: bool = Field(False, description="computed once for several steps in flight with the same key")
    via: str | None = Field(None, description="key of the broader call this output was refined from (LOC of every "
                                              "object, then the phrase's filter): found in the cache, shared or "
                                              "computed once for every phrase on the same image")
    ms: float = Field(0.0, description="compute time (a hit: the lookup)")
    queue_ms: float | None = Field(None, description="time waiting for a batch and its device")
    device: str | None = Field(None, description="where it ran: cpu, cuda, cuda:N")
    batch_size: int | None = Field(None, description="calls in the forward pass it ran in")
    error: str | None = Field(None, description="why it failed or was skipped")
    ended: int | None = Field(None, description="when it ended among the run's steps (1: first): the order of "
                                                "the run's step events")


class Timings(BaseModel):
    compile_ms: float
    execute_ms: float
    total_ms: float


class InputImage(BaseModel):
    key: str = Field(description='"sha256:<hex>" of the image bytes')
    width: int
    height: int


class Remark(BaseModel):
    """Something said about a request or a program, in words that say what to do; program
    diagnostics carry their place (1-based line and column, end exclusive)."""

    message: str
    hint: str | None = None
    line: int | None = None
    column: int | None = None
    end_line: int | None = None
    end_column: int | None = None


class RunWarning(Remark):
    """A compile warning, or something about the request (an image the program does not use)."""

    code: str
    severity: str = "warning"


class RunRecord(BaseModel):
    """A whole run: the answer, every step, timings, and what it was computed from."""

    run_id: str
    status: RunStatus
    result: ValueDoc | None = Field(description="the program's answer as a typed value; null when the run failed")
    error: str | None = None
    steps: list[StepRecord]
    timings: Timings
    program: str = Field(description="the program in canonical form")
    plan_fingerprint: str = Field(description="identity of what the plan computes, whatever its names and spacing")
    inputs: dict[str, InputImage]
    warnings: list[RunWarning]
    modules: dict[str, str] = Field(description="module → version, for every module the run used")
    created_at: float = Field(description="Unix time")
    persisted: bool = Field(description="whether the record and every computed step reached a store that keeps "
                                        "them across its own restart (Redis with append-only on): false with the "
                                        "in-memory store, a Redis without persistence, or during an outage")
    _json: bytes | None = PrivateAttr(None)

    def encoded(self, *, refresh: bool = False) -> bytes:
        """The record as JSON, encoded once: the store keeps these bytes and the API answers them."""
        if self._json is None or refresh:
            self._json = self.model_dump_json().encode()
        return self._json


class RunAccepted(BaseModel):
    """An async run, started: follow it at ``events`` (Server-Sent Events), read it at ``url``."""

    run_id: str
    status: Literal["running"]
    url: str = Field(description="the run's record: its state while it runs, the whole record after")
    events: str = Field(description="its steps as Server-Sent Events as they end, then the record")
    view: str = Field(description="its rationale page")


class ErrorItem(Remark):
    """One thing wrong with a request."""

    model_config = ConfigDict(extra="allow")

    code: str | None = None
    field: str | None = Field(None, description="the request field at fault, for a malformed body")
    severity: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx (and the rare 5xx) answers this."""

    errors: list[ErrorItem]
    rendered: str | None = Field(None, description="program errors as a compiler prints them, with carets")


class CheckResult(BaseModel):
    """A program checked against this deployment's catalog, without running it."""

    ok: bool
    errors: list[ErrorItem]
    warnings: list[RunWarning]
    rendered: str | None = Field(None, description="the errors as a compiler prints them, when there are any")
    program: str | None = Field(None, description="the program in canonical form, when it compiles")
    plan: dict[str, Any] | None = Field(None, description="the compiled plan: steps, their arguments and types")


class ModuleInfo(BaseModel):
    """A module of the catalog: loaded ones with their state and batching, declared ones as unavailable."""

    model_config = ConfigDict(extra="allow")

    name: str
    pack: str
    version: str
    state: Literal["pending", "loading", "ready", "failed", "unloading", "unloaded", "unavailable"]
    signature: dict[str, Any]
    qualified: str | None = None
    device: str | None = None
    load_ms: float | None = None
    error: str | None = None
    parameters: int | None = None
    memory_bytes: int | None = Field(
        None, description="bytes its weights take on its device now: 0 when unloaded or symbolic; modules "
                          "sharing one model (DEPTH, DEPTH_OF) each show the whole of it")
    unloads: int | None = Field(None, description="times it was unloaded to make room under a device's memory budget")
    default: bool | None = None
    batching: dict[str, Any] | None = None


class ModuleList(BaseModel):
    modules: list[ModuleInfo]


class UploadedImage(BaseModel):
    sha256: str = Field(description='the key to refer to the image by in runs: "sha256:<hex>"')
    width: int
    height: int
    format: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "loading"]
    store: str
    store_available: bool
    store_durable: bool = Field(
        description="whether run records outlive a restart of the store (Redis with append-only on); when "
                    "not, records say persisted: false and the log says why")
    modules: dict[str, str] = Field(
        description="qualified module name → pending | loading | ready | failed | unloading | unloaded")
    text_model: Literal["not loaded", "loading", "ready", "failed"] | None = Field(
        None, description="the shared text model, for words outside the packs' own lists: it loads in the background "
                          "once the modules are ready, or on first need; readiness does not wait for it")


# -- links -------------------------------------------------------------------------------------

ARTIFACT_PATH = "/v1/artifacts/{key}"


def artifact_url(key: str) -> str:
    return ARTIFACT_PATH.format(key=key)


def linked(doc: ValueDoc) -> ValueDoc:
    """``doc`` with a URL beside every artifact key it names: cached values keep keys only, so the
    cache does not depend on the API's routes; a record adds the links when it is built."""
    kind = doc.get("type")
    if kind == "image":
        out = {**doc, "url": artifact_url(doc["key"])}
        if "mask_key" in doc:  # the region an edit used
            out["mask_url"] = artifact_url(doc["mask_key"])
        return out
    if kind == "objects" and any("mask_key" in it for it in doc["items"]):
        items = [{**it, "mask_url": artifact_url(it["mask_key"])} if "mask_key" in it else it for it in doc["items"]]
        return {**doc, "items": items}
    if kind == "list":
        return {**doc, "items": [linked(d) for d in doc["items"]]}
    return doc


# -- galleries ---------------------------------------------------------------------------------


class GalleryInfo(BaseModel):
    """A gallery of named references that modules read (the photo pack's ``faces``)."""

    name: str
    doc: str
    names: int = Field(description="how many names it holds")
    images: int = Field(description="how many reference images, over all its names")


class GalleryList(BaseModel):
    galleries: list[GalleryInfo]


class GalleryName(BaseModel):
    name: str
    images: int = Field(description="reference images of this name")
    sources: list[Literal["api", "folder"]] = Field(description="where they came from: the API or NSX_GALLERY_DIR")


class GalleryDetail(GalleryInfo):
    digest: str = Field(description="changes with every name added or removed: part of the cache key of the modules "
                                    "that read the gallery")
    entries: list[GalleryName]


class GalleryEntry(BaseModel):
    """A reference image, added."""

    gallery: str
    name: str = Field(description="the name as the gallery keeps it (its first spelling, any case matches)")
    image: str = Field(description='"sha256:<hex>" of the image bytes')
    images: int = Field(description="reference images of this name now")
    digest: str = Field(description="the gallery's digest after the change")
