"""Which device models go on: ``NSX_DEVICE=auto`` takes CUDA when there is one."""

from __future__ import annotations

import importlib.util


def resolve_device(requested: str = "auto") -> str:
    requested = (requested or "auto").lower()
    if requested not in ("auto", "cpu", "cuda") and not requested.startswith("cuda:"):
        raise ValueError(f"NSX_DEVICE must be auto, cpu, cuda or cuda:N, not {requested!r}")
    if requested == "cpu":
        return "cpu"
    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise ValueError(f"NSX_DEVICE={requested} but no CUDA device is available")
    return requested
