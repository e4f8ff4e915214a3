"""Which device models go on: ``NSX_DEVICE=auto`` takes CUDA when there is one; ``NSX_MODULE_DEVICES``
puts named modules on named devices, and ``NSX_DEVICE_MEMORY_MB`` gives a device a memory budget.

Everything here that can be wrong in a setting is said at start-up, naming the item at fault: a
placement that only fails when the first request reaches a missing GPU would fail in production."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterable, Mapping

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_MODULE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*")


class PlacementError(ValueError):
    """A device setting names a device that is malformed or not present, or a module no pack offers."""


def cuda_count() -> int:
    """CUDA devices visible to this process (0 without torch or without CUDA)."""
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def resolve_device(requested: str = "auto") -> str:
    requested = (requested or "auto").lower()
    if requested not in ("auto", "cpu", "cuda") and not requested.startswith("cuda:"):
        raise ValueError(f"NSX_DEVICE must be auto, cpu, cuda or cuda:N, not {requested!r}")
    if requested == "cpu":
        return "cpu"
    has_cuda = cuda_count() > 0
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise ValueError(f"NSX_DEVICE={requested} but no CUDA device is available")
    return requested


def canonical(device: str) -> str:
    """One name per device: ``cuda`` is ``cuda:0`` (torch's current device, which nsx never changes),
    so a module placed on either shares its worker thread and memory budget with the other."""
    return "cuda:0" if device == "cuda" else device


def check_present(device: str, setting: str) -> str:
    """``device`` if it is here; PlacementError naming ``setting`` and the device otherwise."""
    if not _DEVICE.fullmatch(device):
        raise PlacementError(f"{setting}: {device!r} is not a device; expected cpu, cuda or cuda:N")
    if device == "cpu":
        return device
    count = cuda_count()
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        raise PlacementError(f"{setting}: {device} is not present: no CUDA device is visible here")
    if index >= count:
        raise PlacementError(f"{setting}: {device} is not present: the visible CUDA devices are "
                             f"{', '.join(f'cuda:{i}' for i in range(count))}")
    return device


def _pairs(text: str | None, setting: str, example: str) -> Iterable[tuple[str, str]]:
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{setting}: {item.strip()!r} is not KEY=VALUE (e.g. {example})")
        yield key.strip(), value.strip().lower()


def parse_module_devices(text: str | None) -> dict[str, str]:
    """``LOC=cuda:0,hf.VQA=cuda:1`` → module name (plain or pack-qualified) → device. Only the form is
    checked here; whether the devices are present is the pool's to say (``check_present``)."""
    setting = "NSX_MODULE_DEVICES"
    out: dict[str, str] = {}
    for name, device in _pairs(text, setting, "LOC=cuda:0,hf.VQA=cuda:1"):
        if not _MODULE.fullmatch(name):
            raise ValueError(f"{setting}: {name!r} is not a module name (LOC, or pack-qualified: hf.LOC)")
        if not _DEVICE.fullmatch(device):
            raise ValueError(f"{setting}: {name}={device} names no device; expected cpu, cuda or cuda:N")
        if name in out and out[name] != device:
            raise ValueError(f"{setting}: {name} is placed twice ({out[name]} and {device})")
        out[name] = device
    return out


def parse_device_memory(text: str | None) -> dict[str, int]:
    """``cuda:0=10000,cpu=4000`` → canonical device → budget in bytes (the values are MB, 2**20 bytes)."""
    setting = "NSX_DEVICE_MEMORY_MB"
    out: dict[str, int] = {}
    for device, mb in _pairs(text, setting, "cuda:0=10000"):
        device = device.lower()
        if not _DEVICE.fullmatch(device):
            raise ValueError(f"{setting}: {device!r} is not a device; expected cpu, cuda or cuda:N")
        try:
            value = float(mb)
        except ValueError:
            raise ValueError(f"{setting}: {device}={mb} is not a number of MB") from None
        if not value > 0:
            raise ValueError(f"{setting}: {device}={mb} must be more than 0 MB")
        out[canonical(device)] = int(value * 2**20)
    return out


def spread(sizes: Mapping[str, int], devices: Iterable[str],
           already: Mapping[str, int] | None = None) -> dict[str, str]:
    """Greedy placement by size: the largest unit first, each on the device holding the fewest bytes so
    far (``already``: bytes placed there by name). Not optimal, but within 4/3 of it, and it keeps
    the biggest models apart, which is what decides whether they fit."""
    load = dict.fromkeys(devices, 0)
    for d, b in (already or {}).items():
        if d in load:
            load[d] += b
    out: dict[str, str] = {}
    for unit, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        device = min(load, key=lambda d: (load[d], list(load).index(d)))
        out[unit] = device
        load[device] += size
    return out


def configure_torch(threads: int | None) -> None:
    """Give the calling thread's torch ops ``threads`` CPU threads (None: torch's default). Called on
    each device's worker thread as it starts: torch keeps the count per thread once a thread has used it."""
    if threads is None or importlib.util.find_spec("torch") is None:
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def configure_switch_interval(ms: float | None) -> None:
    """How long a thread waiting for the GIL waits before it asks the holder to let go (None: Python's
    5 ms). A worker thread re-takes the GIL after every torch call; beside a busy event loop each
    re-take waits this long, so a short interval is what keeps a batch's many small calls quick."""
    if ms is not None:
        sys.setswitchinterval(ms / 1000)
