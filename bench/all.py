"""Every benchmark, one after another, merged into ``bench/results/latest.json`` and a Markdown table
(``bench/results/latest.md``, and with ``--readme`` the README's, between its bench markers).

    .venv/bin/python bench/all.py [--quick] [--readme] [--only dsl,cache]
    nsx bench all [--quick] [--readme] [--only NAME,...]

Each script runs as its own process with ``--json bench/results/<name>.json`` (and ``--quick``), its
output streamed; one that fails is reported with the tail of its stderr and the rest still run (the
exit status is then 1). A script not written yet is skipped with a note. The table's figures are the
scripts' own: medians over repeats, min–max, the goal and whether it is met, headed by the date and
the machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Runnable as a plain script from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, bench_env, fmt, machine

SCRIPTS = ("dsl", "startup", "overhead", "cache", "batching", "workload")
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
TAIL = 25


@dataclass
class Outcome:
    """What became of one script: ``ok``, ``failed`` or ``missing`` (not written yet)."""

    name: str
    status: str
    seconds: float = 0.0
    report: dict[str, Any] | None = None
    error: str | None = None
    argv: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        report = self.report or {}
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 1), "error": self.error,
                "command": shlex.join(self.argv) if self.argv else None, "config": report.get("config", {}),
                "figures": report.get("figures", []), "notes": report.get("notes", []),
                "machine": report.get("machine")}


def _pump(stream: Any, sink: Any, tail: collections.deque[str] | None = None) -> None:
    for line in stream:
        sink.write(line)
        sink.flush()
        if tail is not None:
            tail.append(line.rstrip("\n"))


def run_script(name: str, *, quick: bool, bench_dir: Path = BENCH, results_dir: Path = RESULTS,
               timeout_s: float | None = None) -> Outcome:
    """Run ``bench_dir/<name>.py`` with ``--json``, streaming its output; its outcome."""
    script = bench_dir / f"{name}.py"
    if not script.is_file():
        return Outcome(name, "missing", error=f"{script.relative_to(ROOT) if script.is_relative_to(ROOT) else script}"
                                              " does not exist yet")
    out = results_dir / f"{name}.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, str(script), "--json", str(out), *(["--quick"] if quick else [])]
    print(f"\n=== {name}: {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    # Its own session, so a timeout stops the servers it started too.
    env = {**bench_env(), "PYTHONUNBUFFERED": "1"}  # its lines as they come, not when its buffer fills
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL)
    err = threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, tail), daemon=True)
    err.start()
    timer = None
    timed_out = threading.Event()
    if timeout_s:
        def expire() -> None:
            timed_out.set()
            os.killpg(proc.pid, signal.SIGTERM)

        timer = threading.Timer(timeout_s, expire)
        timer.start()
    try:
        _pump(proc.stdout, sys.stdout)
        rc = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
    err.join(timeout=10)
    seconds = time.perf_counter() - t0
    stderr_tail = "\n".join(tail)
    if timed_out.is_set():
        return Outcome(name, "failed", seconds, error=f"stopped after {timeout_s:g} s\n{stderr_tail}", argv=argv)
    if rc != 0:
        return Outcome(name, "failed", seconds, error=f"exited with {rc}\n{stderr_tail}", argv=argv)
    try:
        report = json.loads(out.read_text())
    except (OSError, ValueError) as e:
        return Outcome(name, "failed", seconds, error=f"wrote no readable {out.name}: {e}\n{stderr_tail}", argv=argv)
    return Outcome(name, "ok", seconds, report, argv=argv)


def _git() -> dict[str, Any] | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        # What the benchmarks write themselves (their results, the README's table) is not a change
        # to the code they measured.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results", ":(exclude)README.md"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "modified": bool(dirty.stdout.strip())}


def merge(outcomes: Sequence[Outcome], *, command: str, quick: bool) -> dict[str, Any]:
    """The whole run as one document: machine, date, command line, every script and its figures."""
    m = machine()
    scripts = [o.to_dict() for o in outcomes]
    figures = [{**f, "script": s["name"]} for s in scripts for f in s["figures"]]
    return {"date": m["date"], "machine": m, "command": command, "quick": quick, "git": _git(),
            "scripts": scripts, "figures": figures}


def describe(m: dict[str, Any]) -> str:
    parts = [f"{m.get('cpu')}", f"{m.get('cores')} cores"]
    if m.get("memory_gib"):
        parts.append(f"{m['memory_gib']} GiB")
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    v = m.get("versions", {})
    parts.append(", ".join(f"{k} {v[k]}" for k in ("python", "torch") if k in v))
    if m.get("load_average"):
        parts.append("load average " + " / ".join(f"{x:g}" for x in m["load_average"]))
    return "; ".join(parts)


def _goal(goal: str | None) -> str:
    return "" if goal is None else goal.replace("<=", "≤").replace(">=", "≥")


def _met(met: bool | None) -> str:
    return "" if met is None else ("✓" if met else "✗")


def _value(f: dict[str, Any], key: str) -> str:
    return fmt(float(f[key])) + str(f.get("unit") or "")


def table(doc: dict[str, Any]) -> str:
    """The Markdown table of every figure, headed by the date, the machine and the command."""
    git = doc.get("git") or {}
    commit = f", commit {git['commit']}{' with local changes' if git.get('modified') else ''}" if git else ""
    lines = [f"Measured {doc['date']} on {describe(doc['machine'])} (`{doc['command']}`{commit}).", "",
             "| figure | median | min–max | n | goal | met |", "| --- | ---: | ---: | ---: | ---: | :---: |"]
    for f in doc["figures"]:
        label = str(f["label"]).replace("|", "\\|")
        lines.append(f"| {f['script']}: {label} | {_value(f, 'median')} | {fmt(float(f['min']))}–{_value(f, 'max')} "
                     f"| {f['n']} | {_goal(f.get('goal'))} | {_met(f.get('met'))} |")
    goals = [f for f in doc["figures"] if f.get("goal") is not None]
    lines += ["", f"Goals met: {sum(1 for f in goals if f.get('met'))} of {len(goals)}."]
    for s in doc["scripts"]:
        if s["status"] == "missing":
            lines.append(f"Not run: {s['name']} ({s['error']}).")
        elif s["status"] == "failed":
            first = (s["error"] or "").splitlines()[0] if s["error"] else "failed"
            lines.append(f"Failed: {s['name']} ({first}); its figures are missing.")
    return "\n".join(lines) + "\n"


def replace_section(text: str, body: str) -> str:
    """``text`` with what lies between the bench markers replaced by ``body``; ValueError without them."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"README.md needs exactly one {START} and, after it, one {END}: the benchmark table "
                         "goes between them")
    return text[:start + len(START)] + "\n" + body.rstrip("\n") + "\n" + text[end:]


