"""The result store: the same behaviour from memory and Redis, and Redis outages that degrade
to the in-process fallback instead of failing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
import redis

from app.store import Item, MemoryStore, RedisStore, Store, full_key, open_store
from tests.conftest import RedisServer, free_port

BINARY_VALUES = [
    b"",
    b"\x00",
    b"\x00\x01\x00nul inside\x00",
    b"\xff\xfe\xfd not utf-8 \xc3\x28",
    bytes(range(256)),
    os.urandom(1 << 20),
]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        s: Store = MemoryStore()
    else:
        s = RedisStore(request.getfixturevalue("redis_url"))
    yield s
    await s.close()


def plain_client(url: str) -> redis.Redis:
    """A client independent of the store under test, to see what really reached Redis."""
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


@contextmanager
def quick(limit_s: float = 2.0) -> Iterator[None]:
    """A call made during an outage must not hang; this is a guard, not a benchmark."""
    t0 = time.monotonic()
    yield
    elapsed = time.monotonic() - t0
    assert elapsed < limit_s, f"took {elapsed:.2f}s"


# ---------------------------------------------------------------- both stores


@pytest.mark.parametrize("value", BINARY_VALUES, ids=lambda v: f"{len(v)}B")
async def test_binary_round_trip(store: Store, value: bytes) -> None:
    assert await store.put("step", "k", value) is True
    assert await store.get("step", "k") == value


async def test_missing_key(store: Store) -> None:
    assert await store.get("step", "nope") is None
    assert await store.exists("step", "nope") is False


async def test_kinds_are_namespaced(store: Store) -> None:
    await store.put("step", "same", b"a step")
    await store.put("run", "same", b"a run")
    assert await store.get("step", "same") == b"a step"
    assert await store.get("run", "same") == b"a run"
    assert await store.get("art", "same") is None
    assert await store.exists("img", "same") is False


async def test_exists_and_overwrite(store: Store) -> None:
    assert await store.exists("run", "r1") is False
    await store.put("run", "r1", b"running")
    assert await store.exists("run", "r1") is True
    await store.put("run", "r1", b"done")
    assert await store.get("run", "r1") == b"done"


async def test_many_at_once(store: Store) -> None:
    items = [Item("art", f"k{i}", bytes([i]) * i, 60) for i in range(5)] + [Item("step", "s", b"doc", None)]
    assert await store.put_many(items) is True
    assert await store.put_many([]) is True
    assert await store.get_many("art", ["k3", "nope", "k0"]) == [b"\x03\x03\x03", None, b""]
    assert await store.touch("art", ["k1", "nope", "k4"], 120) == [True, False, True]
    assert await store.touch("step", ["s"]) == [True]
    assert await store.touch("art", []) == []


async def test_touch_sets_a_new_life() -> None:
    now = [0.0]
    s = MemoryStore(clock=lambda: now[0])
    await s.put("art", "a", b"x", 10)
    now[0] = 8.0
    assert await s.touch("art", ["a"], 10) == [True]
    now[0] = 15.0  # past its first life, inside the one the touch gave it
    assert await s.get("art", "a") == b"x"
    now[0] = 18.5
    assert await s.touch("art", ["a"], 10) == [False]


async def test_redis_touch_sets_the_ttl(redis_url: str) -> None:
    s = RedisStore(redis_url)
    try:
        await s.put_many([Item("art", "t", b"x", 5)])
        assert await s.touch("art", ["t"], 1000) == [True]
        with plain_client(redis_url) as c:
            assert 990 < c.ttl(full_key("art", "t")) <= 1000
    finally:
        await s.close()


async def test_redis_many_at_once_during_an_outage(redis_server: RedisServer) -> None:
    s = RedisStore(redis_server.url, retry_after_s=0.5)
    try:
        assert await s.put_many([Item("art", "before", b"b")]) is True
        redis_server.stop()
        with quick():
            assert await s.put_many([Item("art", "a", b"1"), Item("step", "s", b"2")]) is False
            # What went to the fallback still reads and touches; what only Redis had is a miss.
            assert await s.get_many("art", ["a", "before"]) == [b"1", None]
            assert await s.touch("art", ["a", "before"], 60) == [True, False]
        redis_server.start()
        await asyncio.sleep(0.6)
        assert await s.put_many([Item("art", "after", b"3")]) is True
        assert await s.get_many("art", ["after", "a"]) == [b"3", b"1"]
    finally:
        await s.close()


async def test_ttl_expiry(store: Store) -> None:
    await store.put("step", "short", b"x", ttl_s=1)
    await store.put("step", "forever", b"y")
    assert await store.get("step", "short") == b"x"
    await asyncio.sleep(1.2)
    assert await store.get("step", "short") is None
    assert await store.exists("step", "short") is False
    assert await store.get("step", "forever") == b"y"


async def test_caller_mistakes_raise(store: Store) -> None:
    # Programming errors, unlike outages, are raised: silently caching under a typo'd kind or
    # with a TTL Redis would reject would hide the bug.
    with pytest.raises(ValueError, match="kind"):
        await store.get("steps", "k")
    for bad_ttl in (0, -1, 1.5):
        with pytest.raises(ValueError, match="ttl_s"):
            await store.put("step", "k", b"x", ttl_s=bad_ttl)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.put("step", "k", "text")  # type: ignore[arg-type]


async def test_bytearray_is_copied(store: Store) -> None:
    buf = bytearray(b"abc")
    await store.put("art", "buf", buf)  # type: ignore[arg-type]
    buf[0] = ord("z")
    assert await store.get("art", "buf") == b"abc"


async def test_health_and_stats(store: Store) -> None:
    assert isinstance(store, Store)
    assert await store.ping() is True
    assert store.available is True
    assert store.stats()["backend"] == store.name


async def test_events_hit_and_miss(request: pytest.FixtureRequest, store: Store) -> None:
    events: list[str] = []
    s = (
        MemoryStore(on_event=events.append)
        if store.name == "memory"
        else RedisStore(request.getfixturevalue("redis_url"), on_event=events.append)
    )
    try:
        await s.get("step", "k")
        await s.put("step", "k", b"v")
        await s.get("step", "k")
        assert events == ["miss", "hit"]
    finally:
        await s.close()


async def test_a_failing_event_hook_is_contained() -> None:
    def broken(event: str) -> None:
        raise RuntimeError("metrics bug")

    s = MemoryStore(on_event=broken)
    await s.put("step", "k", b"v")
    assert await s.get("step", "k") == b"v"


def test_open_store(redis_url: str) -> None:
    assert isinstance(open_store(None, 1024), MemoryStore)
    assert isinstance(open_store("", 1024), MemoryStore)
    assert open_store(None, 1024).stats()["max_bytes"] == 1024
    assert isinstance(open_store(redis_url, 1024), RedisStore)
    with pytest.raises(ValueError):
        open_store("http://not-redis", 1024)


# ---------------------------------------------------------------- memory


async def test_memory_lru_evicts_by_bytes() -> None:
    s = MemoryStore(max_bytes=100)
    await s.put("step", "a", b"a" * 40)
    await s.put("step", "b", b"b" * 40)
    assert await s.get("step", "a")  # a is now the most recently used
    assert await s.put("step", "c", b"c" * 40) is True
    assert await s.get("step", "b") is None
    assert await s.get("step", "a") == b"a" * 40
    assert await s.get("step", "c") == b"c" * 40
    assert s.stats() == {"backend": "memory", "entries": 2, "bytes": 80, "max_bytes": 100, "evictions": 1}

    assert await s.put("step", "big", b"x" * 100) is True  # exactly the budget: evicts everything else
    assert s.stats()["entries"] == 1 and s.stats()["bytes"] == 100


async def test_memory_refuses_oversize_and_forgets_the_value_it_replaced() -> None:
    s = MemoryStore(max_bytes=10)
    assert await s.put("art", "k", b"small") is True
    assert await s.put("art", "k", b"x" * 11) is False
    assert await s.get("art", "k") is None
    assert s.stats()["bytes"] == 0


async def test_memory_overwrite_keeps_byte_count() -> None:
    s = MemoryStore(max_bytes=100)
    await s.put("step", "k", b"x" * 60)
    await s.put("step", "k", b"y" * 70)
    assert s.stats()["bytes"] == 70 and s.stats()["evictions"] == 0


async def test_memory_ttl_uses_its_clock() -> None:
    now = [1000.0]
    s = MemoryStore(clock=lambda: now[0])
    await s.put("run", "r", b"v", ttl_s=5)
    now[0] += 4.999
    assert await s.get("run", "r") == b"v"
    now[0] += 0.001
    assert await s.get("run", "r") is None
    assert s.stats()["entries"] == 0  # expired entries are dropped when touched


async def test_memory_close_frees_everything() -> None:
    s = MemoryStore()
    await s.put("img", "i", b"png")
    await s.close()
    assert s.stats()["bytes"] == 0


# ---------------------------------------------------------------- redis


async def test_redis_key_layout_and_ttl(redis_url: str) -> None:
    s = RedisStore(redis_url)
    try:
        await s.put("step", "abc", b"\x00v", ttl_s=100)
        await s.put("run", "r", b"rec")
    finally:
        await s.close()
    with plain_client(redis_url) as c:
        assert full_key("step", "abc") == "nsx:v1:step:abc"
        assert c.get("nsx:v1:step:abc") == b"\x00v"
        assert 0 < c.ttl("nsx:v1:step:abc") <= 100
        assert c.ttl("nsx:v1:run:r") == -1  # no TTL asked, none set


async def test_redis_more_callers_than_connections(redis_url: str) -> None:
    # redis-py's pool raises once it runs out of connections; the store must queue instead of
    # reporting that as an outage.
    s = RedisStore(redis_url, max_connections=4)
    try:
        ok = await asyncio.gather(*(s.put("step", f"k{i}", b"v") for i in range(200)))
        got = await asyncio.gather(*(s.get("step", f"k{i}") for i in range(200)))
        assert all(ok) and got == [b"v"] * 200
        assert s.stats()["errors"] == 0
    finally:
        await s.close()


async def test_redis_restart_between_calls_costs_no_error(redis_server: RedisServer) -> None:
    # Pooled sockets die with the server; the first use of each after a restart must be
    # retried on a fresh connection, not counted as an outage.
    s = RedisStore(redis_server.url)
    try:
        assert all(await asyncio.gather(*(s.put("step", f"k{i}", b"v") for i in range(8))))
        redis_server.stop()
        redis_server.start()
        assert all(await asyncio.gather(*(s.put("step", f"k{i}", b"w") for i in range(8))))
        assert s.stats()["errors"] == 0 and s.available
    finally:
        await s.close()


async def test_redis_outage_falls_back_and_recovers(redis_server: RedisServer) -> None:
    events: list[str] = []
    s = RedisStore(redis_server.url, retry_after_s=0.5, on_event=events.append)
    try:
        assert await s.put("step", "before", b"from redis") is True
        assert await s.get("step", "before") == b"from redis"

        redis_server.stop()
        with quick():
            assert await s.put("run", "during", b"\x00fallback\xff") is False
        assert s.available is False
        for _ in range(20):  # within retry_after_s: no call waits on Redis
            with quick():
                assert await s.get("run", "during") == b"\x00fallback\xff"
                assert await s.exists("run", "during") is True
                assert await s.get("step", "before") is None  # only in Redis: a miss, not an error
        assert s.stats()["errors"] == 1  # Redis was tried once, not on every call
        assert s.stats()["fallback_entries"] == 1

        redis_server.start()
        await asyncio.sleep(0.6)
        assert await s.put("run", "after", b"back") is True
        assert s.available is True
        assert s.stats()["reconnects"] == 1
        with plain_client(redis_server.url) as c:
            assert c.get(full_key("run", "after")) == b"back"
        # Written during the outage, still readable on this instance after it.
        assert await s.get("run", "during") == b"\x00fallback\xff"
        assert "error" in events and "reconnect" in events
    finally:
        await s.close()


async def test_redis_backoff_doubles_and_only_one_caller_probes(redis_server: RedisServer) -> None:
    s = RedisStore(redis_server.url, retry_after_s=0.2)
    try:
        await s.put("step", "k", b"v")
        redis_server.stop()
        await s.put("step", "k", b"v")
        assert s.stats()["errors"] == 1
        await asyncio.sleep(0.25)
        # The wait is over: many callers at once, but only one of them asks Redis.
        results = await asyncio.gather(*(s.put("step", f"p{i}", b"v") for i in range(20)))
        assert results == [False] * 20
        assert s.stats()["errors"] == 2
        retry_in = s.stats()["retry_in_s"]
        assert isinstance(retry_in, float) and 0.25 < retry_in <= 0.4  # doubled from 0.2
        await s.put("step", "k", b"v")
        assert s.stats()["errors"] == 2
    finally:
        await s.close()


async def test_redis_rewrite_during_outage_is_not_shadowed_after_recovery(redis_server: RedisServer) -> None:
    # A paused server keeps its data, so Redis comes back holding the older record.
    s = RedisStore(redis_server.url, socket_timeout=0.2, retry_after_s=0.2)
    try:
        await s.put("run", "r", b"running")
        redis_server.pause()
        # The first write times out but may still be applied once the server resumes; the
        # second is not even sent, as the store is backing off.
        assert await s.put("step", "other", b"v") is False
        assert await s.put("run", "r", b"done") is False
        redis_server.resume()
        await asyncio.sleep(0.3)
        with plain_client(redis_server.url) as c:
            assert c.get(full_key("run", "r")) == b"running"
        assert await s.get("run", "r") == b"done"  # the fallback copy is the newer one
        assert s.stats()["fallback_entries"] == 2
        assert await s.put("run", "r", b"archived") is True
        assert s.available is True
        assert await s.get("run", "r") == b"archived"
        await wait_written_back(s)
        assert s.stats()["fallback_entries"] == 0
        with plain_client(redis_server.url) as c:
            assert c.get(full_key("run", "r")) == b"archived"  # the write-back did not undo it
            assert c.get(full_key("step", "other")) == b"v"
    finally:
        await s.close()


async def wait_written_back(s: RedisStore) -> None:
    task = s._writing_back
    if task is not None:
        await asyncio.wait_for(task, 5)


async def test_redis_fallback_is_written_back_after_recovery(redis_server: RedisServer) -> None:
    # Uploads and records kept in the fallback during an outage reach Redis once it is back, with
    # what is left of their TTL, so another process (or this one after a restart) can read them.
    s = RedisStore(redis_server.url, retry_after_s=0.2)
    try:
        await s.put("step", "warm", b"v")
        redis_server.stop()
        assert await s.put("img", "upload", b"png bytes", ttl_s=600) is False
        assert await s.put_many([Item("run", f"r{i}", b"record %d" % i, None) for i in range(150)]) is False
        assert s.stats()["fallback_entries"] == 151
        redis_server.start()
        await asyncio.sleep(0.25)
        assert await s.ping() is True
        await wait_written_back(s)
        st = s.stats()
        assert st["fallback_entries"] == 0 and st["written_back"] == 151
        with plain_client(redis_server.url) as c:
            assert c.get(full_key("img", "upload")) == b"png bytes"
            assert 590 <= c.ttl(full_key("img", "upload")) <= 600
            assert c.get(full_key("run", "r149")) == b"record 149" and c.ttl(full_key("run", "r149")) == -1
    finally:
        await s.close()


async def test_redis_write_during_write_back_lands_last(redis_server: RedisServer) -> None:
    s = RedisStore(redis_server.url, retry_after_s=0.2)
    try:
        await s.put("run", "r", b"old")
        redis_server.stop()
        assert await s.put("run", "r", b"outage") is False
        redis_server.start()
        await asyncio.sleep(0.25)
        assert await s.ping() is True
        # The write-back task has been created and not yet run: this write races it.
        assert await s.put("run", "r", b"newest") is True
        await wait_written_back(s)
        with plain_client(redis_server.url) as c:
            assert c.get(full_key("run", "r")) == b"newest"
        assert await s.get("run", "r") == b"newest"
    finally:
        await s.close()


async def test_redis_hung_server_costs_one_timeout(redis_server: RedisServer) -> None:
    s = RedisStore(redis_server.url, socket_timeout=0.3, retry_after_s=0.5)
    try:
        await s.put("step", "k", b"v")
        redis_server.pause()
        with quick():
            assert await s.get("step", "k") is None
        assert s.available is False
        for _ in range(10):
            with quick(0.1):
                assert await s.put("step", "k2", b"v2") is False
        redis_server.resume()
        await asyncio.sleep(0.6)
        assert await s.get("step", "k") == b"v"
        assert s.available is True
    finally:
        await s.close()


async def test_redis_unreachable_from_the_start() -> None:
    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with quick():
            assert await s.ping() is False
            assert await s.put("img", "i", b"png") is False
            assert await s.get("img", "i") == b"png"
            assert await s.get("img", "other") is None
        assert s.available is False
        assert s.stats()["available"] is False
    finally:
        await s.close()


async def test_redis_ping_ignores_the_backoff(redis_server: RedisServer) -> None:
    s = RedisStore(redis_server.url, retry_after_s=10)
    try:
        redis_server.stop()
        assert await s.ping() is False
        redis_server.start()
        assert await s.ping() is True
        assert s.available is True
    finally:
        await s.close()


async def test_redis_calls_after_close_do_not_raise(redis_url: str) -> None:
    s = RedisStore(redis_url)
    await s.put("step", "k", b"v")
    await s.close()
    assert await s.get("step", "k") is None
    assert await s.put("step", "k", b"v") is False
