"""The OpenAPI document describes the service: it validates, every reference resolves, every route
says what it answers and with which error body; and one RunRecord schema fits every run record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
from openapi_spec_validator import validate

from app.records import RunRecord
from tests.apputil import b64, client_for

ROOT = Path(__file__).resolve().parent.parent


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_the_document_validates_and_every_reference_resolves() -> None:
    with client_for() as c:
        doc = c.get("/openapi.json").json()
    validate(doc)
    refs = _refs(doc)
    assert "#/components/schemas/RunRequest" in refs and "#/components/schemas/RunOptions" in refs
    for ref in refs:
        _resolve(doc, ref)  # a KeyError names the reference that does not resolve


def test_routes_document_their_errors_and_media_types() -> None:
    with client_for() as c:
        paths = c.get("/openapi.json").json()["paths"]
    errors = {"401", "422"}
    for path, ops in paths.items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if path.startswith("/v1/"):
                assert "401" in codes, (method, path)
                for code in (c for c in codes if not c.startswith("2")):  # 201, 204: not errors
                    content = op["responses"][code]["content"]
                    if path.endswith("/view") and code != "422":  # a page: its errors are pages too (FastAPI
                        # documents a 422 for any route with parameters; a str path parameter cannot fail)
                        assert list(content) == ["text/html"], (method, path, code)
                        continue
                    schema = content["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
    run = paths["/v1/runs"]["post"]
    assert {"401", "413", "422", "429"} <= set(run["responses"]) and errors <= set(run["responses"])
    answer = run["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/RunRecord"}
    assert set(run["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert "404" in paths["/v1/runs/{run_id}"]["get"]["responses"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


def test_api_answers_and_cli_output_fit_one_run_record_schema(tmp_path: Path) -> None:
    schema = RunRecord.model_json_schema(mode="serialization")
    program = (ROOT / "examples/regions.nsx").read_text()
    image = (ROOT / "examples/scene.png").read_bytes()
    with client_for() as c:
        answered = c.post("/v1/runs", json={"program": program, "images": {"IMAGE": b64(image)}}).json()
        failed = c.post("/v1/runs", json={"program": "x = PICK(REGION(IMAGE, [0, 0, 5, 5]), 3)",
                                          "images": {"IMAGE": b64(image)}}).json()
        fetched = c.get(f"/v1/runs/{answered['run_id']}").json()
        documented = c.get("/openapi.json").json()["components"]["schemas"]["RunRecord"]
    env = {**os.environ, "NSX_PACKS": "core"}
    out = subprocess.run([sys.executable, "-m", "app.cli", "run", "examples/regions.nsx", "--image",
                          "examples/scene.png", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    (tmp_path / "bad.nsx").write_text("x = PICK(REGION(IMAGE, [0, 0, 5, 5]), 3)\n")
    out = subprocess.run([sys.executable, "-m", "app.cli", "run", str(tmp_path / "bad.nsx"), "--image",
                          "examples/scene.png", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1, out.stderr
    printed_failed = json.loads(out.stdout)
    for record in (answered, failed, fetched, printed, printed_failed):
        jsonschema.validate(record, schema)
        RunRecord.model_validate(record)
    assert failed["status"] == "failed" and printed["status"] == "succeeded"
    same = ("status", "result", "error", "program", "plan_fingerprint", "inputs", "warnings", "modules")
    assert {k: printed_failed[k] for k in same} == {k: failed[k] for k in same}
    drop = ("ms", "queue_ms")
    assert [{k: v for k, v in s.items() if k not in drop} for s in printed_failed["steps"]] == \
        [{k: v for k, v in s.items() if k not in drop} for s in failed["steps"]]
    # The CLI prints the API's record: the same fields, the same answer, the same steps and keys.
    assert set(printed) == set(answered) == set(documented["properties"])
    assert printed["result"] == answered["result"] == {"type": "text", "value": "two things"}
    assert [s["key"] for s in printed["steps"]] == [s["key"] for s in answered["steps"]]
    assert fetched == answered
