"""Logs and metrics for incidents: a JSON line per run and per failed step, with run id, step,
tenant and the reason as fields of their own and never a key; every error answer counted by class."""

from __future__ import annotations

import json
import logging

import pytest

from app.logs import JsonFormatter
from tests.apputil import b64, client_for, png_bytes

KEY = "alice-secret-key-123"


def test_the_formatter_writes_one_json_object_with_the_fields() -> None:
    record = logging.LogRecord("nsx.runs", logging.WARNING, __file__, 1, "step %s failed", ("s2",), None)
    record.__dict__.update({"event": "step_failed", "run_id": "r1", "step": "s2", "tenant": "alice",
                            "step_module": "EVAL"})
    doc = json.loads(JsonFormatter().format(record))
    assert doc["module"] == "EVAL"
    assert doc["message"] == "step s2 failed" and doc["level"] == "warning" and doc["logger"] == "nsx.runs"
    assert (doc["event"], doc["run_id"], doc["step"], doc["tenant"]) == ("step_failed", "r1", "s2", "alice")
    assert doc["ts"].endswith("Z")


def test_a_run_and_its_failed_step_are_logged_by_tenant_never_by_key(caplog: pytest.LogCaptureFixture) -> None:
    program = "n = COUNT(box=REGION(image=IMAGE, box=[0, 0, 5, 5]))\nbad = EVAL(expr=\"{n} / 0\")"
    with caplog.at_level(logging.INFO, logger="nsx"), client_for(None, api_keys=f"alice:{KEY}") as c:
        r = c.post("/v1/runs", json={"program": program, "images": {"IMAGE": b64(png_bytes())}},
                   headers={"X-API-Key": KEY})
        assert r.status_code == 200 and r.json()["status"] == "failed"
        run_id = r.json()["run_id"]
        metrics = c.get("/metrics", headers={"X-API-Key": KEY}).text
    runs = [x for x in caplog.records if getattr(x, "event", None) == "run"]
    failed = [x for x in caplog.records if getattr(x, "event", None) == "step_failed"]
    assert [(x.run_id, x.tenant, x.status) for x in runs] == [(run_id, "alice", "failed")]  # type: ignore[attr-defined]
    assert [(x.run_id, x.step, x.step_module, x.reason) for x in failed] == [  # type: ignore[attr-defined]
        (run_id, "s3", "EVAL", "module")]
    assert KEY not in caplog.text
    assert 'nsx_step_failures_total{module="EVAL",reason="module"} 1.0' in metrics


def test_every_error_answer_is_counted_by_its_class() -> None:
    with client_for(None, api_keys="k1", max_image_bytes=1000) as c:
        key = {"X-API-Key": "k1"}
        c.get("/v1/modules")  # 401
        c.post("/v1/images", content=b"x" * 200_000, headers={**key, "content-type": "image/png"})  # 413
        c.post("/v1/runs", json={"program": "x = 1", "imgs": {}}, headers=key)  # 422 unknown field
        c.post("/v1/runs", json={"program": "x = COUNTT(box=B)"}, headers=key)  # 422 program
        c.post("/v1/runs", json={"program": "n = COUNT(box=REGION(image=IMAGE, box=[0, 0, 1, 1]))",
                                 "images": {"IMAGE": "sha256:" + "0" * 64}}, headers=key)  # 422 unknown image
        c.get("/v1/runs/nope", headers=key)  # 404
        c.post("/v1/programs/check", content=b"x", headers={**key, "content-type": "text/plain"})  # 415
        text = c.get("/metrics").text
    for status, kind in [("401", "unauthorized"), ("413", "too_large"), ("422", "invalid"), ("422", "program"),
                         ("422", "unknown_image"), ("404", "not_found"), ("415", "unsupported_media_type")]:
        assert f'nsx_http_errors_total{{kind="{kind}",status="{status}"}} 1.0' in text, (status, kind)
