"""The result store: step outputs, run records, artifacts and images, by kind and key.

Two backends share one small interface. ``MemoryStore`` is the embedded default and the
safety net; ``RedisStore`` shares results across processes and restarts. The house rule is
"Redis down means slower, never wrong and never down", so a Redis failure is never raised to a
caller: it is counted, the value goes to an in-process fallback, and Redis is tried again after
a back-off instead of on every call (a dead server must not add a timeout to every step).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = [
    "DEFAULT_FALLBACK_BYTES",
    "DEFAULT_MEMORY_BYTES",
    "KINDS",
    "EventHook",
    "Item",
    "MemoryStore",
    "RedisStore",
    "ScopedStore",
    "Store",
    "full_key",
    "open_store",
    "scoped",
]

logger = logging.getLogger("nsx.store")

KINDS: frozenset[str] = frozenset({"step", "run", "art", "img"})
KEY_PREFIX = "nsx:v1"
DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024
DEFAULT_FALLBACK_BYTES = 64 * 1024 * 1024

# Called with "error", "reconnect", "hit" or "miss"; lets metrics be wired without the store
# importing them.
EventHook = Callable[[str], None]

T = TypeVar("T")


@runtime_checkable
class Store(Protocol):
    """What the executor and the routes need from a result store; no method raises for outages."""

    name: str

    async def get(self, kind: str, key: str) -> bytes | None: ...

    async def put(self, kind: str, key: str, value: bytes, ttl_s: int | None = None) -> bool: ...

    async def exists(self, kind: str, key: str) -> bool: ...

    async def put_many(self, items: Sequence[Item]) -> bool:
        """Write several values at once (one round trip): True when every one was stored."""
        ...

    async def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        """``get`` of several keys in one round trip."""
        ...

    async def touch(self, kind: str, keys: Sequence[str], ttl_s: int | None = None) -> list[bool]:
        """Whether each key is present, its life set to ``ttl_s`` from now (None: only checked).
        One round trip: a cache hit keeps what it names alive as long as the run it answers."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

    @property
    def available(self) -> bool: ...

    @property
    def durable(self) -> bool:
        """Whether what it keeps outlives a restart of its backend (Redis with append-only on)."""
        ...

    def prefix(self, kind: str) -> str:
        """What this store puts before a key of ``kind``: a tenant's name in a tenant's view, so
        equal keys of two views are two values."""
        ...

    def stats(self) -> dict[str, int | float | bool | str]: ...


def full_key(kind: str, key: str) -> str:
    """The backend key. Versioned so a change of encoding can never read old entries."""
    if kind not in KINDS:
        # A typo here would silently split the cache; fail loudly, it is a programming error.
        raise ValueError(f"unknown store kind {kind!r}; expected one of {sorted(KINDS)}")
    return f"{KEY_PREFIX}:{kind}:{key}"


def _as_bytes(value: bytes) -> bytes:
    # bytes() copies a bytearray/memoryview so a caller mutating its buffer cannot change
    # what is cached; a str would be encoded differently by each backend, so refuse it.
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"store values are bytes, not {type(value).__name__}")


def _check_ttl(ttl_s: int | None) -> None:
    # Checked here because Redis would reject these with an error that looks like an outage.
    if ttl_s is None:
        return
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive int or None, not {ttl_s!r}")


def _emit(hook: EventHook | None, event: str) -> None:
    if hook is None:
        return
    try:
        hook(event)
    except Exception:  # a broken metrics callback must not break caching
        logger.exception("store event hook failed on %r", event)


class Item(NamedTuple):
    """One value to write with ``put_many``."""

    kind: str
    key: str
    value: bytes
    ttl_s: int | None = None


class _Entry(NamedTuple):
    value: bytes
    expires_at: float | None


