"""Placeholder: filled in by the photo pack's work."""

from __future__ import annotations

from ..base import Module


def modules() -> list[Module]:
    return []
