"""The fault pack: modules that misbehave on purpose, so that what the service does about a module
that hangs, spins, raises, answers the wrong type or allocates is tested from outside, in a served
process, as a user would meet it. Never enabled unless named (``NSX_PACKS=core,fault``): it is for
tests and drills, not for programs.

- ``HANG(seconds)``: sleeps (a symbolic module, so it must not hold the event loop).
- ``SPIN(seconds)``: busy in Python bytecode, holding the GIL between switches.
- ``RAISE(message)``: raises a plain exception, as a bug in a module would.
- ``WRONG()``: declares a Number and returns text.
- ``ALLOC(mb)``: allocates ``mb`` megabytes, touches them, and lets them go.
- ``SLOW(seconds)``: a non-symbolic module that sleeps on its device's worker, as a slow model would.

A thread cannot be stopped from outside, so the sleeping ones wake every 50 ms and stop at their
``seconds`` (at most an hour): a step timeout ends the step at once, and the thread follows later.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from program_dsl import param, signature

from ..base import Module, ModuleError, Pack

MAX_SECONDS = 3600.0
MAX_MB = 4096


def _seconds(args: dict[str, Any], name: str) -> float:
    s = args.get("seconds")
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0 <= s <= MAX_SECONDS:
        raise ModuleError(f"{name}: seconds must be a number from 0 to {MAX_SECONDS:g}, got {s!r}")
    return float(s)


def _sleep(seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


class _Fault(Module):
    cheap = True  # symbolic: no model, no device

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        out: list[Any] = []
        for args in batch:
            try:
                out.append(self.one(args))
            except ModuleError as e:
                out.append(e)
        return out

    def one(self, args: dict[str, Any]) -> Any:
        raise NotImplementedError


class Hang(_Fault):
    signature = signature("HANG", "Number", param("seconds", "Number", 60), pack="fault",
                          doc="Sleep for seconds (at most an hour), then answer them.")

    def one(self, args: dict[str, Any]) -> Any:
        s = _seconds(args, "HANG")
        _sleep(s)
        return s


class Spin(_Fault):
    signature = signature("SPIN", "Number", param("seconds", "Number", 1), pack="fault",
                          doc="Keep a core busy in Python for seconds, then answer the loops run.")

    def one(self, args: dict[str, Any]) -> Any:
        end = time.monotonic() + _seconds(args, "SPIN")
        n = 0
        while time.monotonic() < end:
            n += 1
        return n


class Raise(_Fault):
    signature = signature("RAISE", "Number", param("message", "Text", "injected fault"), pack="fault",
                          doc="Raise a RuntimeError, as a module with a bug would.")

    def one(self, args: dict[str, Any]) -> Any:
        raise RuntimeError(str(args.get("message")))


class Wrong(_Fault):
    signature = signature("WRONG", "Number", pack="fault", doc="Declare a Number and answer text.")

    def one(self, args: dict[str, Any]) -> Any:
        return "not a number"


class Alloc(_Fault):
    signature = signature("ALLOC", "Number", param("mb", "Number", 100), pack="fault",
                          doc="Allocate mb megabytes (at most 4096), touch every page, and free them.")

    def one(self, args: dict[str, Any]) -> Any:
        mb = args.get("mb")
        if not isinstance(mb, (int, float)) or isinstance(mb, bool) or not 0 <= mb <= MAX_MB:
            raise ModuleError(f"ALLOC: mb must be a number from 0 to {MAX_MB}, got {mb!r}")
        block = bytearray(int(mb * 1024 * 1024))  # zeroed: every page written
        return len(block) // (1024 * 1024)


class Slow(_Fault):
    signature = signature("SLOW", "Number", param("seconds", "Number", 1), pack="fault",
                          doc="Sleep on the device's worker for seconds, as a slow model would.")
    cheap = False

    def one(self, args: dict[str, Any]) -> Any:
        s = _seconds(args, "SLOW")
        _sleep(s)
        return s


def pack() -> Pack:
    return Pack("fault", [Hang(), Spin(), Raise(), Wrong(), Alloc(), Slow()], opt_in=True,
                doc="Modules that misbehave on purpose, for tests and drills; enabled only when NSX_PACKS names it.")
