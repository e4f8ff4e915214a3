"""Every class of bad input a client can send is a 4xx with the error body and a message that says
what to fix — never a 5xx, a traceback or a dropped connection — and the service answers after it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.apputil import b64, client_for, png_bytes

RUN = "x = COUNT(box=REGION(image=IMAGE, box=[0, 0, 10, 10]))"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with client_for(None, max_image_bytes=200_000, max_program_bytes=4096) as c:
        yield c


@pytest.fixture(scope="module")
def keyed() -> Iterator[TestClient]:
    with client_for(None, api_keys="k-one,k-two") as c:
        yield c


def _form(program: str = RUN, **fields: Any) -> dict[str, Any]:
    return {"data": {"program": program, **fields}, "files": {"IMAGE": ("i.png", png_bytes(), "image/png")}}


# (route, method, request arguments, status, words the first message holds)
CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # JSON that is not what the route reads
    ("json-not-object", "POST", "/v1/runs", {"content": b"[1]", "headers": JSON}, 422, "body"),
    ("json-broken", "POST", "/v1/runs", {"content": b"{nope", "headers": JSON}, 422, "Invalid JSON"),
    ("json-not-utf8", "POST", "/v1/programs/check", {"content": b'{"program": "\xff"}', "headers": JSON}, 400, ""),
    ("lone-surrogate-check", "POST", "/v1/programs/check",
     {"content": b'{"program": "x = \'\\ud800\'"}', "headers": JSON}, 422, "unpaired surrogate"),
    ("lone-surrogate-run", "POST", "/v1/runs", {"content": b'{"program": "\\udfff"}', "headers": JSON}, 422, ""),
    ("unknown-field", "POST", "/v1/runs", {"json": {"program": RUN, "imgs": {}}}, 422, "imgs: unknown field"),
    ("misspelled-option", "POST", "/v1/runs", {"json": {"program": RUN, "options": {"cahce": False}}}, 422,
     "options.cahce: unknown field"),
    ("check-unknown-field", "POST", "/v1/programs/check", {"json": {"program": RUN, "input": ["A"]}}, 422,
     "input: unknown field"),
    ("bad-image-name", "POST", "/v1/runs", {"json": {"program": RUN, "images": {"9x": b64(png_bytes())}}}, 422,
     "not a variable name"),
    ("wrong-type", "POST", "/v1/runs", {"json": {"program": 5}}, 422, "program"),
    ("negative-timeout", "POST", "/v1/runs", {"json": {"program": RUN, "options": {"timeout_s": -1}}}, 422,
     "timeout_s"),
    # content types
    ("text-plain-run", "POST", "/v1/runs",
     {"content": b'{"program": "x = 1"}', "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    ("text-plain-check", "POST", "/v1/programs/check",
     {"content": b'{"program": "x = 1"}', "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    ("form-urlencoded-run", "POST", "/v1/runs", {"data": {"program": "x = 1"}}, 415,
     "application/x-www-form-urlencoded"),
    # multipart
    ("options-number", "POST", "/v1/runs", _form(options="5"), 422, "options"),
    ("options-list", "POST", "/v1/runs", _form(options="[1]"), 422, "options"),
    ("options-true", "POST", "/v1/runs", _form(options="true"), 422, "options"),
    ("options-null", "POST", "/v1/runs", _form(options="null"), 422, "options"),
    ("options-unknown", "POST", "/v1/runs", _form(options='{"cahce": false}'), 422, "options"),
    ("form-no-program", "POST", "/v1/runs", {"files": {"IMAGE": ("i.png", png_bytes(), "image/png")}}, 422,
     "program"),
    ("form-unclosed", "POST", "/v1/runs",
     {"content": b"--XX\r\nContent-Disposition: form-data; name=\"program\"\r\n\r\nx = 1",
      "headers": {"content-type": "multipart/form-data; boundary=XX"}}, 422, ""),
    # images
    ("not-base64", "POST", "/v1/runs", {"json": {"program": RUN, "images": {"IMAGE": "%%%"}}}, 422, "base64"),
    ("not-an-image", "POST", "/v1/runs", {"json": {"program": RUN, "images": {"IMAGE": b64(b"hello")}}}, 422,
     "not a readable image"),
    ("unknown-reference", "POST", "/v1/runs", {"json": {"program": RUN, "images": {"IMAGE": "sha256:" + "0" * 64}}},
     422, "does not have"),
    ("bad-reference", "POST", "/v1/runs", {"json": {"program": RUN, "images": {"IMAGE": "sha256:xyz"}}}, 422,
     "not a sha256 reference"),
    ("empty-upload", "POST", "/v1/images", {"content": b"", "headers": {"content-type": "image/png"}}, 422, "empty"),
    ("upload-not-image", "POST", "/v1/images", {"content": b"GIF89a-not", "headers": {"content-type": "image/gif"}},
     422, "not a readable image"),
    # sizes
    ("program-too-long", "POST", "/v1/runs", {"json": {"program": "x = 1\n" * 1000}}, 422, "bytes"),
    ("check-body-too-large", "POST", "/v1/programs/check",
     {"content": json.dumps({"program": "x" * 200_000}).encode(), "headers": JSON}, 413, "a program may be at most"),
    ("upload-too-large", "POST", "/v1/images",
     {"content": b"\x89PNG" + bytes(300_000), "headers": {"content-type": "image/png"}}, 413,
     "an image may be at most"),
    ("run-body-too-large", "POST", "/v1/runs",
     {"content": b'{"program": "' + b"x" * 6_000_000 + b'"}', "headers": JSON}, 413, "a run takes at most"),
    # paths and methods
    ("unknown-run", "GET", "/v1/runs/nope", {}, 404, "no run nope"),
    ("long-run-id", "GET", "/v1/runs/" + "a" * 500, {}, 404, "no run"),
    ("unknown-artifact", "GET", "/v1/artifacts/" + "b" * 64, {}, 404, "no artifact"),
    ("unknown-gallery", "GET", "/v1/galleries/nope", {}, 404, "no gallery"),
    ("wrong-method", "DELETE", "/v1/runs", {}, 405, "use POST"),
    ("no-such-route", "GET", "/v1/nothing-here", {}, 404, ""),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "says"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_4xx_with_a_message(client: TestClient, method: str, path: str, kwargs: dict[str, Any],
                                           status: int, says: str) -> None:
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    errors = r.json()["errors"]
    assert errors and errors[0]["message"], r.text
    assert says in r.text, r.text
    assert client.get("/healthz").status_code == 200


def test_wrong_method_names_every_method_of_the_path(client: TestClient) -> None:
    r = client.put("/v1/galleries/faces")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


@pytest.mark.parametrize("header", [
    {"X-API-Key": b"\xff\xfe"}, {"X-API-Key": "clé".encode()}, {"Authorization": b"Bearer \xc3\xa9"},
    {"Authorization": b"Bearer"}, {"Authorization": b"Basic abc"}, {"X-API-Key": b""},
])
@pytest.mark.parametrize("path", ["/v1/modules", "/v1/runs/x", "/v1/galleries", "/v1/artifacts/x"])
def test_any_bytes_in_a_key_are_a_401(keyed: TestClient, header: dict[str, bytes], path: str) -> None:
    r = keyed.get(path, headers=header)
    assert r.status_code == 401 and "API key" in r.json()["errors"][0]["message"]
    assert keyed.get("/healthz").status_code == 200


def test_a_key_check_comes_before_the_body_limit(keyed: TestClient) -> None:
    r = keyed.post("/v1/programs/check", content=b"x" * 2_000_000, headers=JSON)
    assert r.status_code == 401


def test_a_chunked_body_over_the_limit_is_a_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no content-length: counted as it arrives
        for _ in range(40):
            yield b"\x00" * 10_000

    r = client.post("/v1/images", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "an image may be at most" in r.text
    assert client.get("/healthz").status_code == 200


def test_a_multipart_file_over_the_limit_is_a_413(client: TestClient) -> None:
    big = io.BytesIO(b"\x89PNG" + bytes(400_000))
    r = client.post("/v1/runs", data={"program": RUN}, files={"IMAGE": ("big.png", big, "image/png")})
    assert r.status_code == 413, r.text
