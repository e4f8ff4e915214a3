"""Every example in the README runs: the service is started with the README's own command
(./scripts/serve), then each bash and python block runs against it and each nsx block compiles."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modules.packs import build_catalog, load_packs
from program_dsl import compile_program

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README) if kind == lang]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "NSX_PORT": str(port), "NSX_REDIS_URL": ""}
    proc = subprocess.Popen([str(ROOT / "scripts" / "serve")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"./scripts/serve exited with {proc.returncode}:\n{out[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("./scripts/serve never became ready")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _env() -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), "NSX_REDIS_URL": ""}


def test_quick_start_commands_are_the_scripts() -> None:
    sh = blocks("sh")
    assert sh[0].strip() == "./scripts/serve"
    assert sh[1].strip() == "./scripts/test"
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("index", range(len(blocks("nsx"))))
def test_nsx_blocks_compile(index: int) -> None:
    catalog = build_catalog(load_packs())
    compile_program(blocks("nsx")[index], catalog)


@pytest.mark.parametrize("index", range(len(blocks("bash"))))
def test_bash_blocks_run(server: str, index: int) -> None:
    script = blocks("bash")[index].replace("http://127.0.0.1:8000", server)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (f"block {index} failed:\n{script}\n--- stdout\n{done.stdout}"
                                  f"\n--- stderr\n{done.stderr}")
    assert done.stdout.strip(), f"block {index} printed nothing"


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run(server: str, index: int) -> None:
    code = blocks("python")[index].replace("http://127.0.0.1:8000", server)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"block {index} failed:\n{done.stdout}\n{done.stderr}"


def test_configuration_table_matches_settings() -> None:
    from app.settings import Settings

    documented = set(re.findall(r"^\| `NSX_([A-Z_]+)` \|", README, re.M))
    fields = {name.upper() for name in Settings.model_fields}
    assert documented == fields
