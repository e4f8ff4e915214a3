"""The shapes world pack (being built): until its modules land it offers none."""

from __future__ import annotations

from ..base import Pack


def pack() -> Pack:
    return Pack("shapes", [], doc="The shapes world: trained detector and attribute classifier.")
