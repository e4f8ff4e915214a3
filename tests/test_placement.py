"""Placement and memory: which device each module goes on (NSX_MODULE_DEVICES, or spread by size over
several GPUs), the memory each holds there (GET /v1/modules, /metrics), and a per-device budget
(NSX_DEVICE_MEMORY_MB) that unloads the least recently used idle module to make room, never a busy
one, and loads it again on its next call. Fake GPUs (a patched device count) test the placement
logic here; the ``gpu`` tests at the end do it on real ones."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from torch import nn

import modules.device
import modules.pool
from app.main import create_app
from app.settings import Settings
from modules.base import Pack
from modules.core import pack as core_pack
from modules.demo import ConvProbe
from modules.device import PlacementError, parse_device_memory, parse_module_devices, spread
from modules.pool import Pool, PoolConfig
from modules.torch_module import TorchModule
from program_dsl import param, signature

MB = 2**20


class Blob(TorchModule):
    """BLOB(n) → 2n, over a real width×width linear layer: its memory is what torch says it is."""

    def __init__(self, name: str, width: int = 256, group: str = "", half: bool = False) -> None:
        super().__init__()
        self.signature = signature(name, "Number", param("n", "Number"), param("delay", "Number", 0.0), pack="t")
        self.width = width
        self.group = group
        self.supports_half = half
        self.loads = 0
        self.unloads = 0

    def build(self) -> nn.Module:
        return nn.Linear(self.width, self.width)

    def load(self, device: str) -> None:
        super().load(device)
        self.loads += 1

    def unload(self) -> None:
        super().unload()
        self.unloads += 1

    def memory_group(self) -> str:
        return self.group

    def run(self, net: nn.Module, batch: Sequence[dict[str, Any]]) -> list[Any]:
        time.sleep(max(a.get("delay", 0.0) for a in batch))
        net(torch.zeros(1, self.width, device=self.device, dtype=self.dtype))
        return [a["n"] * 2 for a in batch]


BLOB_BYTES = (256 * 256 + 256) * 4  # a 256-wide Blob in float32: 263 168 bytes, about 0.25 MB
TWO_FIT = 0.6  # MB: two 256-wide Blobs fit, three do not


def blobs(*names: str, **kw: Any) -> list[Blob]:
    return [Blob(n, **kw) for n in names]


def budget_pool(mods: Sequence[Blob], mb: float = TWO_FIT, **config: Any) -> Pool:
    return Pool([Pack("t", list(mods))], PoolConfig(device="cpu", lazy=True, max_wait_ms=1,
                                                    device_memory=parse_device_memory(f"cpu={mb}"), **config))


def states(pool: Pool) -> dict[str, str]:
    return {q.split(".", 1)[1]: s.state for q, s in pool.states.items()}


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CUDA devices as far as placement can tell; nothing is loaded on them."""
    monkeypatch.setattr(modules.device, "cuda_count", lambda: 2)
    monkeypatch.setattr(modules.pool, "cuda_count", lambda: 2)


# -- the settings ---------------------------------------------------------------------------------

def test_module_devices_parse_plain_and_qualified_names() -> None:
    assert parse_module_devices("LOC=cuda:0, hf.VQA=CUDA:1,SEG=cpu,") == {"LOC": "cuda:0", "hf.VQA": "cuda:1",
                                                                          "SEG": "cpu"}
    assert parse_module_devices(None) == parse_module_devices(" ") == {}


