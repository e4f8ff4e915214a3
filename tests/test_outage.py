"""Redis going away in the middle of a series of runs: slower, never wrong, never down."""

from __future__ import annotations

import time

import redis

from tests.apputil import b64, client_for, png_bytes

PROGRAM = "R = REGION(image=IMAGE, box=[{x}, 5, 40, 40])\nn = COUNT(box=R)\nanswer = n * 10\n"


def test_runs_survive_a_redis_outage(durable_redis_server) -> None:  # type: ignore[no-untyped-def]
    redis_server = durable_redis_server
    image = {"IMAGE": b64(png_bytes())}
    with client_for(redis_server.url) as client:
        def run(x: int) -> dict:
            r = client.post("/v1/runs", json={"program": PROGRAM.format(x=x), "images": image})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["status"] == "succeeded" and out["result"] == {"type": "number", "value": 10}
            return out

        before = run(1)
        assert before["persisted"] is True
        assert [s["cache"] for s in run(1)["steps"]] == ["hit", "hit", "hit"]

        redis_server.stop()
        during = [run(x) for x in (2, 3, 2)]
        assert all(r["persisted"] is False for r in during)
        # The record made while Redis was down can still be read from this instance.
        assert client.get(f"/v1/runs/{during[0]['run_id']}").json()["persisted"] is False
        metrics = client.get("/metrics").text
        assert "nsx_store_available 0.0" in metrics
        assert "nsx_runs_unpersisted_total 3.0" in metrics
        assert client.get("/readyz").json()["store_available"] is False

        redis_server.start()
        deadline = time.monotonic() + 30
        while True:
            after = run(4)
            if after["persisted"]:
                break
            assert time.monotonic() < deadline, "the store never reconnected"
            time.sleep(0.3)
        # Caching resumes: the same run again is served from Redis, and the record is in Redis.
        assert [s["cache"] for s in run(4)["steps"]] == ["hit", "hit", "hit"]
        plain = redis.Redis.from_url(redis_server.url)
        assert plain.exists(f"nsx:v1:run:{after['run_id']}") == 1
        assert "nsx_store_available 1.0" in client.get("/metrics").text


def test_records_are_persisted_only_where_they_outlive_a_restart(redis_server, durable_redis_server,  # type: ignore[no-untyped-def]
                                                                 caplog) -> None:
    image = {"IMAGE": b64(png_bytes())}
    body = {"program": PROGRAM.format(x=1), "images": image}
    with caplog.at_level("WARNING", logger="nsx.store"), client_for(redis_server.url) as client:
        assert client.post("/v1/runs", json=body).json()["persisted"] is False
        assert client.get("/readyz").json()["store_durable"] is False
    assert "appendonly no" in caplog.text
    with client_for(durable_redis_server.url) as client:
        assert client.post("/v1/runs", json=body).json()["persisted"] is True
        assert client.get("/readyz").json()["store_durable"] is True
    with client_for(redis_server.url, redis_durable=True) as client:  # the deployment says so
        assert client.post("/v1/runs", json=body).json()["persisted"] is True
    with client_for(None) as client:
        assert client.post("/v1/runs", json=body).json()["persisted"] is False


def test_an_upload_unreadable_during_an_outage_is_a_503_not_a_422(durable_redis_server) -> None:  # type: ignore[no-untyped-def]
    redis_server = durable_redis_server  # what it was given is there again after its restart
    with client_for(redis_server.url) as client:
        ref = client.post("/v1/images", content=png_bytes(seed=3), headers={"content-type": "image/png"}).json()
        body = {"program": "n = COUNT(box=REGION(image=IMAGE, box=[0, 0, 5, 5]))", "images": {"IMAGE": ref["sha256"]}}
        redis_server.stop()
        r = client.post("/v1/runs", json=body)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        assert "unreachable" in r.json()["errors"][0]["message"]
        # Uploaded while it is down: kept by this process, and runs on it work.
        during = client.post("/v1/images", content=png_bytes(seed=4), headers={"content-type": "image/png"}).json()
        ok = client.post("/v1/runs", json={**body, "images": {"IMAGE": during["sha256"]}})
        assert ok.status_code == 200 and ok.json()["status"] == "succeeded"
        redis_server.start()
        deadline = time.monotonic() + 30
        while client.post("/v1/runs", json=body).status_code != 200:
            assert time.monotonic() < deadline, "never recovered"
            time.sleep(0.3)
