"""What every benchmark script shares: the machine's description, medians with their spread, and one
result format, so ``bench/all.py`` (``nsx bench all``) can merge the scripts' results into
``bench/results/latest.json`` and the README's table.

A script adds ``--quick`` and ``--json PATH`` with ``options(parser)``, measures, and calls
``Report.emit(args)``: it prints its figures and, with ``--json``, writes them. Scripts that measure
over HTTP start their server with ``server()`` (a subprocess, ready when ``/readyz`` answers 200) and
talk to it with ``client()`` (TCP_NODELAY); ``SHAPES_PROGRAM`` and ``shapes_scenes()`` are the shapes
case the overhead and cache benchmarks share."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """The machine a figure came from: CPU model and count, memory, load, Python and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions: dict[str, str] = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "fastapi", "uvicorn", "redis"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a missing distribution is simply not listed
            pass
    cuda = None
    try:
        import torch

        if torch.cuda.is_available():
            cuda = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - no torch: no accelerator to name
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "gpu": cuda,
            "load_average": [round(v, 2) for v in os.getloadavg()], "platform": platform.platform(),
            "versions": versions, "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    if not values:
        raise ValueError("no measurements")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


@dataclass
class Figure:
    """One number a benchmark reports: its median over ``n`` repeats, their min–max, and the goal it
    is held to (``goal`` as text such as "<= 1.10"; ``met`` None when it has no goal)."""

    id: str
    label: str
    median: float
    min: float
    max: float
    n: int
    unit: str = ""
    goal: str | None = None
    met: bool | None = None

    @classmethod
    def of(cls, id: str, label: str, values: Sequence[float], unit: str = "",  # noqa: A002 - the field's name
           goal: str | None = None) -> Figure:
        s = spread(values)
        return cls(id, label, s["median"], s["min"], s["max"], int(s["n"]), unit, goal, meets(s["median"], goal))


def meets(value: float, goal: str | None) -> bool | None:
    """Whether ``value`` meets a goal written "<= X" or ">= X"."""
    if goal is None:
        return None
    op, _, bound = goal.partition(" ")
    limit = float(bound)
    if op == "<=":
        return value <= limit
    if op == ">=":
        return value >= limit
    raise ValueError(f"a goal is '<= X' or '>= X', not {goal!r}")


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