@pytest.mark.parametrize(("text", "message"), [
    ("LOC", "'LOC' is not KEY=VALUE"),
    ("=cuda:0", "'=cuda:0' is not KEY=VALUE"),
    ("LOC=gpu1", "LOC=gpu1 names no device; expected cpu, cuda or cuda:N"),
    ("LOC=cuda:x", "LOC=cuda:x names no device"),
    ("my-loc=cpu", "'my-loc' is not a module name"),
    ("LOC=cpu,LOC=cuda:1", "LOC is placed twice"),
])
def test_a_malformed_module_devices_setting_names_the_item(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_module_devices(text)
    with pytest.raises(ValidationError, match=f"NSX_MODULE_DEVICES: .*{message}"):
        Settings(module_devices=text)


def test_device_memory_parses_megabytes_per_device() -> None:
    assert parse_device_memory("cuda:0=10000, cpu=0.5") == {"cuda:0": 10000 * MB, "cpu": MB // 2}
    assert parse_device_memory("cuda=100") == {"cuda:0": 100 * MB}  # one name per device
    assert Settings(device_memory_mb="cpu=2").pool_config().device_memory == {"cpu": 2 * MB}
    assert Settings().pool_config().device_memory == {} and Settings().pool_config().module_devices == {}


@pytest.mark.parametrize(("text", "message"), [
    ("cpu", "'cpu' is not KEY=VALUE"),
    ("cpu=lots", "cpu=lots is not a number of MB"),
    ("cpu=0", "cpu=0 must be more than 0 MB"),
    ("tpu=100", "'tpu' is not a device"),
])
def test_a_malformed_memory_budget_names_the_item(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=f"NSX_DEVICE_MEMORY_MB: .*{message}"):
        Settings(device_memory_mb=text)


def test_a_device_not_present_stops_the_pool_naming_it() -> None:
    with pytest.raises(PlacementError, match=r"NSX_MODULE_DEVICES \(A=cuda:99\): cuda:99 is not present"):
        Pool([Pack("t", blobs("A"))], PoolConfig(device="cpu", module_devices={"A": "cuda:99"}))
    with pytest.raises(PlacementError, match=r"NSX_DEVICE_MEMORY_MB \(cuda:99\): cuda:99 is not present"):
        Pool([Pack("t", blobs("A"))], PoolConfig(device="cpu", device_memory={"cuda:99": MB}))
    with pytest.raises(PlacementError, match="no module is called 'AA'"):
        Pool([Pack("t", blobs("A"))], PoolConfig(device="cpu", module_devices={"AA": "cpu"}))


def test_the_service_refuses_to_start_on_an_absent_device() -> None:
    with pytest.raises(PlacementError, match="cuda:99 is not present"):
        create_app(Settings(module_devices="A=cuda:99"), packs=[Pack("t", blobs("A"))])


def test_a_declared_module_no_enabled_pack_runs_is_only_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "nsx.pool"):
        pool = Pool([core_pack(), Pack("t", blobs("A"))], PoolConfig(device="cpu", module_devices={"VQA": "cpu"}))
    assert "places VQA, which no enabled pack here runs" in caplog.text
    assert pool.placement["t.A"] == "cpu"


# -- placement ------------------------------------------------------------------------------------

def test_greedy_spread_puts_the_largest_first_on_the_emptiest_device() -> None:
    sizes = {"big": 100, "mid": 60, "small": 50, "tiny": 20}
    assert spread(sizes, ["cuda:0", "cuda:1"]) == {"big": "cuda:0", "mid": "cuda:1", "small": "cuda:1",
                                                   "tiny": "cuda:0"}
    assert spread({"a": 5}, ["cuda:0", "cuda:1"], already={"cuda:0": 50}) == {"a": "cuda:1"}


def test_several_gpus_spread_large_modules_by_size(two_gpus: None) -> None:
    mods = [Blob("BIG", 1024), Blob("MID", 512), Blob("SMALL", 256), Blob("TINY", 128)]
    pool = Pool([core_pack(), Pack("t", list(mods))], PoolConfig(device="auto", lazy=True))
    assert pool.device == "cuda"
    placed = {q: d for q, d in pool.placement.items() if q.startswith("t.")}
    assert placed == {"t.BIG": "cuda:0", "t.MID": "cuda:1", "t.SMALL": "cuda:1", "t.TINY": "cuda:1"}
    assert {pool.placement[q] for q in pool.modules if q.startswith("core.")} == {"cpu"}  # symbolic: the loop
    shown = {m["qualified"]: m["device"] for m in pool.describe()}
    assert shown["t.BIG"] == "cuda:0" and shown["t.MID"] == "cuda:1"


def test_a_mapping_wins_and_counts_toward_the_spread(two_gpus: None) -> None:
    mods = [Blob("BIG", 1024), Blob("MID", 512), Blob("SMALL", 256)]
    # BIG pinned to cuda:1 by its plain name; the rest spread around it.
    pool = Pool([Pack("t", list(mods))], PoolConfig(device="auto", lazy=True, module_devices={"BIG": "cuda:1"}))
    assert pool.placement == {"t.BIG": "cuda:1", "t.MID": "cuda:0", "t.SMALL": "cuda:0"}
    # A qualified name wins over the plain one.
    pool = Pool([Pack("t", blobs("A"))], PoolConfig(device="auto", lazy=True,
                                                    module_devices={"A": "cuda:1", "t.A": "cuda:0"}))
    assert pool.placement == {"t.A": "cuda:0"}


def test_modules_sharing_weights_are_placed_together(two_gpus: None) -> None:
    mods = [Blob("D1", 1024, group="depth"), Blob("D2", 1024, group="depth"), Blob("X", 1024)]
    pool = Pool([Pack("t", list(mods))], PoolConfig(device="auto", lazy=True))
    assert pool.placement["t.D1"] == pool.placement["t.D2"] != pool.placement["t.X"]


def test_a_named_device_keeps_everything_there(two_gpus: None) -> None:
    pool = Pool([Pack("t", [Blob("BIG", 1024), Blob("MID", 512)])], PoolConfig(device="cuda:1", lazy=True))
    assert set(pool.placement.values()) == {"cuda:1"}  # NSX_DEVICE=cuda:N is a choice: no spreading


# -- memory reported ------------------------------------------------------------------------------

def ready(client: TestClient) -> None:
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)


