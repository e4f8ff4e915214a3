"""A real convolutional network with seeded random weights, for exercising the pool — batching,
devices, half precision — where no trained pack is wanted (tests, benchmarks). Not a pack."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from program_dsl import param, signature

from .base import ModuleError
from .torch_module import TorchModule
from .values import ImageValue


class ConvNet(nn.Module):
    """Six conv blocks and a linear head: about 0.3 M parameters, a few ms per 64×64 image on a CPU core."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = [3, width, width, 2 * width, 2 * width, 4 * width, 4 * width]
        for i, (a, b) in enumerate(itertools.pairwise(chans)):
            layers += [nn.Conv2d(a, b, 3, stride=2 if i % 2 else 1, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(x).mean(dim=(2, 3)))
        return logits


class ConvProbe(TorchModule):
    """PROBE(image) → the index of the network's highest logit on the image resized to 64×64."""

    signature = signature("PROBE", "Number", param("image", "Image"), pack="demo",
                          doc="Class index from a randomly initialised conv net (for tests and benchmarks).")
    supports_half = True
    max_batch_size = 64
    side = 64

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return ConvNet()

    def run(self, net: nn.Module, batch: Sequence[dict[str, Any]]) -> list[Any]:
        # Per-image work is only what must be per image (decode, resize); the rest is a few calls for
        # the whole batch, since each torch call releases the GIL and must wait to take it back.
        arrays: list[np.ndarray[Any, np.dtype[np.uint8]]] = []
        out: list[Any] = [None] * len(batch)
        good: list[int] = []
        for i, args in enumerate(batch):
            image = args.get("image")
            if not isinstance(image, ImageValue) or min(image.width, image.height) < 2:
                out[i] = ModuleError("PROBE needs an image of at least 2×2 pixels")
                continue
            im = image.image
            if im.size != (self.side, self.side):
                im = im.resize((self.side, self.side))
            arrays.append(np.asarray(im))
            good.append(i)
        if arrays:
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float().div_(255)
            best = net(x.to(self.device, self.dtype)).float().cpu().argmax(1).tolist()
            for i, b in zip(good, best):
                out[i] = int(b)
        return out

    def warmup(self) -> None:
        assert self.net is not None
        with torch.inference_mode():
            self.net(torch.zeros(1, 3, self.side, self.side, device=self.device, dtype=self.dtype))
