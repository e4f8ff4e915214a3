"""Bounds on a program, checked while it is parsed and compiled."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Bounds that keep any input — including a hostile one — to a clean error instead of a hang."""

    max_bytes: int = 64 * 1024
    max_statements: int = 1000
    max_depth: int = 64
    max_list: int = 1000
    max_number_digits: int = 64


DEFAULT_LIMITS = Limits()