class MemoryStore:
    """A bounded LRU in this process, by value bytes, with lazily expired TTLs.

    Safe for use from one asyncio loop: no method awaits between reading and updating its
    state. Not for use from several threads at once.
    """

    name: str = "memory"

    def __init__(
        self,
        max_bytes: int = DEFAULT_MEMORY_BYTES,
        *,
        on_event: EventHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._on_event = on_event
        # Monotonic so a wall-clock jump can neither expire everything nor keep entries forever.
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._evictions = 0

    @property
    def available(self) -> bool:
        return True

    @property
    def durable(self) -> bool:
        return False  # this process's memory: gone with it

    def prefix(self, kind: str) -> str:
        return ""

    async def get(self, kind: str, key: str) -> bytes | None:
        value = self._lookup(full_key(kind, key))
        _emit(self._on_event, "miss" if value is None else "hit")
        return value

    async def put(self, kind: str, key: str, value: bytes, ttl_s: int | None = None) -> bool:
        _check_ttl(ttl_s)
        return self._store(full_key(kind, key), _as_bytes(value), ttl_s)

    async def exists(self, kind: str, key: str) -> bool:
        return self._lookup(full_key(kind, key)) is not None

    async def put_many(self, items: Sequence[Item]) -> bool:
        for it in items:
            _check_ttl(it.ttl_s)
        ok = True
        for it in items:
            ok &= self._store(full_key(it.kind, it.key), _as_bytes(it.value), it.ttl_s)
        return ok

    async def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        return [await self.get(kind, k) for k in keys]

    async def touch(self, kind: str, keys: Sequence[str], ttl_s: int | None = None) -> list[bool]:
        _check_ttl(ttl_s)
        return [self._extend(full_key(kind, k), ttl_s) for k in keys]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def stats(self) -> dict[str, int | float | bool | str]:
        # Entries past their TTL count until touched or evicted: expiry is lazy.
        return {
            "backend": self.name,
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "evictions": self._evictions,
        }

    # The synchronous core, on full keys, shared with RedisStore's fallback.

    def _lookup(self, full: str) -> bytes | None:
        entry = self._entries.get(full)
        if entry is None:
            return None
        if entry.expires_at is not None and self._clock() >= entry.expires_at:
            self._discard(full)
            return None
        self._entries.move_to_end(full)
        return entry.value

    def _extend(self, full: str, ttl_s: int | None) -> bool:
        """Whether ``full`` is present; its expiry set to ``ttl_s`` from now (as Redis' EXPIRE)."""
        value = self._lookup(full)
        if value is None:
            return False
        if ttl_s is not None:
            self._entries[full] = _Entry(value, self._clock() + ttl_s)
        return True

    def _store(self, full: str, value: bytes, ttl_s: int | None) -> bool:
        # Drop any older value first: if the new one is refused, a later get must miss rather
        # than return what the caller meant to replace.
        self._discard(full)
        size = len(value)
        if size > self.max_bytes:
            return False
        while self._bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= len(old.value)
            self._evictions += 1
        expires_at = None if ttl_s is None else self._clock() + ttl_s
        self._entries[full] = _Entry(value, expires_at)
        self._bytes += size
        return True

    def _discard(self, full: str) -> None:
        entry = self._entries.pop(full, None)
        if entry is not None:
            self._bytes -= len(entry.value)


class _Failed:
    """Marks a Redis call that did not happen or did not succeed (None is a valid GET reply)."""


_FAILED = _Failed()


class RedisStore:
    """Redis, with an in-process fallback and a back-off while Redis is unreachable.

    The fallback holds exactly the keys whose latest write on this instance did not reach
    Redis, and it is read first: a run record rewritten during an outage must not be shadowed
    by the older copy Redis still holds once it is back. A successful write to Redis drops the
    key from the fallback, so it never shadows newer data from this instance.
    """

    name: str = "redis"

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        fallback_bytes: int = DEFAULT_FALLBACK_BYTES,
        retry_after_s: float = 1.0,
        max_retry_after_s: float = 10.0,
        max_connections: int = 64,
        on_event: EventHook | None = None,
        durable: bool | None = None,
    ) -> None:
        if retry_after_s <= 0 or max_retry_after_s < retry_after_s:
            raise ValueError("need 0 < retry_after_s <= max_retry_after_s")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        # redis-py's own retry is turned down to one immediate retry on a connection error:
        # that is what replaces a pooled socket the server closed (a restart), which redis-py
        # does not notice before sending. Timeouts are not retried, so a hung server costs one
        # socket_timeout, and everything longer-lived is this class's back-off.
        # RESP2 because the four commands used need nothing newer and every Redis-compatible
        # server speaks it; a URL's ?protocol=3 still wins.
        self._client: aredis.Redis = aredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=False,
            protocol=2,
            max_connections=max_connections,
        )
        # The pool raises instead of waiting when all its connections are busy, which would
        # read as an outage under load. Waiting here instead, and deciding whether to try
        # Redis only once a slot is free, also keeps a queue of callers from each paying a
        # timeout after the outage has already been noticed.
        self._slots = asyncio.Semaphore(max_connections)
        self._fallback = MemoryStore(fallback_bytes)
        self._on_event = on_event
        self._retry_after_s = retry_after_s
        self._max_retry_after_s = max_retry_after_s
        self._available = True  # optimistic: the first call finds out
        self._backoff_s = retry_after_s
        self._next_attempt_at = 0.0
        self._probing = False
        self._closed = False
        self._errors = 0
        self._reconnects = 0
        # None: ask the server (``check_durability``); a deployment may also say (NSX_REDIS_DURABLE).
        self._declared_durable = durable
        self._durable = bool(durable)
        self.persistence = "declared" if durable is not None else "unknown"
        self._checking: asyncio.Task[bool] | None = None
        # Write-back of the fallback after an outage: the keys of the batch in flight, and a lock
        # held while it is, so a new write of one of them waits and lands after it, never before.
        self._writing_back: asyncio.Task[int] | None = None
        self._in_flight: frozenset[str] = frozenset()
        self._flight = asyncio.Lock()
        self._putting: Counter[str] = Counter()
        self.written_back = 0

    @property
    def available(self) -> bool:
        return self._available

    @property
    def durable(self) -> bool:
        return self._durable and self._available

    def prefix(self, kind: str) -> str:
        return ""

    async def check_durability(self) -> bool:
        """Read the server's persistence settings: records are durable only with append-only on.
        Logged at WARNING when they are not, since every record then answers ``persisted: false``."""
        if self._declared_durable is not None:
            self._durable = self._declared_durable
            return self._durable
        reply = await self._attempt(lambda: self._client.config_get("appendonly"))
        if isinstance(reply, dict) and reply:
            # bytes keys (decode_responses=False), but a URL may ask for str
            values: list[object] = list(reply.values())
            on = any(v in (b"yes", "yes") for v in values)
            self.persistence = "append-only" if on else "no append-only"
            self._durable = on
            if not on:
                logger.warning("redis keeps no append-only file (appendonly no): a Redis restart can lose run "
                               "records and uploads, so records say persisted: false; turn appendonly on, or set "
                               "NSX_REDIS_DURABLE=true if this server is made durable another way")
        elif reply is _FAILED and not self._available:
            self.persistence = "unknown (unreachable)"
        else:
            self.persistence = "unknown (CONFIG refused)"
            self._durable = False
            logger.warning("redis refused CONFIG GET appendonly: cannot tell whether records survive a restart, so "
                           "they say persisted: false; set NSX_REDIS_DURABLE=true if the server is durable")
        return self._durable

    async def get(self, kind: str, key: str) -> bytes | None:
        full = full_key(kind, key)
        value = self._fallback._lookup(full)
        if value is None:
            reply = await self._attempt(lambda: self._client.get(full))
            if isinstance(reply, bytes):
                value = reply
        _emit(self._on_event, "miss" if value is None else "hit")
        return value

    async def put(self, kind: str, key: str, value: bytes, ttl_s: int | None = None) -> bool:
        full = full_key(kind, key)
        data = _as_bytes(value)
        _check_ttl(ttl_s)
        async with self._writing((full,)):
            reply = await self._attempt(lambda: self._client.set(full, data, ex=ttl_s))
        if reply is not _FAILED and reply:
            self._fallback._discard(full)
            return True
        self._fallback._store(full, data, ttl_s)
        return False

    async def exists(self, kind: str, key: str) -> bool:
        full = full_key(kind, key)
        if self._fallback._lookup(full) is not None:
            return True
        reply = await self._attempt(lambda: self._client.exists(full))
        return isinstance(reply, int) and reply > 0

    async def put_many(self, items: Sequence[Item]) -> bool:
        if not items:
            return True
        rows = []
        for it in items:
            _check_ttl(it.ttl_s)
            rows.append((full_key(it.kind, it.key), _as_bytes(it.value), it.ttl_s))

        async def write() -> list[object]:
            pipe = self._client.pipeline(transaction=False)
            for full, data, ttl in rows:
                pipe.set(full, data, ex=ttl)
            replies: list[object] = await pipe.execute()
            return replies

        async with self._writing([r[0] for r in rows]):
            replies = await self._attempt(write)
        ok = not isinstance(replies, _Failed)
        for i, (full, data, ttl) in enumerate(rows):
            if ok and isinstance(replies, list) and replies[i]:
                self._fallback._discard(full)
            else:
                ok = False
                self._fallback._store(full, data, ttl)
        return ok

    async def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        fulls = [full_key(kind, k) for k in keys]
        out: list[bytes | None] = [self._fallback._lookup(f) for f in fulls]
        remote = [f for f, v in zip(fulls, out) if v is None]
        if remote:
            reply = await self._attempt(lambda: self._client.mget(remote))
            if isinstance(reply, list):
                found = dict(zip(remote, reply))
                out = [v if v is not None else (r if isinstance(r := found.get(f), bytes) else None)
                       for f, v in zip(fulls, out)]
        for v in out:
            _emit(self._on_event, "miss" if v is None else "hit")
        return out

    async def touch(self, kind: str, keys: Sequence[str], ttl_s: int | None = None) -> list[bool]:
        _check_ttl(ttl_s)
        fulls = [full_key(kind, k) for k in keys]
        local = [self._fallback._extend(f, ttl_s) for f in fulls]
        remote = [f for f, here in zip(fulls, local) if not here]
        if not remote:
            return local

        async def check() -> list[object]:
            pipe = self._client.pipeline(transaction=False)
            for full in remote:
                if ttl_s is None:
                    pipe.exists(full)
                else:
                    pipe.expire(full, ttl_s)
            replies: list[object] = await pipe.execute()
            return replies

        replies = await self._attempt(check)
        answers = dict(zip(remote, replies)) if isinstance(replies, list) else {}
        return [here or bool(answers.get(f)) for f, here in zip(fulls, local)]

    async def ping(self) -> bool:
        """Ask Redis now, ignoring the back-off: this is the explicit health check."""
        reply = await self._attempt(lambda: self._client.ping(), force=True)
        return reply is not _FAILED and bool(reply)

    async def close(self) -> None:
        self._closed = True
        for task in (self._writing_back, self._checking):
            if task is not None and not task.done():
                task.cancel()
        try:
            await self._client.aclose()
        except Exception:  # closing a pool to a dead server must not fail shutdown
            logger.debug("closing the redis client failed", exc_info=True)
        await self._fallback.close()

    def stats(self) -> dict[str, int | float | bool | str]:
        retry_in_s = 0.0 if self._available else max(0.0, self._next_attempt_at - time.monotonic())
        fallback = self._fallback.stats()
        return {
            "backend": self.name,
            "available": self._available,
            "errors": self._errors,
            "reconnects": self._reconnects,
            "retry_in_s": round(retry_in_s, 3),
            "fallback_entries": fallback["entries"],
            "fallback_bytes": fallback["bytes"],
            "written_back": self.written_back,
        }

    async def _attempt(self, op: Callable[[], Awaitable[T]], *, force: bool = False) -> T | _Failed:
        """Run one Redis call if the back-off allows it; _FAILED if skipped or failed."""
        if self._closed:
            return _FAILED
        async with self._slots:
            if self._available:
                probe = owns_gate = False
            elif force:
                probe, owns_gate = True, False
            elif self._probing or time.monotonic() < self._next_attempt_at:
                return _FAILED
            else:
                # One caller probes; the others keep using the fallback until it answers.
                probe = owns_gate = True
                self._probing = True
            try:
                result = await op()
            except Exception as exc:  # noqa: BLE001 - see below
                # Every failure, whatever redis-py, the socket layer or asyncio raised: the
                # store's promise is to degrade, never to raise. CancelledError is not an
                # Exception and still propagates.
                self._record_failure(exc, probe)
                return _FAILED
            finally:
                if owns_gate:
                    self._probing = False
            if probe:
                self._record_recovery()
            return result

    def _record_failure(self, exc: Exception, probe: bool) -> None:
        self._errors += 1
        _emit(self._on_event, "error")
        now = time.monotonic()
        if self._available:
            self._available = False
            self._backoff_s = self._retry_after_s
            self._next_attempt_at = now + self._backoff_s
            logger.warning(
                "redis store unavailable, using the in-process fallback; retrying in %.1fs: %s: %s",
                self._backoff_s,
                type(exc).__name__,
                exc,
            )
        elif probe:
            self._backoff_s = min(self._backoff_s * 2, self._max_retry_after_s)
            self._next_attempt_at = now + self._backoff_s
            logger.warning("redis store still unavailable; retrying in %.1fs: %s", self._backoff_s, exc)
        # else: a call that began before the outage was noticed; the schedule is already set.

    def _record_recovery(self) -> None:
        if self._available:
            return
        self._available = True
        self._backoff_s = self._retry_after_s
        self._reconnects += 1
        _emit(self._on_event, "reconnect")
        pending = len(self._fallback._entries)
        logger.warning("redis store reachable again after %d errors; writing back the %d values kept in this "
                       "process's fallback meanwhile", self._errors, pending)
        # A restarted server may keep its data differently than the one that went away. (Called
        # from ``_attempt``, so always on the running loop.)
        loop = asyncio.get_running_loop()
        self._checking = loop.create_task(self.check_durability())
        if pending and (self._writing_back is None or self._writing_back.done()):
            self._writing_back = loop.create_task(self.write_back())

    @contextlib.asynccontextmanager
    async def _writing(self, fulls: Sequence[str]) -> AsyncIterator[None]:
        """Around a caller's write: after any write-back batch holding one of these keys (so the
        caller's value lands last), and marked so that no batch starts with them meanwhile (the
        caller drops them from the fallback on success, or stores its newer value there)."""
        if self._in_flight and not self._in_flight.isdisjoint(fulls):
            async with self._flight:
                pass
        # Only a key the fallback holds can be in a batch; with Redis healthy the fallback is empty,
        # so the common write marks nothing.
        held = [f for f in fulls if f in self._fallback._entries] if self._fallback._entries else []
        self._putting.update(held)
        try:
            yield
        finally:
            if held:
                self._putting.subtract(held)
                for f in held:
                    if self._putting[f] <= 0:
                        del self._putting[f]

    async def write_back(self, batch: int = 64, batch_bytes: int = 4 * 1024 * 1024) -> int:
        """Copy what the fallback holds to Redis, in pipelined batches, and drop each value from the
        fallback once Redis has it: uploads and records made during an outage become durable and
        visible to other processes. Stops at the first failure (the next recovery starts again).
        Returns how many values were written.

        Ordering: a value still in the fallback is newer than Redis' copy (see the class doc); a
        write of a key in the batch in flight waits for that batch, and a key being written by a
        caller is left out of the batch (``_writing``), so a caller's value always lands last."""
        written = 0
        fb = self._fallback
        while self._available and not self._closed:
            now = fb._clock()
            rows: list[tuple[str, _Entry, int | None]] = []
            size = 0
            for full, entry in list(fb._entries.items()):
                if full in self._putting:
                    continue
                if entry.expires_at is not None:
                    left = entry.expires_at - now
                    if left <= 0.001:
                        continue
                    ttl: int | None = max(1, int(left + 0.999))
                else:
                    ttl = None
                rows.append((full, entry, ttl))
                size += len(entry.value)
                if len(rows) >= batch or size >= batch_bytes:
                    break
            if not rows:
                break

            async def write(rows: list[tuple[str, _Entry, int | None]] = rows) -> list[object]:
                pipe = self._client.pipeline(transaction=False)
                for full, entry, ttl in rows:
                    pipe.set(full, entry.value, ex=ttl)
                replies: list[object] = await pipe.execute()
                return replies

            async with self._flight:
                self._in_flight = frozenset(r[0] for r in rows)
                try:
                    replies = await self._attempt(write)
                finally:
                    self._in_flight = frozenset()
            if not isinstance(replies, list):
                break
            for (full, entry, _), ok in zip(rows, replies):
                # Only the value that was sent: one rewritten meanwhile stays for the next batch.
                if ok and fb._entries.get(full) is entry:
                    fb._discard(full)
                    written += 1
            if not all(replies):
                break
        self.written_back += written
        if written:
            logger.warning("redis store: wrote back %d values from the in-process fallback; %d left",
                           written, len(fb._entries))
        return written


