"""bench/load.py, short: a served process under clients while its Redis restarts, and nothing lost —
no failed run, no unexpected answer, every record that said persisted found in Redis afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modules.shapes.files import have_weights

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH")
@pytest.mark.skipif(not have_weights(), reason="needs the shapes pack's weights")
def test_a_redis_restart_under_load_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--clients", "8", "--seconds", "6",
                           "--restart-redis", "1", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = {f["id"].split(".", 1)[1]: f for f in json.loads(out.read_text())["figures"]}
    for name in ("failed_runs", "unexpected", "lost_records", "unreadable_records"):
        assert figures[name]["median"] == 0, (name, done.stdout[-3000:])
    assert figures["runs_per_s"]["median"] > 0
    assert any("redis back" in n for n in json.loads(out.read_text())["notes"])
