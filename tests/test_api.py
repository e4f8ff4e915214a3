"""The service end to end, over HTTP, on the in-memory store and on a real Redis."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.apputil import b64, client_for, png_bytes

PROGRAM = """\
R = REGION(image=IMAGE, box=[10, 10, 30, 30], label='red')
B = REGION(image=IMAGE, box=[55, 20, 85, 50], label='blue')
LEFT_PART = CROP_LEFTOF(image=IMAGE, box=B)
n = COUNT(box=UNION(left=R, right=B))
answer = 'yes' if n == 2 else 'no'
"""

# Shares R, B and the UNION with PROGRAM; only the crop and the final expression are new.
SHARING = """\
BOX0=REGION(image=IMAGE,box=[10,10,30,30],label='red')
BOX1=REGION(image=IMAGE,box=[55,20,85,50],label='blue')
ANSWER0=COUNT(box=UNION(left=BOX0,right=BOX1))
IMAGE0=CROP_RIGHTOF(image=IMAGE,box=BOX0)
ANSWER1=EVAL(expr="{ANSWER0} * 10")
FINAL_RESULT=RESULT(var=ANSWER1)
"""


@pytest.fixture(params=["memory", "redis"])
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with client_for(url) as c:
        yield c


def run(client: TestClient, program: str, image: bytes | None = None, **options: object) -> dict:
    body = {"program": program, "images": {"IMAGE": b64(image or png_bytes())}, "options": options}
    r = client.post("/v1/runs", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_run_then_every_step_hits(client: TestClient) -> None:
    first = run(client, PROGRAM)
    assert first["status"] == "succeeded"
    assert first["result"] == {"type": "text", "value": "yes"}
    assert {s["cache"] for s in first["steps"]} == {"miss"}
    assert first["persisted"] is False  # memory, or a Redis that keeps nothing on disk: not durable
    by_vars = {tuple(s["vars"]): s for s in first["steps"]}
    crop = by_vars[("LEFT_PART",)]
    assert crop["output"]["type"] == "image" and crop["output"]["width"] == 70 and crop["output"]["height"] == 64
    region = by_vars[("R",)]["output"]
    assert region["type"] == "objects" and region["items"][0]["box"] == [10, 10, 30, 30]

    again = run(client, PROGRAM)
    assert again["result"] == first["result"]
    assert [s["cache"] for s in again["steps"]] == ["hit"] * len(first["steps"])
    assert [s["key"] for s in again["steps"]] == [s["key"] for s in first["steps"]]
    assert again["run_id"] != first["run_id"]


def test_other_program_hits_shared_steps(client: TestClient) -> None:
    first = run(client, PROGRAM)
    keys = {s["key"] for s in first["steps"]}
    other = run(client, SHARING)
    assert other["status"] == "succeeded"
    assert other["result"] == {"type": "number", "value": 20}
    for step in other["steps"]:
        assert step["cache"] == ("hit" if step["key"] in keys else "miss"), step
    modules_hit = sorted(s["module"] for s in other["steps"] if s["cache"] == "hit")
    assert modules_hit == ["COUNT", "REGION", "REGION", "UNION"]


def test_different_image_misses(client: TestClient) -> None:
    run(client, PROGRAM)
    other = run(client, PROGRAM, image=png_bytes(seed=3))
    assert {s["cache"] for s in other["steps"]} == {"miss"}


def test_cache_off(client: TestClient) -> None:
    out = run(client, PROGRAM, cache=False)
    assert {s["cache"] for s in out["steps"]} == {"off"}
    again = run(client, PROGRAM)
    assert {s["cache"] for s in again["steps"]} == {"miss"}


def test_run_and_step_fetched_by_id(client: TestClient) -> None:
    out = run(client, PROGRAM)
    fetched = client.get(f"/v1/runs/{out['run_id']}").json()
    assert fetched["steps"] == out["steps"] and fetched["result"] == out["result"]
    assert fetched["program"].startswith("R = REGION(image=IMAGE, box=[10, 10, 30, 30], label='red')")
    step = client.get(f"/v1/runs/{out['run_id']}/steps/s1").json()
    assert step == out["steps"][0]
    assert client.get("/v1/runs/nope").status_code == 404
    assert client.get(f"/v1/runs/{out['run_id']}/steps/s99").status_code == 404


def test_artifacts(client: TestClient) -> None:
    out = run(client, PROGRAM)
    crop = next(s for s in out["steps"] if s["module"] == "CROP_LEFTOF")
    r = client.get(crop["output"]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (70, 64)
    image_key = out["inputs"]["IMAGE"]["key"]
    r = client.get(f"/v1/artifacts/{image_key}")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (96, 64)
    r = client.get(f"/v1/artifacts/{out['steps'][0]['key']}")
    assert r.status_code == 200 and r.json()["type"] == "objects"
    assert client.get("/v1/artifacts/sha256:" + "0" * 64).status_code == 404


def test_program_error_is_422_with_position(client: TestClient) -> None:
    r = client.post("/v1/runs", json={"program": "n = COUNT(boxes=R)\n", "images": {"IMAGE": b64(png_bytes())}})
    assert r.status_code == 422
    err = r.json()["errors"][0]
    assert (err["line"], err["column"]) == (1, 11)
    assert err["message"] == "COUNT has no argument 'boxes'"
    assert err["hint"] == "did you mean 'box'?"


def test_upload_then_run_by_reference(client: TestClient) -> None:
    data = png_bytes(seed=1)
    up = client.post("/v1/images", content=data, headers={"content-type": "image/png"}).json()
    assert up["width"] == 96 and up["height"] == 64 and up["format"] == "png"
    r = client.post("/v1/runs", json={"program": PROGRAM, "images": {"IMAGE": up["sha256"]}})
    assert r.status_code == 200 and r.json()["inputs"]["IMAGE"]["key"] == up["sha256"]
    r = client.post("/v1/runs", json={"program": PROGRAM, "images": {"IMAGE": "sha256:" + "a" * 64}})
    assert r.status_code == 422 and "POST /v1/images" in r.json()["errors"][0]["hint"]


def test_multipart_run(client: TestClient) -> None:
    r = client.post("/v1/runs", data={"program": PROGRAM, "options": '{"cache": false}'},
                    files={"IMAGE": ("img.png", png_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["value"] == "yes"
    assert {s["cache"] for s in r.json()["steps"]} == {"off"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"program": PROGRAM, "images": {"IMAGE": "not base64!"}}, "not valid base64"),
        ({"program": PROGRAM, "images": {"IMAGE": b64(b"hello")}}, "not a readable image"),
        ({"program": PROGRAM, "images": {"IMAGE": "sha256:zz"}}, "not a sha256 reference"),
        ({"program": PROGRAM, "images": {"1BAD": b64(b"x")}}, "not a variable name"),
        ({"images": {}}, "program"),
        ({"program": 3}, "program"),
    ],
)
def test_bad_requests_are_422(client: TestClient, body: dict, fragment: str) -> None:
    r = client.post("/v1/runs", json=body)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["errors"][0]["message"]


def test_not_json_is_422(client: TestClient) -> None:
    r = client.post("/v1/runs", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["message"]


def test_image_variable_not_sent(client: TestClient) -> None:
    r = client.post("/v1/runs", json={"program": "n = COUNT(box=REGION(image=LEFT, box=[0, 0, 5, 5]))",
                                      "images": {"IMAGE": b64(png_bytes())}})
    assert r.status_code == 422
    err = r.json()["errors"][0]
    assert err["message"] == "undefined variable 'LEFT'" and "IMAGE" in err["hint"]


def test_missing_pack_fails_the_run_by_name(client: TestClient) -> None:
    out = run(client, "BOX0=LOC(image=IMAGE,object='dog')\nANSWER0=COUNT(box=BOX0)\n")
    assert out["status"] == "failed"
    loc, count = out["steps"]
    # Only core's LOC is here, and it finds the image's halves: the step says what each pack finds.
    assert loc["status"] == "failed" and loc["pack"] == ""
    assert "no enabled pack finds 'dog' with LOC" in loc["error"] and "core: TOP, BOTTOM" in loc["error"]
    assert "'hf' pack" in loc["error"]
    assert count["status"] == "skipped"
    assert "s1 (LOC) failed" in out["error"]


def test_runtime_error_fails_one_step(client: TestClient) -> None:
    out = run(client, "n = COUNT(box=REGION(image=IMAGE, box=[0, 0, 5, 5]))\nx = 10 / (n - 1)\n")
    assert out["status"] == "failed"
    assert out["steps"][-1]["error"] == "division by zero"
    assert out["steps"][0]["status"] == "succeeded"


def test_check_endpoint(client: TestClient) -> None:
    ok = client.post("/v1/programs/check", json={"program": PROGRAM}).json()
    assert ok["ok"] is True and len(ok["plan"]["steps"]) == 6
    bad = client.post("/v1/programs/check", json={"program": "x = COUNTT(box=1)"}).json()
    assert bad["ok"] is False and bad["errors"][0]["hint"] == "did you mean 'COUNT'?"


def test_modules_and_health(client: TestClient) -> None:
    mods = {m["name"]: m for m in client.get("/v1/modules").json()["modules"]}
    assert mods["COUNT"]["state"] == "ready" and mods["COUNT"]["pack"] == "core"
    assert mods["LOC"]["state"] == "ready" and mods["LOC"]["pack"] == "core"  # the halves: 'TOP', …
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    run(client, PROGRAM)
    text = client.get("/metrics").text
    assert 'nsx_runs_total{status="succeeded"} 1.0' in text
    assert 'nsx_step_cache_total{module="COUNT",outcome="miss"} 1.0' in text
    assert client.get("/docs").status_code == 200
    assert "/v1/runs" in client.get("/openapi.json").json()["paths"]


def test_api_keys() -> None:
    with client_for(None, api_keys="k1,k2") as c:
        assert c.get("/v1/modules").status_code == 401
        assert c.get("/v1/modules", headers={"Authorization": "Bearer k2"}).status_code == 200
        assert c.get("/v1/modules", headers={"X-API-Key": "k1"}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_cached_documents_hold_keys_and_records_add_the_links(client: TestClient) -> None:
    import json

    first = run(client, PROGRAM)
    crop = next(s for s in first["steps"] if s["module"] == "CROP_LEFTOF")
    assert crop["output"]["url"] == f"/v1/artifacts/{crop['output']['key']}"
    store = client.app.state.svc.store  # type: ignore[attr-defined]
    portal = client.portal  # type: ignore[attr-defined]
    cached = json.loads(portal.call(store.get, "step", crop["key"]))
    assert "url" not in cached and cached["key"] == crop["output"]["key"]  # no route in the cache
    # A document written by an older nsx, links and all, still reads: the record's links are its own.
    old = {**cached, "url": "/v0/old-route"}
    assert portal.call(store.put, "step", crop["key"], json.dumps(old).encode(), None)
    again = run(client, PROGRAM)
    hit = next(s for s in again["steps"] if s["module"] == "CROP_LEFTOF")
    assert hit["cache"] == "hit" and hit["output"] == crop["output"]


def test_linked_adds_mask_and_nested_urls() -> None:
    from app.records import linked

    doc = {"type": "list", "items": [
        {"type": "objects", "image": "k", "image_size": [4, 4], "count": 2,
         "items": [{"box": [0, 0, 1, 1], "score": 1.0, "label": "a", "mask_key": "sha256:m"},
                   {"box": [1, 1, 2, 2], "score": 1.0, "label": "b"}]},
        {"type": "image", "key": "sha256:i", "width": 4, "height": 4},
        {"type": "number", "value": 3}]}
    out = linked(doc)
    assert out["items"][0]["items"][0]["mask_url"] == "/v1/artifacts/sha256:m"
    assert "mask_url" not in out["items"][0]["items"][1]
    assert out["items"][1]["url"] == "/v1/artifacts/sha256:i"
    assert out["items"][2] == {"type": "number", "value": 3}
    assert "mask_url" not in doc["items"][0]["items"][0]  # the cached document is left as it was


def test_a_step_of_a_record_written_before_steps_named_their_pack(client: TestClient) -> None:
    import json

    out = run(client, PROGRAM)
    old = {**out, "steps": [{k: v for k, v in s.items() if k != "pack"} for s in out["steps"]]}
    store = client.app.state.svc.store  # type: ignore[attr-defined]
    assert client.portal.call(store.put, "run", out["run_id"], json.dumps(old).encode(), None)  # type: ignore[attr-defined]
    assert client.get(f"/v1/runs/{out['run_id']}").status_code == 200
    step = client.get(f"/v1/runs/{out['run_id']}/steps/s1")
    assert step.status_code == 200 and step.json()["id"] == "s1" and "pack" not in step.json()


@pytest.mark.parametrize("options", ["5", "[1]", "true", "null", '"x"', "[" * 1000 + "]" * 1000, "{nope",
                                     '{"cache": "sometimes"}'])
def test_multipart_options_that_are_not_an_object_are_422(client: TestClient, options: str) -> None:
    r = client.post("/v1/runs", data={"program": PROGRAM, "options": options},
                    files={"IMAGE": ("img.png", png_bytes(), "image/png")})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["message"].startswith("options")


def test_upload_refuses_two_files_with_a_hint(client: TestClient) -> None:
    r = client.post("/v1/images", files={"a": ("a.png", png_bytes(), "image/png"),
                                         "b": ("b.png", png_bytes(seed=2), "image/png")})
    assert r.status_code == 422 and "exactly one file" in r.json()["errors"][0]["message"]


def test_a_malformed_body_is_a_documented_400(client: TestClient) -> None:
    bad = b"--XX\r\nContent-Disposition: form-data; name=\"program\"\r\n\r\nx = 1"  # never closed
    for path in ("/v1/runs", "/v1/images"):
        r = client.post(path, content=bad, headers={"content-type": "multipart/form-data; boundary=XX"})
        assert r.status_code in (400, 422), (path, r.status_code, r.text)
        assert r.json()["errors"][0]["message"]
    r = client.post("/v1/programs/check", content=b'{"program": "\xff"}', headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and r.json()["errors"][0]["message"]


def test_a_bogus_content_length_is_not_trusted(client: TestClient) -> None:
    r = client.post("/v1/images", content=png_bytes(), headers={"content-type": "image/png", "content-length": "x"})
    assert r.status_code < 500


def test_the_key_is_checked_before_the_body_is_read() -> None:
    with client_for(None, api_keys="k1") as c:
        r = c.post("/v1/programs/check", content=b"{nope", headers={"content-type": "application/json"})
        assert r.status_code == 401 and "API key" in r.json()["errors"][0]["message"]
        assert c.get("/v1/no-such-route").status_code == 401  # nothing about the paths without a key
        ok = c.post("/v1/programs/check", json={"program": "x = 1"}, headers={"X-API-Key": "k1"})
        assert ok.status_code == 200 and ok.json()["ok"] is True


def test_keys_with_any_characters() -> None:
    with client_for(None, api_keys="clé,ключ") as c:
        for key in ("clé", "ключ"):
            assert c.get("/v1/modules", headers={"X-API-Key": key.encode()}).status_code == 200
            assert c.get("/v1/modules", headers={"Authorization": b"Bearer " + key.encode()}).status_code == 200
        assert c.get("/v1/modules", headers={"X-API-Key": "clef"}).status_code == 401


async def test_keys_are_compared_as_the_bytes_sent() -> None:
    # At the ASGI level, as a server hands headers over (the test client re-encodes them).
    from app.deps import TENANT, ApiKeys
    from app.tenants import parse_keys

    tenants: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        tenants.append(scope[TENANT])
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    guard = ApiKeys(app, parse_keys("me:clé"))

    async def status(value: bytes, name: bytes = b"x-api-key") -> int:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        await guard({"type": "http", "path": "/v1/modules", "headers": [(name, value)]}, None, send)  # type: ignore[arg-type]
        return int(sent[0]["status"])

    assert await status("clé".encode()) == 200
    assert await status(b"Bearer " + "clé".encode(), b"authorization") == 200
    assert await status("clé".encode("latin-1")) == 401
    assert await status(b"\xff\xfe") == 401
    assert await status(b"") == 401
    assert tenants == ["me", "me"]
