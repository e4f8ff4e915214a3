"""The module pool: batching across concurrent calls, failures isolated, bounded queues, readiness,
pack selection and conflicts, devices."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from modules.base import Module, ModuleError, Pack
from modules.batching import QueueFull
from modules.core import pack as core_pack
from modules.demo import ConvProbe
from modules.packs import PackError, build_catalog
from modules.pool import Pool, PoolConfig
from modules.values import ImageValue
from program_dsl import compile_program, param, signature
from tests.apputil import b64, png_bytes


class Echo(Module):
    """Batchable: returns each item's number × 10, fails items whose number is negative, and records
    the size of every batch it saw."""

    signature = signature("ECHO", "Number", param("n", "Number"), param("delay", "Number", 0.0), pack="t")
    batchable = True
    max_batch_size = 8

    def __init__(self, name: str = "ECHO", load_s: float = 0.0) -> None:
        if name != "ECHO":
            self.signature = signature(name, "Number", param("n", "Number"), param("delay", "Number", 0.0), pack="t")
        self.batches: list[int] = []
        self.load_s = load_s
        self.lock = threading.Lock()

    def load(self, device: str) -> None:
        time.sleep(self.load_s)
        self.device = device

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        with self.lock:
            self.batches.append(len(batch))
        time.sleep(max(a["delay"] for a in batch))
        if any(a["n"] == 13 for a in batch):
            raise RuntimeError("13 poisons the whole batch")
        return [ModuleError(f"negative: {a['n']}") if a["n"] < 0 else a["n"] * 10 for a in batch]


def image(seed: int) -> ImageValue:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (seed % 256, 7, 9)).save(buf, format="PNG")
    return ImageValue.from_bytes(buf.getvalue())


async def test_concurrent_calls_share_a_forward_and_map_back() -> None:
    echo = Echo()
    sizes: list[int] = []
    pool = Pool([Pack("t", [echo])], PoolConfig(device="cpu", max_wait_ms=20),
                on_batch=lambda s: sizes.append(s.size))
    await pool.start()
    results = await asyncio.gather(*(pool.call("ECHO", {"n": i, "delay": 0.0}) for i in range(100, 120)))
    assert [r.value for r in results] == [i * 10 for i in range(100, 120)]
    assert sum(echo.batches) == 20 and max(echo.batches) == 8 and len(echo.batches) <= 4
    assert sizes == echo.batches
    assert {r.batch_size for r in results} <= set(echo.batches)
    await pool.close()


async def test_a_bad_item_fails_alone() -> None:
    echo = Echo()
    pool = Pool([Pack("t", [echo])], PoolConfig(device="cpu", max_wait_ms=20))
    await pool.start()
    outcomes = await asyncio.gather(*(pool.call("ECHO", {"n": n, "delay": 0.0}) for n in (1, -2, 3, 13, 5)),
                                    return_exceptions=True)
    assert [o.value for o in outcomes if not isinstance(o, BaseException)] == [10, 30, 50]
    assert str(outcomes[1]) == "negative: -2"
    assert str(outcomes[3]) == "13 poisons the whole batch"
    await pool.close()


async def test_batching_off_runs_one_at_a_time() -> None:
    echo = Echo()
    pool = Pool([Pack("t", [echo])], PoolConfig(device="cpu", batching=False))
    await pool.start()
    await asyncio.gather(*(pool.call("ECHO", {"n": i, "delay": 0.0}) for i in range(6)))
    assert echo.batches == [1] * 6
    await pool.close()


async def test_real_convnet_batches_agree_with_single_calls() -> None:
    probe = ConvProbe()
    pool = Pool([Pack("demo", [probe])], PoolConfig(device="cpu", max_wait_ms=30))
    await pool.start()
    images = [image(i * 37) for i in range(12)]
    batched = await asyncio.gather(*(pool.call("PROBE", {"image": im}) for im in images))
    assert max(r.batch_size for r in batched) > 1
    single = [probe.forward([{"image": im}])[0] for im in images]
    assert [r.value for r in batched] == single
    assert probe.parameter_count() > 100_000 and probe.version.endswith("+untrained")
    await pool.close()


async def test_queue_bound() -> None:
    echo = Echo()
    pool = Pool([Pack("t", [echo])], PoolConfig(device="cpu", max_queue=8, max_wait_ms=1))
    await pool.start()
    plan = compile_program("x = ECHO(n=1)", pool.catalog)
    slow = [asyncio.create_task(pool.call("ECHO", {"n": 1, "delay": 0.3})) for _ in range(1)]
    await asyncio.sleep(0.05)  # the first batch is running; the next calls queue behind it
    queued = [asyncio.create_task(pool.call("ECHO", {"n": 2, "delay": 0.0})) for _ in range(8)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as info:
        pool.admit(plan)
    assert info.value.retry_after_s >= 1
    with pytest.raises(QueueFull):
        await pool.call("ECHO", {"n": 3, "delay": 0.0})
    await asyncio.gather(*slow, *queued)
    pool.admit(plan)  # drained: admitted again
    await pool.close()


def test_full_queue_gives_429_with_retry_after() -> None:
    echo = Echo()
    # One call per forward, so exactly one runs while the next eight wait in the queue.
    settings = Settings(max_queue=8, batch_wait_ms=0, max_batch_size=1)
    app = create_app(settings, packs=[core_pack(), Pack("t", [echo])])
    body = {"program": "x = ECHO(n=1, delay=0.3)", "options": {"cache": False}}
    with TestClient(app) as client:
        batcher = next(iter(app.state.svc.pool._batchers.values()))
        deadline = time.monotonic() + 30
        with ThreadPoolExecutor(9) as ex:
            pending = [ex.submit(client.post, "/v1/runs", json=body)]
            while not echo.batches:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            pending += [ex.submit(client.post, "/v1/runs", json=body) for _ in range(8)]
            while batcher.depth < 8:
                assert time.monotonic() < deadline, f"the queue never filled ({batcher.depth})"
                time.sleep(0.005)
            busy = client.post("/v1/runs", json=body)
            accepted = [f.result() for f in pending]
    assert busy.status_code == 429
    assert int(busy.headers["Retry-After"]) >= 1
    assert "busy" in busy.json()["errors"][0]["message"]
    assert [r.status_code for r in accepted] == [200] * 9
    assert accepted[0].json()["result"]["value"] == 10


def test_readyz_flips_after_warmup_and_modules_show_state() -> None:
    app = create_app(Settings(), packs=[core_pack(), Pack("t", [Echo(load_s=0.5)]), Pack("demo", [ConvProbe()])])
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 503
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        mods = {m["qualified"]: m for m in client.get("/v1/modules").json()["modules"] if "qualified" in m}
        probe = mods["demo.PROBE"]
        assert probe["state"] == "ready" and probe["device"] == "cpu" and probe["parameters"] > 100_000
        assert probe["batching"] == {"enabled": True, "max_batch_size": 64, "max_wait_ms": 5.0, "max_queue": 256,
                                     "queued": 0}
        assert mods["t.ECHO"]["load_ms"] >= 500
        r = client.post("/v1/runs", json={"program": "a = PROBE(IMAGE)\nb = demo.PROBE(image=IMAGE)\n",
                                          "images": {"IMAGE": b64(png_bytes())}}).json()
        # The plain and the qualified name are the same module: one step.
        assert r["status"] == "succeeded" and len(r["steps"]) == 1 and r["steps"][0]["vars"] == ["a", "b"]
        assert r["steps"][0]["batch_size"] == 1 and r["steps"][0]["device"] == "cpu"
        text = client.get("/metrics").text
        assert 'nsx_module_batches_total{module="PROBE"} 1.0' in text
        assert 'nsx_module_batched_calls_total{module="PROBE"} 1.0' in text


def test_batch_metrics_through_the_api() -> None:
    app = create_app(Settings(batch_wait_ms=50), packs=[core_pack(), Pack("t", [Echo()])])
    with TestClient(app) as client:
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda i: client.post("/v1/runs", json={"program": f"x = ECHO(n={i})"}), range(8)))
        text = client.get("/metrics").text
    calls = float(text.split('nsx_module_batched_calls_total{module="ECHO"} ')[1].split()[0])
    batches = float(text.split('nsx_module_batches_total{module="ECHO"} ')[1].split()[0])
    assert calls == 8 and batches < 8  # average batch size = calls ÷ batches > 1


def test_two_packs_offering_one_name() -> None:
    a, b = Pack("a", [Echo("SAME")]), Pack("b", [Echo("SAME")])
    with pytest.raises(PackError, match="offered by packs 'a', 'b'"):
        build_catalog([a, b])
    catalog = build_catalog([a, b], {"SAME": "b"})
    assert catalog["SAME"].pack == "b" and catalog["a.SAME"].pack == "a"
    plan = compile_program("x = a.SAME(n=1)\ny = SAME(n=1)\n", catalog)
    assert [s.pack for s in plan.steps] == ["a", "b"]
    with pytest.raises(PackError, match="NSX_MODULE_PACKS"):
        create_app(Settings(), packs=[a, b])
    create_app(Settings(module_packs="SAME=a"), packs=[a, b])


def test_nsx_packs_selects() -> None:
    with TestClient(create_app(Settings(packs="core"))) as client:
        names = {m["name"]: m["state"] for m in client.get("/v1/modules").json()["modules"]}
        assert names["COUNT"] == "ready" and names["SEG"] == "unavailable"
    with pytest.raises(PackError, match="pack 'nope' is not installed"):
        create_app(Settings(packs="core,nope"))


def test_lazy_load() -> None:
    echo = Echo(load_s=0.2)
    with TestClient(create_app(Settings(lazy_load=True), packs=[core_pack(), Pack("t", [echo])])) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/readyz").json()["modules"]["t.ECHO"] == "pending"
        assert client.post("/v1/runs", json={"program": "x = ECHO(n=2)"}).json()["result"]["value"] == 20
        assert client.get("/readyz").json()["modules"]["t.ECHO"] == "ready"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_cuda_placement_half_and_batching() -> None:
    probe = ConvProbe()
    pool = Pool([Pack("demo", [probe])], PoolConfig(device="auto", max_wait_ms=20))
    await pool.start()
    assert pool.device == "cuda" and probe.dtype == torch.float16
    assert next(probe.net.parameters()).is_cuda  # type: ignore[union-attr]
    results = await asyncio.gather(*(pool.call("PROBE", {"image": image(i)}) for i in range(32)))
    assert max(r.batch_size for r in results) > 1 and all(r.device.startswith("cuda") for r in results)
    cpu = ConvProbe()
    cpu.load("cpu")
    agree = sum(r.value == cpu.forward([{"image": image(i)}])[0] for i, r in enumerate(results))
    assert agree >= 30  # fp16 may flip a near-tie or two
    await pool.close()


class Broken(Echo):
    def load(self, device: str) -> None:
        raise FileNotFoundError("weights are missing")


def test_a_module_that_cannot_load() -> None:
    packs = [core_pack(), Pack("t", [Broken("BROKEN")])]
    # Packs found by discovery: the broken module is reported and left out; the service is ready.
    with TestClient(create_app(Settings(), packs=packs)) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        mods = {m["name"]: m for m in client.get("/v1/modules").json()["modules"]}
        assert mods["BROKEN"]["state"] == "failed" and "weights are missing" in mods["BROKEN"]["error"]
        out = client.post("/v1/runs", json={"program": "x = BROKEN(n=1)"}).json()
        assert out["status"] == "failed" and "could not be loaded" in out["steps"][0]["error"]
    # Packs named in NSX_PACKS must all load: the service stays unready and says why.
    with TestClient(create_app(Settings(packs="core"), packs=packs)) as client:
        time.sleep(0.3)
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["modules"]["t.BROKEN"] == "failed"


def test_the_catalog_carries_each_modules_own_version() -> None:
    probe = ConvProbe()
    pool = Pool([core_pack(), Pack("demo", [probe])], "cpu")
    assert "+" in probe.version  # code version + weights hash (here "untrained")
    assert pool.catalog["PROBE"].version == pool.catalog["demo.PROBE"].version == probe.version
    plan = compile_program("x = PROBE(image=IMAGE)", pool.catalog)
    assert plan.steps[0].version == probe.version