def open_store(redis_url: str | None, memory_bytes: int, *, on_event: EventHook | None = None,
               durable: bool | None = None) -> Store:
    """The store for these settings: Redis when a URL is given, else memory.

    ``memory_bytes`` bounds what this process keeps in memory either way: the whole store, or
    Redis's outage fallback. A malformed URL raises here, at start-up, not on the first call.
    """
    if redis_url:
        return RedisStore(redis_url, fallback_bytes=memory_bytes, on_event=on_event, durable=durable)
    return MemoryStore(memory_bytes, on_event=on_event)


class ScopedStore:
    """One tenant's view of a store: its keys under its own name, so what it writes another tenant's
    view cannot read (or tell apart from a key never written). ``shared`` kinds stay unprefixed: the
    step cache and its artifacts, when tenants share them (``NSX_SHARE_CACHE``). The default tenant
    ("") sees the unprefixed keys, as a deployment without API keys always has."""

    def __init__(self, base: Store, tenant: str, shared: frozenset[str] = frozenset()) -> None:
        if "/" in tenant:
            raise ValueError(f"tenant names hold no '/': {tenant!r}")
        self.base = base
        self.tenant = tenant
        self.shared = shared
        self.name = base.name

    def prefix(self, kind: str) -> str:
        return "" if not self.tenant or kind in self.shared else f"t/{self.tenant}/"

    def _k(self, kind: str, key: str) -> str:
        return self.prefix(kind) + key

    @property
    def available(self) -> bool:
        return self.base.available

    @property
    def durable(self) -> bool:
        return self.base.durable

    async def get(self, kind: str, key: str) -> bytes | None:
        return await self.base.get(kind, self._k(kind, key))

    async def put(self, kind: str, key: str, value: bytes, ttl_s: int | None = None) -> bool:
        return await self.base.put(kind, self._k(kind, key), value, ttl_s)

    async def exists(self, kind: str, key: str) -> bool:
        return await self.base.exists(kind, self._k(kind, key))

    async def put_many(self, items: Sequence[Item]) -> bool:
        return await self.base.put_many([it._replace(key=self._k(it.kind, it.key)) for it in items])

    async def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        return await self.base.get_many(kind, [self._k(kind, k) for k in keys])

    async def touch(self, kind: str, keys: Sequence[str], ttl_s: int | None = None) -> list[bool]:
        return await self.base.touch(kind, [self._k(kind, k) for k in keys], ttl_s)

    async def ping(self) -> bool:
        return await self.base.ping()

    async def close(self) -> None:
        return None  # the base store belongs to the service, which closes it

    def stats(self) -> dict[str, int | float | bool | str]:
        return self.base.stats()


def scoped(base: Store, tenant: str, shared: frozenset[str] = frozenset()) -> Store:
    """``base`` as ``tenant`` sees it: itself for the default tenant with nothing to prefix."""
    return base if not tenant else ScopedStore(base, tenant, shared)