def test_memory_on_device_in_modules_and_metrics() -> None:
    probe = ConvProbe()
    with TestClient(create_app(Settings(), packs=[core_pack(), Pack("demo", [probe])])) as client:
        ready(client)
        mods = {m["qualified"]: m for m in client.get("/v1/modules").json()["modules"] if m.get("qualified")}
        expected = sum(t.numel() * t.element_size() for t in (*probe.net.parameters(), *probe.net.buffers()))  # type: ignore[union-attr]
        assert mods["demo.PROBE"]["memory_bytes"] == expected > 1_000_000
        assert mods["demo.PROBE"]["unloads"] == 0
        assert mods["core.COUNT"]["memory_bytes"] == 0
        metrics = client.get("/metrics").text
        gauge = re.search(r'^nsx_module_memory_bytes\{device="cpu",module="demo.PROBE"\} (\S+)$', metrics, re.M)
        assert gauge is not None and float(gauge.group(1)) == expected
        assert 'nsx_module_unloads_total{device="cpu",module="demo.PROBE"} 0.0' in metrics


def test_expected_bytes_is_known_before_loading() -> None:
    blob = Blob("A")
    assert blob.memory_bytes() == 0 and blob.expected_bytes() == BLOB_BYTES
    blob.load("cpu")
    assert blob.memory_bytes() == BLOB_BYTES
    blob.unload()
    assert blob.memory_bytes() == 0


# -- the budget -----------------------------------------------------------------------------------

async def test_the_budget_unloads_the_least_recently_used_idle_module() -> None:
    a, b, c = blobs("A", "B", "C")
    pool = budget_pool([a, b, c])
    assert (await pool.call("A", {"n": 1})).value == 2
    assert (await pool.call("B", {"n": 2})).value == 4
    assert states(pool) == {"A": "ready", "B": "ready", "C": "pending"}
    assert (await pool.call("C", {"n": 3})).value == 6  # A is the least recently used: it makes room
    assert states(pool) == {"A": "unloaded", "B": "ready", "C": "ready"} and a.unloads == 1 and a.net is None
    assert (await pool.call("A", {"n": 4})).value == 8  # loads again on its next call, B now the oldest
    assert states(pool) == {"A": "ready", "B": "unloaded", "C": "ready"} and a.loads == 2
    held = sum(r.bytes for r in pool.memory())
    assert held == 2 * BLOB_BYTES <= pool.budgets["cpu"]
    assert {m["qualified"]: m["unloads"] for m in pool.describe()} == {"t.A": 1, "t.B": 1, "t.C": 0}
    await pool.close()


async def test_using_a_module_keeps_it_loaded() -> None:
    a, b, c = blobs("A", "B", "C")
    pool = budget_pool([a, b, c])
    for name in ("A", "B", "A"):  # A used again: B is now the one least recently used
        await pool.call(name, {"n": 1})
    await pool.call("C", {"n": 1})
    assert states(pool) == {"A": "ready", "B": "unloaded", "C": "ready"}
    await pool.close()


async def test_a_busy_module_is_not_unloaded() -> None:
    a, b, c = blobs("A", "B", "C")
    pool = budget_pool([a, b, c])
    await pool.call("A", {"n": 1})
    await pool.call("B", {"n": 1})
    slow = asyncio.create_task(pool.call("A", {"n": 5, "delay": 0.4}))
    await asyncio.sleep(0.05)
    # As if A's call had started long before B's last one: A is the least recently used, but busy.
    pool.states["t.A"].last_used = 0.0
    await pool.call("C", {"n": 1})  # so B goes
    assert states(pool) == {"A": "ready", "B": "unloaded", "C": "ready"} and a.unloads == 0
    assert (await slow).value == 10
    await pool.close()


async def test_when_nothing_can_go_it_loads_anyway_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    a, b = blobs("A", "B")
    pool = budget_pool([a, b], mb=0.3)  # one fits
    await pool.call("A", {"n": 1})
    slow = asyncio.create_task(pool.call("A", {"n": 1, "delay": 0.3}))
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, "nsx.pool"):
        assert (await pool.call("B", {"n": 1})).value == 2
    assert "held by modules in use" in caplog.text and states(pool) == {"A": "ready", "B": "ready"}
    await slow
    await pool.close()


