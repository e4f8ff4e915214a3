"""Commands a pack adds to the ``nsx`` CLI, found through the entry-point group ``nsx.commands``.

An entry point names a function ``add_commands(commands: Commands) -> None``. It adds sub-commands
with ``commands.subparsers`` (``nsx NAME …``) or ``commands.bench`` (``nsx bench NAME …``), and
runs programs, when it needs to, with ``commands.open_runner``: the service's own run path (the
compiler, pool, batching, cache and modules) in this process, so a pack's tools never import the
service and still measure what the service does.

Building the parsers must stay cheap (no torch, no models): import heavy things inside the commands.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

from .base import Pack
from .values import ImageValue

GROUP = "nsx.commands"
log = logging.getLogger("nsx.commands")


class RunView(Protocol):
    """What a tool reads of a run's record."""

    @property
    def status(self) -> str: ...

    @property
    def result(self) -> dict[str, Any] | None: ...

    @property
    def error(self) -> str | None: ...


class Runner(Protocol):
    def run(self, program: str, images: Mapping[str, ImageValue], *, cache: bool = True) -> Awaitable[RunView]: ...


class OpenRunner(Protocol):
    def __call__(self, packs: Sequence[Pack], *, device: str = "auto", store_mb: int = 256
                 ) -> AbstractAsyncContextManager[Runner]: ...


@dataclass(frozen=True)
class Commands:
    subparsers: Any  # argparse's _SubParsersAction of ``nsx``
    bench: Any  # … of ``nsx bench``
    open_runner: OpenRunner


AddCommands = Callable[[Commands], None]


def add_pack_commands(commands: Commands) -> None:
    """Let every installed pack that declares commands add them. One that fails to load is
    skipped with a warning: the rest of the CLI must keep working."""
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            add: AddCommands = ep.load()
            add(commands)
        except Exception as e:  # noqa: BLE001 - a pack's own bug, reported by name
            log.warning("the %s pack's commands are unavailable: %s: %s", ep.name, type(e).__name__, e)
