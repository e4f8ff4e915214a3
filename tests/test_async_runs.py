"""Async runs, their live events, and the rationale page, through the API: a 202 at once, the state
while it runs, each step as a Server-Sent Event as it ends, the record at the end; all of it the
tenant's own; pages that escape what users and modules wrote."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.apputil import client_for, png_bytes, post_run

CHAIN = "a = SLOW(seconds=0.5)\nb = SLOW(seconds=a)\nc = b + 1\n"


def events_of(client: TestClient, url: str, **kw: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of every event the stream sends until it ends."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    with client.stream("GET", url, **kw) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in r.iter_lines():
            if not line:
                if fields:
                    out.append((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return out


@pytest.fixture(scope="module")
def slow_client() -> Any:
    with client_for(packs="core,fault") as c:
        yield c


def test_an_async_run_answers_at_once_then_streams_its_steps_and_its_record(slow_client: TestClient) -> None:
    r = slow_client.post("/v1/runs", json={"program": CHAIN, "options": {"async": True}})
    assert r.status_code == 202, r.text
    accepted = r.json()
    rid = accepted["run_id"]
    assert accepted == {"run_id": rid, "status": "running", "url": f"/v1/runs/{rid}",
                        "events": f"/v1/runs/{rid}/events", "view": f"/v1/runs/{rid}/view"}
    assert r.headers["location"] == accepted["url"]

    state = slow_client.get(accepted["url"]).json()
    assert state["status"] == "running" and state["result"] is None
    assert [s["id"] for s in state["steps"]] == ["s1", "s2", "s3"]
    assert state["steps"][2]["status"] == "pending"

    events = events_of(slow_client, accepted["events"])
    assert [e[1] for e in events] == ["step", "step", "step", "run"]
    assert [e[0] for e in events] == ["1", "2", "3", "4"]
    assert [e[2]["step"]["id"] for e in events[:3]] == ["s1", "s2", "s3"]  # a chain ends in order
    for _, _, data in events[:3]:
        assert data["step"]["status"] == "succeeded"
        assert f'id="{data["step"]["id"]}"' in data["html"]
    final = events[3][2]
    assert final["record"]["status"] == "succeeded"
    assert final["record"]["result"] == {"type": "number", "value": 1.5}
    assert 'class="rationale"' in final["html"]

    stored = slow_client.get(accepted["url"]).json()
    assert stored == final["record"]
    # Once ended, the events replay from the record, in plan order.
    again = events_of(slow_client, accepted["events"])
    assert [e[1] for e in again] == ["step", "step", "step", "run"] and again[3][2]["record"] == stored


def test_events_come_in_the_order_steps_end_and_resume_after_last_event_id(slow_client: TestClient) -> None:
    program = "a = SLOW(seconds=0.8)\nb = HANG(seconds=0.1)\nc = a + b\n"  # HANG: on the symbolic worker
    run = slow_client.post("/v1/runs", json={"program": program, "options": {"async": True}}).json()
    live = events_of(slow_client, run["events"])
    assert [e[2].get("step", {}).get("id") for e in live] == ["s2", "s1", "s3", None]  # b ends before a
    assert [e[2]["step"]["ended"] for e in live[:3]] == [1, 2, 3]
    replay = events_of(slow_client, run["events"])
    assert [(e[0], e[1], e[2].get("step", {}).get("id")) for e in replay] == [
        (e[0], e[1], e[2].get("step", {}).get("id")) for e in live]
    resumed = events_of(slow_client, run["events"], headers={"Last-Event-ID": "2"})
    assert [(e[0], e[2].get("step", {}).get("id")) for e in resumed] == [("3", "s3"), ("4", None)]


def test_the_events_of_an_ended_run_come_from_its_record(slow_client: TestClient) -> None:
    record = post_run(slow_client, "R = REGION(image=IMAGE, box=[0, 0, 10, 10])\nn = COUNT(box=R)",
                      {"IMAGE": png_bytes()})
    events = events_of(slow_client, f"/v1/runs/{record['run_id']}/events")
    assert [(e[1], e[2].get("step", {}).get("id")) for e in events] == [("step", "s1"), ("step", "s2"), ("run", None)]
    assert events[-1][2]["record"] == record


def test_an_async_run_is_refused_at_once_for_what_a_sync_run_is(slow_client: TestClient) -> None:
    bad = slow_client.post("/v1/runs", json={"program": "x = FOO()", "options": {"async": True}})
    assert bad.status_code == 422 and "FOO" in bad.text
    missing = slow_client.post("/v1/runs", json={"program": "n = COUNT(box=REGION(image=IMAGE, box=[0, 0, 1, 1]))",
                                                  "options": {"async": True}})
    assert missing.status_code == 422
    typo = slow_client.post("/v1/runs", json={"program": "x = 1", "options": {"asynch": True}})
    assert typo.status_code == 422 and "asynch" in typo.text


def test_a_full_service_refuses_an_async_run_with_429() -> None:
    with client_for(packs="core,fault", max_concurrent_runs=1) as c:
        first = c.post("/v1/runs", json={"program": "a = SLOW(seconds=1.5)", "options": {"async": True}})
        assert first.status_code == 202
        second = c.post("/v1/runs", json={"program": "a = 1", "options": {"async": True}})
        assert second.status_code == 429 and "retry-after" in second.headers
        events_of(c, first.json()["events"])  # ends with the run


def test_an_async_run_and_its_events_and_page_are_the_tenants_own() -> None:
    with client_for(packs="core,fault", api_keys="alice:key-a,bob:key-b") as c:
        alice, bob = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
        r = c.post("/v1/runs", json={"program": CHAIN, "options": {"async": True}}, headers=alice)
        assert r.status_code == 202
        run = r.json()
        for path in (run["url"], run["events"], run["view"]):
            assert c.get(path, headers=bob).status_code == 404, path  # while it runs
            assert c.get(path).status_code == 401
        assert len(events_of(c, run["events"], headers=alice)) == 4
        for path in (run["url"], run["events"], run["view"]):
            assert c.get(path, headers=bob).status_code == 404, path  # and after
        # The page and the events are opened by the browser itself: the key goes in a cookie, which
        # counts for reading only.
        session = c.post("/v1/session", headers=alice)
        assert session.status_code == 200 and session.json() == {"tenant": "alice"}
        cookie = session.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/v1" in cookie
        assert c.get(run["view"]).status_code == 200
        assert len(events_of(c, run["events"])) == 4
        assert c.post("/v1/runs", json={"program": "x = 1"}).status_code == 401  # a cookie cannot start a run
        assert c.delete("/v1/session", headers=alice).status_code == 204
        c.cookies.clear()
        refused = c.get(run["view"])
        assert refused.status_code == 401 and refused.headers["content-type"].startswith("text/html")
        assert "API key" in refused.text
        assert c.post("/v1/session", headers={"X-API-Key": "nope"}).status_code == 401


def test_the_page_shows_user_text_as_text() -> None:
    label = "<script>alert('x')</script>"
    with client_for() as c:
        record = post_run(c, f"R = REGION(image=IMAGE, box=[5, 5, 40, 40], label={json.dumps(label)})\n"
                             "t = EVAL(expr=\"'<b>bold</b> & more'\")", {"IMAGE": png_bytes()})
        page = c.get(f"/v1/runs/{record['run_id']}/view")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        html = page.text
        assert "<script>alert" not in html and "<b>bold" not in html
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
        assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in html
        assert html.count("<script") == 0  # an ended run's page runs no script at all


def test_the_page_shows_every_step_with_its_facts_and_failures() -> None:
    with client_for(packs="core,fault") as c:
        record = post_run(c, "R = REGION(image=IMAGE, box=[5, 5, 40, 40], label='thing')\n"
                             "n = COUNT(box=R)\nx = RAISE(message='boom <here>')\ny = x + n",
                          {"IMAGE": png_bytes()})
        assert record["status"] == "failed"
        html = c.get(f"/v1/runs/{record['run_id']}/view").text
        for step in record["steps"]:
            assert f'<section class="step {step["status"]}" id="{step["id"]}"' in html
        assert 'class="step failed" id="s3"' in html and "boom &lt;here&gt;" in html
        assert 'class="step skipped" id="s4"' in html and "input s3 failed" in html
        # Statements link to their steps, arguments to the steps they read.
        assert '<a href="#s1" data-step="s1">R = REGION(' in html
        assert '<a href="#s1">s1</a>' in html
        # Images and objects as thumbnails with their boxes drawn; every URL one of the run's artifacts.
        image_key = record["inputs"]["IMAGE"]["key"]
        assert f'src="/v1/artifacts/{image_key}"' in html
        assert '<rect x="5" y="5" width="35" height="35"' in html
        for url in {u.split('"')[0] for u in html.split('src="')[1:]}:
            assert c.get(url).status_code == 200, url


def test_a_missing_run_is_a_page_with_the_apis_error() -> None:
    with client_for() as c:
        r = c.get("/v1/runs/nope/view")
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert "no run nope" in r.text
        assert c.get("/v1/runs/nope/events").status_code == 404


def test_the_playground_offers_the_examples_its_catalog_runs() -> None:
    with client_for(packs="core,shapes") as c:
        r = c.get("/")
        assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
        assert "shapes-count" in r.text and "photo-faces" not in r.text
        assert c.get("/static/playground.js").status_code == 200
        assert c.get("/static/examples/shapes.png").headers["content-type"] == "image/png"
    with client_for(packs="core") as c:
        assert "shapes-count" not in c.get("/").text


@pytest.mark.parametrize("wait_s, seconds, status", [(1, 20, "failed"), (30, 1, "succeeded")])
def test_shutdown_lets_async_runs_end_for_its_timeout_then_cancels_them(wait_s: int, seconds: int,
                                                                       status: str) -> None:
    with client_for(packs="core,fault", shutdown_timeout_s=wait_s) as c:
        r = c.post("/v1/runs", json={"program": f"a = SLOW(seconds={seconds})\nb = a + 1",
                                     "options": {"async": True}})
        assert r.status_code == 202
        live = c.app.state.svc.runs.live.get("", r.json()["run_id"])  # type: ignore[attr-defined]
        assert live is not None and live.record is None
    assert live.record is not None and live.record.status == status
    if status == "failed":
        assert live.record.error == "the server shut down before the run ended"
        assert [s.status for s in live.record.steps] == ["skipped", "skipped"]


def test_an_async_run_can_be_cancelled_by_its_client(slow_client: TestClient) -> None:
    run = slow_client.post("/v1/runs", json={"program": "a = SLOW(seconds=5)\nb = a + 1",
                                             "options": {"async": True}}).json()
    r = slow_client.delete(run["url"])
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["status"] == "failed" and "cancelled by its client" in record["error"]
    assert slow_client.get(run["url"]).json() == record
    events = events_of(slow_client, run["events"])
    assert events[-1][1] == "run" and events[-1][2]["record"] == record
    again = slow_client.delete(run["url"])
    assert again.status_code == 409 and "ended" in again.text
    assert slow_client.delete("/v1/runs/nope").status_code == 404


def test_a_key_with_any_characters_works_through_the_cookie() -> None:
    with client_for(packs="core", api_keys="alice:tok/en+x==%3B") as c:
        r = c.post("/v1/runs", json={"program": "x = 1 + 1"}, headers={"X-API-Key": "tok/en+x==%3B"})
        assert r.status_code == 200
        assert c.post("/v1/session", headers={"X-API-Key": "tok/en+x==%3B"}).status_code == 200
        assert c.get(f"/v1/runs/{r.json()['run_id']}/view").status_code == 200
        c.cookies.clear()
        assert c.delete("/v1/session").status_code == 204  # forgetting needs no key
        assert c.get(f"/v1/runs/{r.json()['run_id']}/view").status_code == 401


def test_the_page_draws_what_it_can_of_odd_values() -> None:
    from app.view import render_run

    odd = [
        {"type": "objects", "image": "sha256:x", "image_size": [10, None], "items": [
            {"box": [1, None, 3, 4], "score": None, "label": "nan score"}, {"label": "no box"}, {}]},
        {"type": "objects", "image": "sha256:x", "image_size": [64, 64],
         "items": [{"box": [i, i, i + 2, i + 2], "score": 0.5, "label": f"o{i}"} for i in range(200)]},
        {"type": "list", "items": [{"type": "list", "items": [{"type": "number", "value": 1}]}] * 30},
        {"type": "image", "key": "sha256:y", "width": "wide", "height": -1},
        {"type": "mystery", "value": {"deep": [1, 2]}},
        {"type": "text", "value": None},
        {"no": "type"},
    ]
    steps = [{"id": f"s{i + 1}", "module": "M", "version": "1", "vars": [f"v{i}"], "args": {"x": {"step": "s0"}},
              "status": "succeeded", "output": doc} for i, doc in enumerate(odd)]
    html = render_run({"run_id": "r", "status": "succeeded", "steps": steps, "program": "v0 = M()",
                       "timings": {"total_ms": None}, "inputs": {}})
    assert html.count('<section class="step ') == len(odd)
    assert "… and 136 more" in html and "… and 6 more" in html
    assert "<td>nan score</td><td>?</td>" in html and "mystery" in html