def summary(doc: dict[str, Any]) -> str:
    lines = ["", "=== summary"]
    for s in doc["scripts"]:
        lines.append(f"  {s['name']:<10} {s['status']:<8} {s['seconds']:>6.1f} s")
    ratios = [f for f in doc["figures"] if str(f.get("unit") or "").strip() in ("×", "x")]
    if ratios:
        lines.append("ratios:")
        lines += [f"  {f['script']}: {f['label']}: {_value(f, 'median')} ({fmt(float(f['min']))}–{_value(f, 'max')})"
                  + (f"  goal {_goal(f['goal'])} {_met(f.get('met'))}" if f.get("goal") else "") for f in ratios]
    goals = [f for f in doc["figures"] if f.get("goal") is not None]
    lines.append(f"goals: {sum(1 for f in goals if f.get('met'))} of {len(goals)} met")
    lines += [f"  {_met(f.get('met'))} {f['script']}: {f['label']}: {_value(f, 'median')} (goal {_goal(f['goal'])})"
              for f in goals]
    for s in doc["scripts"]:
        if s["status"] == "failed":
            lines.append(f"FAILED {s['name']}: {s['error']}")
        elif s["status"] == "missing":
            lines.append(f"skipped {s['name']}: {s['error']}")
    return "\n".join(lines)


def run_all(names: Sequence[str], *, quick: bool, readme: Path | None = None, command: str = "",
            bench_dir: Path = BENCH, results_dir: Path = RESULTS, timeout_s: float | None = None) -> int:
    """Run ``names`` in turn, write the results (and the README's table); 1 if any script failed."""
    if readme is not None:
        replace_section(readme.read_text(encoding="utf-8"), "")  # missing markers fail before an hour of runs
    results_dir.mkdir(parents=True, exist_ok=True)
    outcomes = [run_script(n, quick=quick, bench_dir=bench_dir, results_dir=results_dir, timeout_s=timeout_s)
                for n in names]
    doc = merge(outcomes, command=command, quick=quick)
    (results_dir / "latest.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md = table(doc)
    (results_dir / "latest.md").write_text(md, encoding="utf-8")
    if readme is not None:
        readme.write_text(replace_section(readme.read_text(encoding="utf-8"), md), encoding="utf-8")
    print(summary(doc))
    print(f"\nwrote {results_dir / 'latest.json'} and {results_dir / 'latest.md'}"
          + (f"; the table in {readme}" if readme is not None else ""))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and shorter windows (all: under 5 minutes)")
    ap.add_argument("--readme", action="store_true", help="also put the table into README.md between its markers")
    ap.add_argument("--only", metavar="NAME,...", help=f"run only these, of {', '.join(SCRIPTS)}")
    ap.add_argument("--timeout", type=float, default=None, metavar="S", help="stop a script after S seconds")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)  # how nsx bench all was invoked
    args = ap.parse_args(argv)
    names = list(SCRIPTS)
    if args.only:
        names = [n.strip().removesuffix(".py") for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCRIPTS]
        if unknown or not names:
            print(f"bench/all.py: unknown benchmark {', '.join(unknown) or '(none)'}; choose from {', '.join(SCRIPTS)}",
                  file=sys.stderr)
            return 2
    command = args.command or shlex.join(["bench/all.py", *(argv if argv is not None else sys.argv[1:])])
    if args.readme:
        try:
            replace_section(README.read_text(encoding="utf-8"), "")
        except (ValueError, OSError) as e:
            print(f"bench/all.py: {e}", file=sys.stderr)
            return 2
    return run_all(names, quick=args.quick, readme=README if args.readme else None, command=command,
                   timeout_s=args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