@dataclass
class Report:
    """A script's results: its name, what it ran (``config``), its figures and notes."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, id: str, label: str, values: Sequence[float], unit: str = "",  # noqa: A002 - Figure's field
            goal: str | None = None) -> Figure:
        f = Figure.of(f"{self.name}.{id}", label, values, unit, goal)
        self.figures.append(f)
        return f

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "machine": machine(),
                "figures": [asdict(f) for f in self.figures], "notes": self.notes}

    def print(self) -> None:
        print(f"== {self.name}")
        for f in self.figures:
            goal = "" if f.goal is None else f"   goal {f.goal}: {'met' if f.met else 'NOT met'}"
            print(f"  {f.label}: {fmt(f.median)}{f.unit} (min {fmt(f.min)}, max {fmt(f.max)}, n={f.n}){goal}")
        for n in self.notes:
            print(f"  note: {n}")
        sys.stdout.flush()

    def emit(self, args: argparse.Namespace) -> None:
        self.print()
        if getattr(args, "json", None):
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and shorter windows (nsx bench all --quick)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    return parser


# ----------------------------------------------------------------------------- servers and clients


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nsx_command() -> list[str]:
    """``nsx`` as this Python runs it: the console script beside the interpreter, else ``-m app.cli``."""
    script = Path(sys.executable).with_name("nsx")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "app.cli"]


def bench_env(nsx: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment with this checkout first on PYTHONPATH and no ``NSX_*`` setting but ``nsx``'s:
    a key or a Redis URL exported in the shell must not change what a benchmark measures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NSX_")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(nsx or {})
    return env


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Server:
    """A server subprocess that has answered 200 on ``/readyz``, ``ready_s`` seconds after it was started."""

    proc: subprocess.Popen[bytes]
    base: str
    ready_s: float
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        return rss_mib(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _ready(port: int) -> bool:
    # http.client, not httpx: a poll every few milliseconds must cost the starting server nothing
    # (httpx.get builds an SSL context per call).
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def server(nsx: Mapping[str, str] | None = None, *, cmd: Sequence[str] | None = None, timeout_s: float = 300.0,
           poll_s: float = 0.02) -> Iterator[Server]:
    """A server ready for requests until the block ends: ``nsx serve`` on a free port with the
    ``NSX_*`` settings in ``nsx`` (none inherited), or ``cmd`` with "{port}" replaced by the port.
    Started from the repository root with this checkout's code; its output goes to a temporary
    file, whose tail the error names if it exits or is not ready within ``timeout_s``."""
    port = free_port()
    argv = ([a.replace("{port}", str(port)) for a in cmd] if cmd is not None
            else [*nsx_command(), "serve", "--host", "127.0.0.1", "--port", str(port)])
    fd, name = tempfile.mkstemp(prefix="nsx-bench-server-", suffix=".log")
    log = Path(name)
    t0 = time.perf_counter()
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=bench_env(nsx), stdout=out, stderr=subprocess.STDOUT)
    srv = Server(proc, f"http://127.0.0.1:{port}", 0.0, log)
    try:
        deadline = t0 + timeout_s
        while not _ready(port):
            if proc.poll() is not None:
                raise RuntimeError(f"the server ({' '.join(argv)}) exited with {proc.returncode} before it was "
                                   f"ready:\n{srv.log_tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the server was not ready after {timeout_s:g} s:\n{srv.log_tail()}")
            time.sleep(poll_s)
        srv.ready_s = time.perf_counter() - t0
        yield srv
    finally:
        stop(proc)
        log.unlink(missing_ok=True)


def client(base: str, timeout_s: float = 120.0) -> httpx.Client:
    """A synchronous client with TCP_NODELAY: without it a request's body waits for the server's
    delayed ACK of its headers (about 40 ms on Linux), which would measure the TCP stack."""
    import httpx

    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(base_url=base, timeout=timeout_s, transport=transport)


def upload(http: httpx.Client, data: bytes) -> str:
    """POST /v1/images; the ``sha256:`` reference a run names the image by."""
    r = http.post("/v1/images", content=data)
    r.raise_for_status()
    return str(r.json()["sha256"])


def post_run(http: httpx.Client, program: str, images: Mapping[str, str], *, cache: bool) -> dict[str, Any]:
    """POST /v1/runs with image references; the record, which must have succeeded."""
    r = http.post("/v1/runs", json={"program": program, "images": dict(images), "options": {"cache": cache}})
    if r.status_code != 200:
        raise RuntimeError(f"POST /v1/runs answered {r.status_code}: {r.text[:500]}")
    record: dict[str, Any] = r.json()
    if record["status"] != "succeeded":
        raise RuntimeError(f"the run failed: {record.get('error')}")
    return record


# ----------------------------------------------------------------------------- the shapes case

# Six steps, one neural (LOC) and five symbolic, the shape of a CLEVR question's program. One LOC
# only: a phrase LOC the service answers from the same detection would make the direct baseline,
# which runs every forward, look slow for a reason other than the request path.
SHAPES_PROGRAM = """\
OBJS = LOC(image=IMAGE, object='object')
RED = FILTER(box=OBJS, value='red')
BIG = FILTER(box=OBJS, value='large')
BOTH = UNION(left=RED, right=BIG)
ANY_BIG = EXISTS(box=BIG)
n = COUNT(box=BOTH)
"""


def shapes_scenes(n: int, seed: int = 4242) -> list[bytes]:
    """``n`` rendered shapes-world scenes (256×256, what LOC was trained on) as PNG bytes."""
    from modules.shapes.tools.world import render_scene

    out = []
    for i in range(n):
        buf = io.BytesIO()
        render_scene(seed, i).pil().save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON: a load generator as lean as it can be.
    On a machine of two cores the client shares the CPU with the server, and httpx's pool, at 64
    connections, took a whole core by itself (its pool is scanned on every request): the benchmark
    measured its own client."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Status and body; the response's headers (lower-case names) into ``headers`` when given."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            sock = self._writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._reader is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self._writer.write(head + body)
        status_line = await self._reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            if headers is not None:
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
