"""Modules that misbehave, met from outside: a served process (``nsx serve``) with the fault pack
enabled through NSX_PACKS, driven over HTTP as a user would. Each fault fails its own step with a
message, and the service keeps answering — during the fault and after it."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modules.packs import installed_packs, load_packs
from tests.apputil import server_output, start_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    proc, url = start_server({"NSX_STEP_TIMEOUT_S": "0.5"})
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the server did not stop within 20 s of SIGTERM")


def run(url: str, program: str) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/runs", json={"program": program}, timeout=60)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    return record


def health_while(url: str, program: str) -> tuple[dict[str, Any], int, float]:
    """The run's record, how many /healthz probes answered while it ran, and the slowest of them."""
    out: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: out.append(run(url, program)))
    t.start()
    answered, slowest = 0, 0.0
    with httpx.Client(timeout=5) as probe:
        while t.is_alive():
            t0 = time.perf_counter()
            assert probe.get(f"{url}/healthz").status_code == 200
            slowest = max(slowest, time.perf_counter() - t0)
            answered += 1
            time.sleep(0.02)
    t.join()
    return out[0], answered, slowest


def test_the_fault_pack_is_installed_but_never_enabled_unless_named() -> None:
    assert "fault" in installed_packs()
    assert "fault" not in {p.name for p in load_packs(None)}
    assert "fault" in {p.name for p in load_packs(["core", "fault"])}


def test_a_hanging_symbolic_module_is_cut_off_by_the_step_timeout(served: str) -> None:
    record, answered, slowest = health_while(served, "x = HANG(seconds=5)")
    assert record["status"] == "failed" and "timed out after 0.5 s" in record["steps"][0]["error"]
    assert answered >= 3 and slowest < 1.0, (answered, slowest)
    assert run(served, "n = 1 + 1")["result"] == {"type": "number", "value": 2}


def test_a_busy_module_leaves_the_loop_answering(served: str) -> None:
    record, answered, slowest = health_while(served, "x = SPIN(seconds=0.4)")
    assert record["status"] == "succeeded" and record["result"]["value"] > 0
    assert answered >= 2 and slowest < 1.0, (answered, slowest)


def test_a_module_that_raises_fails_its_step_with_what_it_raised(served: str) -> None:
    record = run(served, "x = RAISE(message='injected')\ny = 2")
    assert record["status"] == "failed"
    step = record["steps"][0]
    assert step["status"] == "failed" and "RuntimeError: injected" in step["error"]
    assert httpx.get(f"{served}/healthz").status_code == 200


def test_an_answer_of_the_wrong_type_is_not_used(served: str) -> None:
    record = run(served, "x = WRONG()\ny = x + 1")
    assert record["status"] == "failed"
    assert "declares Number and answered Text" in record["steps"][0]["error"]
    assert record["steps"][1]["status"] == "skipped"


def test_allocation_and_a_slow_model(served: str) -> None:
    assert run(served, "x = ALLOC(mb=64)")["result"] == {"type": "number", "value": 64}
    slow = run(served, "x = SLOW(seconds=0.2)")
    assert slow["status"] == "succeeded" and slow["steps"][0]["device"] == "cpu"
    late = run(served, "x = SLOW(seconds=2)")
    assert late["status"] == "failed" and "timed out" in late["steps"][0]["error"]


def test_bad_arguments_to_a_fault_are_its_steps_error(served: str) -> None:
    record = run(served, "x = HANG(seconds=-1)")
    assert record["status"] == "failed" and "seconds must be a number" in record["steps"][0]["error"]


def _in_flight(url: str, program: str) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def post() -> None:
        try:
            out.append(httpx.post(f"{url}/v1/runs", json={"program": program}, timeout=60))
        except httpx.HTTPError as e:
            out.append(e)

    t = threading.Thread(target=post)
    t.start()
    time.sleep(0.5)  # the run is executing
    return t, out


def test_a_run_in_flight_finishes_when_the_server_is_told_to_stop() -> None:
    proc, url = start_server({"NSX_STEP_TIMEOUT_S": "30", "NSX_SHUTDOWN_TIMEOUT_S": "20"})
    try:
        t, out = _in_flight(url, "x = HANG(seconds=1.5)")
        proc.terminate()
        t.join(30)
        assert isinstance(out[0], httpx.Response) and out[0].status_code == 200, out
        assert out[0].json()["status"] == "succeeded"
        assert proc.wait(timeout=20) in (0, -15)  # uvicorn ends by the signal it was sent, once done
        # Every line the served process wrote is one JSON object; the run is one of them.
        lines = [json.loads(line) for line in server_output(proc).splitlines()]
        runs = [d for d in lines if d.get("event") == "run"]
        assert runs and runs[0]["run_id"] == out[0].json()["run_id"] and runs[0]["status"] == "succeeded"
        assert any(d["logger"].startswith("uvicorn") for d in lines)
    finally:
        proc.kill()


def test_a_stuck_run_holds_shutdown_only_for_the_shutdown_timeout() -> None:
    proc, url = start_server({"NSX_STEP_TIMEOUT_S": "600", "NSX_SHUTDOWN_TIMEOUT_S": "2"})
    try:
        t, _ = _in_flight(url, "x = HANG(seconds=300)")
        t0 = time.monotonic()
        proc.terminate()
        proc.wait(timeout=30)
        took = time.monotonic() - t0
        assert took < 20, f"shutdown took {took:.1f} s with a 2 s timeout"
        t.join(10)
    finally:
        proc.kill()


def test_a_client_that_goes_away_cancels_its_run_but_not_a_shared_step() -> None:
    proc, url = start_server({"NSX_STEP_TIMEOUT_S": "30"})
    try:
        def impatient(program: str) -> None:
            with pytest.raises(httpx.TimeoutException):
                httpx.post(f"{url}/v1/runs", json={"program": program}, timeout=0.5)

        # Alone: the client leaves, the run is cancelled and recorded nowhere.
        impatient("x = SLOW(seconds=1.5)")
        # Shared: the step goes on for the client that stays.
        out: list[httpx.Response] = []
        stays = threading.Thread(target=lambda: out.append(
            httpx.post(f"{url}/v1/runs", json={"program": "y = SLOW(seconds=1.2)"}, timeout=30)))
        stays.start()
        time.sleep(0.2)
        impatient("y = SLOW(seconds=1.2)")
        stays.join(30)
        assert out and out[0].status_code == 200, out
        assert out[0].json()["status"] == "succeeded" and out[0].json()["steps"][0]["cache"] == "miss"
        time.sleep(0.5)
        metrics = httpx.get(f"{url}/metrics").text
        assert 'nsx_runs_total{status="cancelled"} 2.0' in metrics, metrics[:3000]
        assert 'nsx_runs_total{status="succeeded"} 1.0' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
