"""Configuration from ``NSX_*`` environment variables; every field has a default that runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modules.device import parse_device_memory, parse_module_devices
from modules.pool import PoolConfig
from program_dsl import Limits

from .tenants import KeyTable, parse_keys


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NSX_", extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, description="port to listen on")
    redis_url: str | None = Field(None, description="Redis URL; unset → the in-memory store")
    redis_durable: bool | None = Field(
        None, description="whether the Redis keeps what it is given across a restart; unset → asked at start-up "
                          "(CONFIG GET appendonly): records say persisted: true only when it does")
    memory_store_mb: int = Field(256, description="size of the in-memory store")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    packs: str | None = Field(None, description="comma-separated packs to enable; unset → all installed")
    step_ttl_s: int = Field(7 * 24 * 3600, description="how long step results stay cached")
    run_ttl_s: int = Field(30 * 24 * 3600, description="how long run records are kept")
    image_ttl_s: int = Field(7 * 24 * 3600, description="how long uploaded images are kept")
    step_timeout_s: float = Field(60.0, description="per-step time limit")
    run_timeout_s: float = Field(300.0, description="per-run time limit (a request may ask for less)")
    shutdown_timeout_s: int = Field(
        30, ge=1, description="on SIGTERM, how long runs in flight may take to finish before the process exits "
                                "anyway; new runs get 503 meanwhile")
    max_program_bytes: int = Field(64 * 1024, description="largest program accepted")
    max_image_bytes: int = Field(20 * 1024 * 1024, description="largest image file accepted")
    max_image_pixels: int = Field(40_000_000, description="largest image accepted, in pixels")
    max_images: int = Field(16, description="most images in one run")
    max_run_pixels: int = Field(
        100_000_000, description="most pixels in all the images one run uses, checked from their headers before "
                                 "any is decoded")
    batching: bool = Field(True, description="merge concurrent calls to a batchable module into one forward")
    max_batch_size: int | None = Field(None, ge=1, description="cap on batch size; unset → each module's own")
    batch_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more calls")
    batch_adapt: bool = Field(
        True, description="cut a full queue at the batch size measured cheapest per item, up to the cap; "
                          "false → always at the cap")
    max_queue: int = Field(256, ge=1, description="calls queued per module before new runs get 429")
    max_concurrent_runs: int = Field(512, ge=1, description="runs executing at once before new ones get 429")
    torch_threads: int | None = Field(
        None, ge=1, description="threads per torch op on the CPU; unset → torch's own choice (every core), which "
                                "measured faster here than leaving the event loop a core, at 1 and at 64 clients")
    switch_interval_ms: float = Field(
        5.0, gt=0, description="how long a thread waits for the GIL before asking for it (Python's "
                               "sys.setswitchinterval); shorter lets a model's worker thread get it back "
                               "sooner from a busy event loop")
    gc_freeze: bool = Field(
        True, description="once the models are loaded, move every object alive then out of the garbage "
                          "collector's sight (gc.freeze), so full collections do not walk the models' objects "
                          "while holding the GIL")
    log_format: Literal["json", "text"] = Field(
        "json", description="nsx serve's log lines: one JSON object each (run id, step, tenant as fields), or text")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="the least severe level logged")
    lazy_load: bool = Field(False, description="load models on first use instead of at start-up")
    module_packs: str | None = Field(
        None, description="which pack a module name means when several offer it, e.g. LOC=shapes")
    module_devices: str | None = Field(
        None, description="which device a module runs on, e.g. LOC=cuda:0,hf.VQA=cuda:1; unset → NSX_DEVICE "
                          "(models spread by size over several visible GPUs)")
    device_memory_mb: str | None = Field(
        None, description="memory budget per device in MB, e.g. cuda:0=10000; beyond it idle modules are "
                          "unloaded, least recently used first; unset → no budget")
    api_keys: str | None = Field(
        None, description="comma-separated keys, each its own tenant (k1,k2), or named tenants (alice:k1,bob:k2); "
                          "set → every /v1 call needs one, and each tenant sees only what it made")
    api_keys_file: Path | None = Field(
        None, description="a file of 'NAME sha256:<hex>' lines (nsx hash-key prints one): keys kept only as "
                          "digests; used with NSX_API_KEYS or alone")
    share_cache: bool = Field(
        False, description="tenants share the step cache and its artifacts (a hit then shows that another "
                           "tenant ran the same step on the same image); runs and uploads stay their own")
    gallery_dir: Path | None = Field(
        None, description="galleries to load at start-up: faces/Nicole Kidman.jpg or faces/Nicole Kidman/*.jpg")

    @field_validator("redis_url", "redis_durable", "packs", "module_packs", "api_keys_file", "max_batch_size",
                     "gallery_dir", "module_devices", "device_memory_mb", "torch_threads", mode="before")
    @classmethod
    def _blank_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("module_devices")
    @classmethod
    def _placement_parses(cls, v: str | None) -> str | None:
        parse_module_devices(v)  # a typo stops start-up, naming the item, rather than a request later
        return v

    @field_validator("device_memory_mb")
    @classmethod
    def _budgets_parse(cls, v: str | None) -> str | None:
        parse_device_memory(v)
        return v

    def pack_list(self) -> list[str] | None:
        return [p.strip() for p in self.packs.split(",") if p.strip()] if self.packs else None

    def module_choices(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in (self.module_packs or "").split(","):
            name, sep, pack = item.partition("=")
            if sep and name.strip() and pack.strip():
                out[name.strip()] = pack.strip()
        return out

    def program_limits(self) -> Limits:
        return Limits(max_bytes=self.max_program_bytes)

    def pool_config(self) -> PoolConfig:
        return PoolConfig(device=self.device, batching=self.batching, max_batch_size=self.max_batch_size,
                          max_wait_ms=self.batch_wait_ms,
                          adapt_batch=self.batch_adapt, max_queue=self.max_queue, lazy=self.lazy_load,
                          choose=self.module_choices(), strict=self.packs is not None,
                          module_devices=parse_module_devices(self.module_devices),
                          device_memory=parse_device_memory(self.device_memory_mb),
                          torch_threads=self.torch_threads,
                          switch_interval_ms=self.switch_interval_ms)

    def key_table(self) -> KeyTable:
        """The tenants' keys; raises KeysError (a ValueError) for an empty or malformed list."""
        return parse_keys(self.api_keys, self.api_keys_file)
