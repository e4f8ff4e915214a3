"""What keeps a batch's work from fighting the event loop: torch threads and the GIL switch interval set
from the settings, PROBE's batch-wide preprocessing (the same answers as one image at a time)."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from app.settings import Settings
from modules.base import Module, Pack
from modules.demo import ConvProbe
from modules.device import configure_switch_interval
from modules.pool import Pool, PoolConfig
from modules.values import ImageValue
from program_dsl import param, signature


class Threads(Module):
    """Batchable: answers with the torch thread count its forward ran with, and the thread's name."""

    signature = signature("THREADS", "Any", param("n", "Number"), pack="t")
    batchable = True
    max_batch_size = 4

    def load(self, device: str) -> None:
        self.device = device

    def forward(self, batch: Sequence[dict[str, Any]]) -> list[Any]:
        return [(torch.get_num_threads(), threading.current_thread().name) for _ in batch]


@pytest.fixture
def switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_torch_threads_are_torch_s_own_unless_set() -> None:
    assert Settings().pool_config().torch_threads is None
    assert Settings(torch_threads=3).pool_config().torch_threads == 3


@pytest.mark.parametrize("batching", [True, False])
async def test_the_device_worker_runs_torch_with_the_configured_threads(batching: bool) -> None:
    main = torch.get_num_threads()
    want = 1 if main != 1 else 2
    pool = Pool([Pack("t", [Threads()])], PoolConfig(device="cpu", torch_threads=want, batching=batching))
    await pool.start()
    called = await asyncio.gather(*(pool.call("THREADS", {"n": i}) for i in range(3)))
    assert {c.value for c in called} == {(want, called[0].value[1])}
    assert called[0].value[1].startswith("nsx-cpu")
    assert torch.get_num_threads() == main  # the event loop's thread is left as it was
    await pool.close()


def test_switch_interval_from_the_settings(switch_interval: None) -> None:
    assert Settings(switch_interval_ms=0.5).pool_config().switch_interval_ms == 0.5
    Pool([Pack("t", [Threads()])], PoolConfig(device="cpu", switch_interval_ms=0.5))
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    configure_switch_interval(None)  # unset: left as it is
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    with pytest.raises(ValueError):
        Settings(switch_interval_ms=0)


def stored(im: Image.Image) -> ImageValue:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = buf.getvalue()
    return ImageValue.stored(data, f"sha256:{hash(data)}")


def probe_alone(probe: ConvProbe, image: ImageValue) -> int:
    """PROBE as it ran before its preprocessing was batched: each image on its own."""
    assert probe.net is not None
    arr = np.asarray(image.image.resize((probe.side, probe.side)), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    with torch.inference_mode():
        return int(probe.net(x).float()[0].argmax())


def test_probe_batch_answers_as_one_image_at_a_time() -> None:
    probe = ConvProbe()
    probe.load("cpu")
    rng = np.random.default_rng(5)
    images = [stored(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
              for w, h in [(64, 64), (64, 64), (80, 50), (2, 2), (300, 200), (64, 64)]]
    batch: list[dict[str, Any]] = [{"image": im} for im in images]
    batch.insert(3, {"image": "not an image"})
    got = probe.forward(batch)
    assert isinstance(got[3], Exception)
    assert [g for k, g in enumerate(got) if k != 3] == [probe_alone(probe, im) for im in images]
    # The same batch gives the same answers whatever else is in it.
    assert probe.forward(batch[:2]) == got[:2]