async def test_modules_sharing_weights_count_once_and_go_together() -> None:
    d1, d2 = blobs("D1", "D2", group="depth")
    (x,) = blobs("X")
    pool = budget_pool([d1, d2, x], mb=0.3)  # one copy of the weights fits
    await pool.call("D1", {"n": 1})
    await pool.call("D2", {"n": 1})  # the same weights, counted once: nothing to make room for
    assert states(pool) == {"D1": "ready", "D2": "ready", "X": "pending"}
    await pool.call("X", {"n": 1})  # the group goes as one, both names
    assert states(pool) == {"D1": "unloaded", "D2": "unloaded", "X": "ready"}
    await pool.call("D2", {"n": 1})
    await pool.call("D1", {"n": 1})  # its weights are back with D2: X stays out
    assert states(pool) == {"D1": "ready", "D2": "ready", "X": "unloaded"}
    await pool.close()


async def test_no_budget_never_unloads() -> None:
    mods = blobs("A", "B", "C")
    pool = Pool([Pack("t", list(mods))], PoolConfig(device="cpu", lazy=True))
    for m in mods:
        await pool.call(m.name, {"n": 1})
    assert set(states(pool).values()) == {"ready"}
    await pool.close()


def test_the_budget_through_the_service() -> None:
    a, b, c = blobs("A", "B", "C")
    settings = Settings(device_memory_mb=f"cpu={TWO_FIT}")
    with TestClient(create_app(settings, packs=[core_pack(), Pack("t", [a, b, c])])) as client:
        ready(client)  # every module loaded once at start-up (each checked), the oldest then made room
        assert client.get("/readyz").json()["modules"]["t.A"] == "unloaded"
        r = client.post("/v1/runs", json={"program": "x = A(n=21)"}).json()
        assert r["status"] == "succeeded" and r["result"]["value"] == 42
        mods = {m["qualified"]: m for m in client.get("/v1/modules").json()["modules"] if m.get("qualified")}
        assert mods["t.A"]["state"] == "ready" and mods["t.A"]["memory_bytes"] == BLOB_BYTES
        assert mods["t.B"]["state"] == "unloaded" and mods["t.B"]["memory_bytes"] == 0
        assert mods["t.A"]["unloads"] == 1
        assert 'nsx_module_unloads_total{device="cpu",module="t.A"} 1.0' in client.get("/metrics").text


# -- on GPUs ----------------------------------------------------------------------------------------

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
needs_two = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@gpu
@needs_cuda
@needs_two
async def test_on_two_gpus_modules_spread_and_run_where_placed() -> None:
    mods = [Blob("BIG", 2048, half=True), Blob("MID", 1024, half=True), ConvProbe()]
    pool = Pool([core_pack(), Pack("t", list(mods))], PoolConfig(device="auto"))
    await pool.start()
    assert {pool.placement["t.BIG"], pool.placement["t.MID"]} == {"cuda:0", "cuda:1"}
    for qname in ("t.BIG", "t.MID", "t.PROBE"):
        net = pool.modules[qname].net  # type: ignore[attr-defined]
        assert str(next(net.parameters()).device) == pool.placement[qname]
    results = await asyncio.gather(*(pool.call(n, {"n": i}) for i in range(8) for n in ("BIG", "MID")))
    assert {r.device for r in results} == {"cuda:0", "cuda:1"}
    await pool.close()


@gpu
@needs_cuda
async def test_on_cuda_half_precision_is_what_was_expected() -> None:
    blob = Blob("A", 1024, half=True)
    pool = Pool([Pack("t", [blob])], PoolConfig(device="cuda"))
    assert blob.expected_bytes() == (1024 * 1024 + 1024) * 2
    await pool.start()
    assert blob.dtype == torch.float16 and blob.memory_bytes() == blob.expected_bytes()
    results = await asyncio.gather(*(pool.call("A", {"n": i}) for i in range(32)))
    assert max(r.batch_size for r in results) > 1 and [r.value for r in results] == [2 * i for i in range(32)]
    await pool.close()


@gpu
@needs_cuda
async def test_on_cuda_the_budget_unloads_and_frees_device_memory() -> None:
    a, b = Blob("A", 4096), Blob("B", 4096)  # 64 MB each in float32
    pool = Pool([Pack("t", [a, b])], PoolConfig(device="cuda", lazy=True, device_memory={"cuda:0": 100 * MB}))
    await pool.call("A", {"n": 1})
    with_a = torch.cuda.memory_allocated(0)
    await pool.call("B", {"n": 1})
    assert states(pool) == {"A": "unloaded", "B": "ready"}
    assert torch.cuda.memory_allocated(0) <= with_a + 1 * MB  # A's 64 MB went before B's came
    assert (await pool.call("A", {"n": 3})).value == 6 and states(pool) == {"A": "ready", "B": "unloaded"}
    await pool.close()
