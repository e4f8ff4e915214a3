"""Keys identify tenants: what one tenant makes (runs, steps, uploads, artifacts, step outputs, cache
hits) another cannot read, cannot use and cannot detect. Across the memory store and a real Redis."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.tenants import KeysError, file_line, parse_keys
from tests.apputil import b64, client_for, png_bytes
from tests.test_api import PROGRAM
from tests.test_artifacts import urls

A = {"X-API-Key": "key-of-a"}
B = {"Authorization": "Bearer key-of-b"}


# ------------------------------------------------------------------ the key list

def test_plain_keys_are_each_a_tenant_named_by_a_digest() -> None:
    table = parse_keys("k1, k2")
    one, two = table.tenant_of(b"k1"), table.tenant_of(b"k2")
    assert one and two and one != two
    assert one == "key-" + hashlib.sha256(b"k1").hexdigest()[:12]
    assert parse_keys("k2,k1").tenant_of(b"k1") == one  # order does not move a key's data
    assert table.tenant_of(b"k3") is None and table.tenant_of(b"") is None and table.tenant_of(b"k") is None


def test_named_keys_and_several_keys_per_tenant() -> None:
    table = parse_keys("alice:a-old,alice:a-new,bob:b1")
    assert table.tenant_of(b"a-old") == table.tenant_of(b"a-new") == "alice"
    assert table.tenant_of(b"b1") == "bob" and table.tenants == {"alice", "bob"}
    assert table.tenant_of(b"alice:a-old") is None


def test_a_keys_file_holds_only_digests(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# who may call\n{file_line('carol', 'c-secret')}\n\n{file_line('dave', 'd-secret')}\n")
    assert "c-secret" not in f.read_text()
    table = parse_keys(None, f)
    assert table.tenant_of(b"c-secret") == "carol" and table.tenant_of(b"d-secret") == "dave"
    both = parse_keys("erin:e1", f)
    assert both.tenant_of(b"e1") == "erin" and both.tenant_of(b"c-secret") == "carol"


@pytest.mark.parametrize(("spec", "says"), [
    (" , ", "holds no key"),
    (",", "holds no key"),
    ("k1,,k2", "item 2 is empty"),
    ("k1,", "item 2 is empty"),
    ("alice:", "item 1: the key is empty"),
    (":k1", "tenant name ''"),
    ("a/b:k1", "tenant name 'a/b'"),
    ("k 1", "may not contain spaces"),
    ("alice:k1,bob:k1", "given to two tenants"),
])
def test_a_malformed_key_list_stops_start_up_with_its_reason(spec: str, says: str) -> None:
    with pytest.raises(KeysError, match=says):
        parse_keys(spec)
    with pytest.raises(ValueError, match=says):  # what app_from_env turns into "nsx: …" and exit 2
        create_app(Settings(packs="core", api_keys=spec))


@pytest.mark.parametrize(("text", "says"), [
    ("carol c-secret\n", "not in clear"),
    ("carol\n", "expected 'NAME sha256"),
    ("# nothing\n", "holds no key"),
    ("bad/name sha256:" + "0" * 64 + "\n", "tenant name"),
])
def test_a_malformed_keys_file_stops_start_up(tmp_path: Path, text: str, says: str) -> None:
    f = tmp_path / "keys"
    f.write_text(text)
    with pytest.raises(KeysError, match=says):
        parse_keys(None, f)
    with pytest.raises(KeysError, match="cannot be read"):
        parse_keys(None, tmp_path / "missing")


def test_an_empty_variable_means_no_keys() -> None:
    assert not parse_keys("") and not parse_keys(None)


# ------------------------------------------------------------------ isolation over HTTP

@pytest.fixture(params=["memory", "redis"])
def two(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    with client_for(url, api_keys="key-of-a,key-of-b") as c:
        yield c


def _run(client: TestClient, headers: dict[str, str], images: dict[str, str], **options: Any) -> dict[str, Any]:
    r = client.post("/v1/runs", json={"program": PROGRAM, "images": images, "options": options}, headers=headers)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    return record


def test_another_tenant_finds_nothing_a_tenant_made(two: TestClient) -> None:
    image = png_bytes(seed=7)
    up = two.post("/v1/images", content=image, headers={**A, "content-type": "image/png"})
    assert up.status_code == 200
    ref = "sha256:" + up.json()["sha256"].removeprefix("sha256:")
    record = _run(two, A, {"IMAGE": ref})
    assert record["status"] == "succeeded"
    run_id = record["run_id"]
    links = sorted(set(urls(record)) | {f"/v1/artifacts/{record['inputs']['IMAGE']['key']}"})
    assert len(links) >= 2  # the crop and the input image
    step_keys = [s["key"] for s in record["steps"]]

    # The owner reads all of it.
    assert two.get(f"/v1/runs/{run_id}", headers=A).status_code == 200
    assert two.get(f"/v1/runs/{run_id}/steps/s1", headers=A).status_code == 200
    for link in links:
        assert two.get(link, headers=A).status_code == 200, link
    for key in step_keys:
        assert two.get(f"/v1/artifacts/{key}", headers=A).status_code == 200

    # The other tenant: the same answers as for things that never existed.
    never = two.get("/v1/runs/no-such-run", headers=B)
    assert never.status_code == 404
    theirs = two.get(f"/v1/runs/{run_id}", headers=B)
    assert theirs.status_code == 404
    assert theirs.json()["errors"][0]["message"] == f"no run {run_id}"
    assert two.get(f"/v1/runs/{run_id}/steps/s1", headers=B).status_code == 404
    for link in links:
        assert two.get(link, headers=B).status_code == 404, link
    for key in step_keys:
        assert two.get(f"/v1/artifacts/{key}", headers=B).status_code == 404
    # A's upload, by reference, is unknown to B.
    r = two.post("/v1/runs", json={"program": PROGRAM, "images": {"IMAGE": ref}}, headers=B)
    assert r.status_code == 422 and "does not have" in r.json()["errors"][0]["message"]

    # B sends the same bytes itself: computed afresh, nothing says A ran it first.
    mine = _run(two, B, {"IMAGE": b64(image)})
    assert {s["cache"] for s in mine["steps"]} == {"miss"}
    assert [s["key"] for s in mine["steps"]] == step_keys  # the same content keys, kept apart
    again = _run(two, A, {"IMAGE": ref})
    assert {s["cache"] for s in again["steps"]} == {"hit"}
    # And B's own copy is B's: A cannot read B's run either.
    assert two.get(f"/v1/runs/{mine['run_id']}", headers=A).status_code == 404
    assert two.get(f"/v1/runs/{mine['run_id']}", headers=B).status_code == 200


def test_keys_of_one_named_tenant_share_its_runs() -> None:
    with client_for(None, api_keys="alice:a1,alice:a2,bob:b1") as c:
        record = _run(c, {"X-API-Key": "a1"}, {"IMAGE": b64(png_bytes())})
        assert c.get(f"/v1/runs/{record['run_id']}", headers={"X-API-Key": "a2"}).status_code == 200
        assert c.get(f"/v1/runs/{record['run_id']}", headers={"X-API-Key": "b1"}).status_code == 404


def test_a_keys_file_serves_its_tenants(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(file_line("carol", "c-secret") + "\n")
    with client_for(None, api_keys_file=f) as c:
        assert c.get("/v1/modules").status_code == 401
        assert c.get("/v1/modules", headers={"X-API-Key": "c-secret"}).status_code == 200
        assert c.get("/v1/modules", headers={"X-API-Key": f.read_text().split()[1]}).status_code == 401


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_shared_cache_shares_steps_but_not_runs_or_uploads(store: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_url") if store == "redis" else None
    with client_for(url, api_keys="key-of-a,key-of-b", share_cache=True) as c:
        image = png_bytes(seed=9)
        ref = c.post("/v1/images", content=image, headers={**A, "content-type": "image/png"}).json()["sha256"]
        first = _run(c, A, {"IMAGE": ref})
        assert c.get(f"/v1/artifacts/{ref}", headers=B).status_code == 404  # A's upload stays A's
        r = c.post("/v1/runs", json={"program": PROGRAM, "images": {"IMAGE": ref}}, headers=B)
        assert r.status_code == 422
        hit = _run(c, B, {"IMAGE": b64(image)})  # B has the image itself
        assert {s["cache"] for s in hit["steps"]} == {"hit"}
        crop = next(s for s in hit["steps"] if s["module"] == "CROP_LEFTOF")["output"]["url"]
        assert c.get(crop, headers=B).status_code == 200  # the shared step's artifact
        assert c.get(f"/v1/runs/{first['run_id']}", headers=B).status_code == 404


def test_without_keys_everything_is_one_tenant_as_before() -> None:
    with TestClient(create_app(Settings(packs="core"))) as c:
        while c.get("/readyz").status_code != 200:
            pass
        record = _run(c, {}, {"IMAGE": b64(png_bytes())})
        store = c.app.state.svc.store  # type: ignore[attr-defined]
        # Stored under the unprefixed key, where records written before tenants existed are.
        assert c.portal.call(store.get, "run", record["run_id"]) is not None  # type: ignore[attr-defined]


def test_nsx_hash_key_prints_the_files_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from app.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("c-secret\n"))
    assert main(["hash-key", "carol", "--stdin"]) == 0
    line = capsys.readouterr().out
    assert "c-secret" not in line
    assert main(["hash-key", "dave"]) == 0  # a new key: on stderr, the line alone on stdout
    out = capsys.readouterr()
    new_key = out.err.rsplit(": ", 1)[1].strip()
    f = tmp_path / "keys"
    f.write_text(line + out.out)
    table = parse_keys(None, f)
    assert table.tenant_of(b"c-secret") == "carol" and table.tenant_of(new_key.encode()) == "dave"


def test_the_served_app_refuses_a_blank_key_list(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from app.main import app_from_env

    monkeypatch.setenv("NSX_API_KEYS", " , ")
    monkeypatch.setenv("NSX_PACKS", "core")
    with pytest.raises(SystemExit) as stop:
        app_from_env()
    assert stop.value.code == 2 and "holds no key" in capsys.readouterr().err
