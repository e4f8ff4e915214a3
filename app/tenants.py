"""Who a request acts for. With API keys configured every key belongs to a tenant, and what a tenant
makes (runs, uploads, artifacts, step outputs) is kept under its own name in the store, so another
tenant's request cannot find it: it gets the same 404 as for something that never existed.

Keys come from ``NSX_API_KEYS`` (``k1,k2``: each plain key its own tenant, named by a digest of the
key; ``alice:k1,bob:k2``: named tenants, a name may have several keys) and ``NSX_API_KEYS_FILE`` (one
``name sha256:<hex>`` per line: only the key's digest is on disk). A request's key is hashed and
compared with every configured digest in constant time, so neither the comparison nor the number
of keys tried says how close a guess was.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_TENANT", "KeyTable", "KeysError", "digest", "file_line", "parse_keys"]

# Without keys there is one tenant; its store keys are the unprefixed ones nsx has always written.
DEFAULT_TENANT = ""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASHED = re.compile(r"^sha256:([0-9a-f]{64})$")


class KeysError(ValueError):
    """The configured keys cannot be read; the message names the item and what to fix."""


def digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


@dataclass(frozen=True)
class KeyTable:
    """Key digests and the tenant each belongs to. Empty: no keys, every request is the default tenant."""

    entries: tuple[tuple[bytes, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(name for _, name in self.entries)

    def tenant_of(self, key: bytes) -> str | None:
        """The tenant ``key`` (the bytes a request sent) belongs to, or None. Every digest is compared,
        whichever matches."""
        if not key:
            return None
        given = digest(key)
        found: str | None = None
        for known, name in self.entries:
            if secrets.compare_digest(given, known):
                found = name
        return found


def _plain_name(key: str) -> str:
    # Stable across reorderings of the list, so a key's data never moves to another key, and says
    # nothing usable about the key.
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def _check_name(name: str, where: str) -> str:
    if not _NAME.match(name):
        raise KeysError(f"{where}: tenant name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
                        "starting with a letter or digit")
    return name


def _check_key(key: str, where: str) -> str:
    if not key:
        raise KeysError(f"{where}: the key is empty")
    if any(c.isspace() for c in key):
        raise KeysError(f"{where}: a key may not contain spaces")
    return key


def parse_keys(spec: str | None, file: Path | None = None) -> KeyTable:
    """The key table of ``NSX_API_KEYS`` (``spec``) and ``NSX_API_KEYS_FILE``; raises KeysError for an
    empty or malformed list, so a typo stops start-up instead of turning authentication off."""
    rows: list[tuple[bytes, str]] = []
    if spec:  # unset or empty: no keys from here (an empty variable is how compose files leave one unset)
        items = [item.strip() for item in spec.split(",")]
        if not any(items):
            raise KeysError(f"NSX_API_KEYS is set but holds no key ({spec!r}); give keys, e.g. k1,k2 or "
                            "alice:k1,bob:k2, or unset it to run without authentication")
        for n, item in enumerate(items, 1):
            where = f"NSX_API_KEYS item {n}"
            if not item:
                raise KeysError(f"{where} is empty (two commas in a row, or one at an end)")
            name, sep, key = item.partition(":")
            if sep:
                rows.append((digest(_check_key(key, where).encode("utf-8")), _check_name(name, where)))
            else:
                rows.append((digest(_check_key(item, where).encode("utf-8")), _plain_name(item)))
    if file is not None:
        rows += _read_file(file)
    seen: dict[bytes, str] = {}
    for d, name in rows:
        if d in seen and seen[d] != name:
            raise KeysError(f"one key is given to two tenants, {seen[d]!r} and {name!r}")
        seen[d] = name
    return KeyTable(tuple(seen.items()))


def _read_file(path: Path) -> list[tuple[bytes, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KeysError(f"NSX_API_KEYS_FILE {path}: cannot be read: {e}") from None
    rows: list[tuple[bytes, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        parts = line.split()
        if len(parts) != 2:
            raise KeysError(f"{where}: expected 'NAME sha256:<64 hex digits>' (nsx hash-key prints one)")
        m = _HASHED.match(parts[1])
        if m is None:
            raise KeysError(f"{where}: the key must be given as sha256:<64 lower-case hex digits>, not in clear "
                            "(nsx hash-key prints the line)")
        rows.append((bytes.fromhex(m.group(1)), _check_name(parts[0], where)))
    if not rows:
        raise KeysError(f"NSX_API_KEYS_FILE {path} holds no key")
    return rows


def file_line(name: str, key: str) -> str:
    """The keys file's line for ``key`` of tenant ``name``."""
    return f"{_check_name(name, 'the name')} sha256:{digest(_check_key(key, 'the key').encode('utf-8')).hex()}"
