"""``nsx bench all``: merging the scripts' results, the README's table, goals, and one real script run
(correctness only: no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main
from bench import all as bench_all
from bench.common import ROOT, Figure, Report, meets

GOOD = '''\
import argparse, sys
sys.path.insert(0, {root!r})
from bench.common import Report, options
args = options(argparse.ArgumentParser()).parse_args()
r = Report("fake1", config={{"quick": args.quick}})
r.add("ratio", "a ratio | with a bar", [1.0, 1.2, 1.1], "×", "<= 1.10")
r.add("ms", "a time", [3.0, 2.0, 4.0], " ms", "<= 5")
r.add("plain", "no goal", [7.0], " s")
r.emit(args)
'''

BAD = '''\
import sys
print("starting")
print("boom: the server exited", file=sys.stderr)
sys.exit(3)
'''


def fake_bench(tmp_path: Path) -> Path:
    d = tmp_path / "bench"
    d.mkdir()
    (d / "fake1.py").write_text(GOOD.format(root=str(ROOT)))
    (d / "fake2.py").write_text(BAD)
    return d


def test_goals() -> None:
    assert meets(1.1, "<= 1.10") is True
    assert meets(1.11, "<= 1.10") is False
    assert meets(0.95, ">= 0.95") is True
    assert meets(3.0, None) is None
    with pytest.raises(ValueError):
        meets(1.0, "< 1")
    f = Figure.of("x.y", "y", [3.0, 1.0, 2.0], " ms", "<= 2")
    assert (f.median, f.min, f.max, f.n, f.met) == (2.0, 1.0, 3.0, 3, True)


def test_run_all_merges_scripts_and_reports_the_failed_and_missing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bench_dir, results = fake_bench(tmp_path), tmp_path / "results"
    rc = bench_all.run_all(["fake1", "fake2", "fake3"], quick=True, command="nsx bench all --quick",
                           bench_dir=bench_dir, results_dir=results)
    assert rc == 1  # fake2 failed
    doc = json.loads((results / "latest.json").read_text())
    assert doc["command"] == "nsx bench all --quick" and doc["quick"] is True
    assert doc["machine"]["cores"] and doc["date"]
    status = {s["name"]: s["status"] for s in doc["scripts"]}
    assert status == {"fake1": "ok", "fake2": "failed", "fake3": "missing"}
    failed = next(s for s in doc["scripts"] if s["name"] == "fake2")
    assert "exited with 3" in failed["error"] and "boom: the server exited" in failed["error"]
    fake1 = next(s for s in doc["scripts"] if s["name"] == "fake1")
    assert fake1["config"] == {"quick": True}  # --quick reached the script
    assert [f["id"] for f in doc["figures"]] == ["fake1.ratio", "fake1.ms", "fake1.plain"]
    assert [f["met"] for f in doc["figures"]] == [True, True, None]  # the ratio's median is 1.1

    md = (results / "latest.md").read_text()
    assert doc["date"] in md and doc["machine"]["cpu"] in md
    assert "| fake1: a ratio \\| with a bar | 1.10× | 1.00–1.20× | 3 | ≤ 1.10 | ✓ |" in md
    assert "| fake1: no goal | 7.00 s | 7.00–7.00 s | 1 |  |  |" in md
    assert "Failed: fake2" in md and "Not run: fake3" in md
    out = capsys.readouterr()
    assert "starting" in out.out  # streamed
    assert "goals: 2 of 2 met" in out.out and "FAILED fake2" in out.out


def test_readme_section_is_replaced_between_the_markers(tmp_path: Path) -> None:
    text = f"# nsx\n\nintro\n\n{bench_all.START}\nold table\n{bench_all.END}\n\nmore\n"
    new = bench_all.replace_section(text, "| a | b |\n")
    assert new == f"# nsx\n\nintro\n\n{bench_all.START}\n| a | b |\n{bench_all.END}\n\nmore\n"
    assert bench_all.replace_section(new, "| c |") == new.replace("| a | b |", "| c |")
    for bad in ("no markers here", f"{bench_all.END}\n{bench_all.START}", f"{bench_all.START}{bench_all.START}"
                f"{bench_all.END}"):
        with pytest.raises(ValueError, match="bench:start"):
            bench_all.replace_section(bad, "x")

    readme = tmp_path / "README.md"
    readme.write_text(text)
    bench_dir, results = fake_bench(tmp_path), tmp_path / "results"
    assert bench_all.run_all(["fake1"], quick=False, readme=readme, bench_dir=bench_dir, results_dir=results) == 0
    body = readme.read_text()
    assert "old table" not in body and "| fake1: a time |" in body and body.endswith("\n\nmore\n")

    readme.write_text("# no markers\n")
    with pytest.raises(ValueError):  # before any script runs
        bench_all.run_all(["fake1"], quick=False, readme=readme, bench_dir=bench_dir, results_dir=tmp_path / "r2")
    assert not (tmp_path / "r2").exists()


def test_report_json_is_what_all_reads(tmp_path: Path) -> None:
    r = Report("x", config={"a": 1})
    r.add("f", "label", [2.0, 4.0], " ms", ">= 3")
    doc = r.to_dict()
    assert doc["figures"][0]["id"] == "x.f" and doc["figures"][0]["median"] == 3.0 and doc["figures"][0]["met"]
    assert doc["machine"]["versions"]["python"]


def test_dsl_script_quick_json(tmp_path: Path) -> None:
    out = tmp_path / "dsl.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "dsl.py"), "--quick", "--json", str(out),
                           "--iterations", "100", "--repeats", "2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    figures = {f["id"]: f for f in doc["figures"]}
    assert set(figures) == {"dsl.cold_ms", "dsl.parse_ms", "dsl.compile_ms", "dsl.memoized_us"}
    cold = figures["dsl.cold_ms"]
    assert cold["goal"] == "<= 1" and cold["n"] == 2 and cold["min"] <= cold["median"] <= cold["max"]
    assert isinstance(cold["met"], bool)


def test_cli_bench_all(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args = build_parser().parse_args(["bench", "all", "--quick", "--only", "dsl,cache"])
    assert (args.quick, args.readme, args.only) == (True, False, "dsl,cache")
    assert main(["bench", "all", "--only", "nosuch"]) == 2  # refused by bench/all.py before anything runs

    import app.cli

    monkeypatch.setattr(app.cli, "__file__", str(tmp_path / "site-packages" / "app" / "cli.py"))
    assert main(["bench", "all"]) == 2
    assert "installed without one" in capsys.readouterr().err
