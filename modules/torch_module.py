"""Base for modules backed by a torch network: weights from safetensors (never pickle), placed on
the pool's device once, eval mode, half precision on CUDA where the module allows it."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .base import Module, files_digest


class TorchModule(Module):
    batchable = True
    max_batch_size = 16
    supports_half = False
    code_version = "1"
    weights: Path | None = None

    def __init__(self) -> None:
        self.net: torch.nn.Module | None = None
        self.dtype = torch.float32
        self._version: str | None = None
        self._numel: int | None = None

    @abstractmethod
    def build(self) -> torch.nn.Module:
        """The network, freshly initialised; ``load`` fills in the weights."""

    @abstractmethod
    def run(self, net: torch.nn.Module, batch: Sequence[dict[str, Any]]) -> list[Any]:
        """One forward over the whole batch (called under inference mode, on the module's device)."""

    @property
    def version(self) -> str:
        """The code version plus the weights' hash: new weights never serve stale cached results."""
        if self._version is None:
            digest = files_digest([self.weights]) if self.weights is not None else "untrained"
            self._version = f"{self.signature.version}.{self.code_version}+{digest}"
        return self._version

    def load(self, device: str) -> None:
        net = self.build()
        if self.weights is not None:
            net.load_state_dict(load_file(str(self.weights)))
        net.eval()
        if device.startswith("cuda") and self.supports_half:
            net.half()
            self.dtype = torch.float16
        self.net = net.to(device)
        self.device = device

    def parameter_count(self) -> int:
        net = self.net if self.net is not None else self.build()
        return sum(p.numel() for p in net.parameters())

    def memory_bytes(self) -> int:
        if self.net is None:
            return 0
        return sum(t.numel() * t.element_size() for t in (*self.net.parameters(), *self.net.buffers()))

    def expected_bytes(self) -> int:
        # A fresh network has the loaded one's shapes; its float32 tensors become half on CUDA.
        if self._numel is None:
            net = self.build()
            self._numel = sum(t.numel() for t in (*net.parameters(), *net.buffers()))
        half = self.device.startswith("cuda") and self.supports_half
        return self._numel * (2 if half else 4)

    def unload(self) -> None:
        on_cuda = self.device.startswith("cuda")
        self.net = None
        if on_cuda:
            torch.cuda.empty_cache()

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        if self.net is None:
            raise RuntimeError(f"{self.name} is not loaded")
        with torch.inference_mode():
            return self.run(self.net, batch)
