"""The ``nsx`` command: serve, run, check, fmt, modules."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modules.commands import Commands, add_pack_commands
from modules.packs import PackError, build_catalog, load_packs, resolve_modules
from modules.values import ImageValue
from program_dsl import IMAGE, Catalog, ProgramError, compile_cached, compile_program, format_program

from .records import RunRecord, StepRecord
from .settings import Settings

if TYPE_CHECKING:
    from modules.base import Pack

    from .runs import RunService


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SystemExit(f"nsx: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SystemExit(f"nsx: {path} is not UTF-8 text") from None


@contextmanager
def _pack_errors() -> Iterator[None]:
    """A bad NSX_PACKS or a pack clash ends the command with its message, not a traceback."""
    try:
        yield
    except PackError as e:
        raise SystemExit(f"nsx: {e}") from None


def _catalog(settings: Settings) -> Catalog:
    with _pack_errors():
        return build_catalog(load_packs(settings.pack_list()), settings.module_choices())


def cmd_check(args: argparse.Namespace) -> int:
    """Type-check files against every enabled pack's signatures; no model is loaded."""
    catalog = _catalog(Settings())
    inputs = dict.fromkeys(args.input, IMAGE) if args.input else None
    failed = False
    for path in args.files:
        text = _read(path)
        name = "<stdin>" if path == "-" else path
        try:
            plan = compile_program(text, catalog, inputs)
        except ProgramError as e:
            print(e.render(name), file=sys.stderr)
            failed = True
            continue
        for w in plan.warnings:
            print(w.render(text, name), file=sys.stderr)
        if not args.quiet:
            print(f"{name}: ok ({len(plan.steps)} steps, result {plan.result_type})")
    return 1 if failed else 0


def cmd_fmt(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        text = _read(path)
        name = "<stdin>" if path == "-" else path
        try:
            out = format_program(text)
        except ProgramError as e:
            print(e.render(name), file=sys.stderr)
            status = 1
            continue
        if args.check:
            if out != text:
                print(f"{name}: would reformat", file=sys.stderr)
                status = 1
        elif args.write and path != "-":
            Path(path).write_text(out, encoding="utf-8")
        else:
            sys.stdout.write(out)
    return status


def cmd_modules(args: argparse.Namespace) -> int:
    settings = Settings()
    with _pack_errors():
        packs = load_packs(settings.pack_list())
        catalog = build_catalog(packs, settings.module_choices())
    available = {m.name: p.name for p in packs for m in p.modules}
    if args.json:
        print(json.dumps([{**s.to_dict(), "available": n in available} for n, s in sorted(catalog.items())], indent=2))
        return 0
    table = Table(title="nsx modules")
    for col in ("module", "pack", "arguments", "returns", "here", "doc"):
        table.add_column(col)
    for name, sig in sorted(catalog.items()):
        params = ", ".join(f"{p.name}: {p.type}" + ("" if p.required else f" = {p.default!r}") for p in sig.params)
        here = "yes" if name in available or name in ("RESULT",) else f"needs pack {sig.pack}"
        table.add_row(name, sig.pack, params, str(sig.returns), here, sig.doc)
    Console().print(table)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def _images(specs: list[str]) -> dict[str, ImageValue]:
    images: dict[str, ImageValue] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "IMAGE", spec
        try:
            images[name] = ImageValue.from_bytes(Path(path).read_bytes())
        except OSError as e:
            raise SystemExit(f"nsx: cannot read image {path}: {e}") from None
        except ValueError as e:  # PIL's "cannot identify image file"
            raise SystemExit(f"nsx: {path} is not a readable image: {e}") from None
    return images


async def _run(args: argparse.Namespace) -> int:
    from .metrics import Metrics
    from .service import make_pool, running

    settings = Settings()
    text = _read(args.program)
    images = _images(args.image)
    metrics = Metrics()
    with _pack_errors():
        packs = load_packs(settings.pack_list())
        catalog = build_catalog(packs, settings.module_choices())
    try:
        # Compiled once, here, against the catalog (no model needed) with the service's limits:
        # the run below takes this plan.
        plan = compile_cached(text, catalog, dict.fromkeys(images, IMAGE) if images else None,
                              settings.program_limits())
    except ProgramError as e:
        print(e.render(args.program), file=sys.stderr)
        return 1
    missing = [n for n in plan.inputs if n not in images]
    if missing:
        print(f"nsx: the program uses {', '.join(missing)}; pass --image {missing[0]}=PATH", file=sys.stderr)
        return 2
    modules, default = resolve_modules(packs, settings.module_choices())
    # As the pool names a step's module (``Pool.qualified``).
    named = (f"{s.pack}.{s.module}" if f"{s.pack}.{s.module}" in modules else default.get(s.module)
             for s in plan.steps)
    needed = {q for q in named if q is not None}
    # Only the plan's modules load, and the text model only if a step needs it. A plan of symbolic
    # modules touches no device, so "auto" need not look for one (which imports torch).
    # A one-shot run has no long life for gc.freeze to pay off over (its collection costs ~0.25 s).
    update: dict[str, Any] = {"lazy_load": True, "gc_freeze": False}
    if settings.device.lower() == "auto" and all(modules[q].cheap for q in needed):
        update["device"] = "cpu"
    settings = settings.model_copy(update=update)
    with _pack_errors():
        pool = make_pool(settings, packs, metrics)
    console = Console(stderr=True)
    async with running(settings, pool, metrics, wait=True, load=needed, text_model="lazy") as svc:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=args.json or not console.is_terminal) as progress:
            task = progress.add_task("running", total=len(plan.steps))

            def on_step(rec: StepRecord) -> None:
                progress.update(task, advance=1, description=f"{rec.id} {rec.module}")

            record = await svc.runs.run(text, images, cache=not args.no_cache, on_step=on_step, plan=plan)
    if args.json:
        print(record.model_dump_json(indent=2))
    else:
        _print_record(args.program, record)
    return 0 if record.status == "succeeded" else 1


def _print_record(name: str, record: RunRecord) -> None:
    table = Table(title=f"{name}: {record.status} in {record.timings.execute_ms:.1f} ms")
    for col in ("step", "vars", "module", "output", "cache", "ms"):
        table.add_column(col)
    for s in record.steps:
        table.add_row(s.id, ", ".join(s.vars), s.module, _short(s.output) if s.output else f"[red]{s.error}",
                      s.cache, f"{s.ms:.2f}")
    Console().print(table)
    if record.result is not None:
        print(f"result: {_short(record.result)}")
    else:
        print(f"error: {record.error}", file=sys.stderr)


def _short(doc: dict[str, Any]) -> str:
    kind = doc.get("type")
    if kind == "image":
        return f"image {doc['width']}×{doc['height']}"
    if kind == "objects":
        labels = ", ".join(filter(None, (i.get("label", "") for i in doc["items"][:5])))
        return f"{doc['count']} object(s)" + (f": {labels}" if labels else "")
    if kind == "list":
        return "[" + ", ".join(_short(i) for i in doc["items"][:5]) + "]"
    return json.dumps(doc.get("value"))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .logs import configure
    from .main import app_from_env

    settings = Settings()
    configure(settings.log_format, settings.log_level)
    app = app_from_env()
    config = uvicorn.Config(app, host=args.host or settings.host, port=args.port or settings.port,
                            log_config=None, log_level=settings.log_level,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s)

    class Draining(uvicorn.Server):
        """On SIGTERM/SIGINT, new runs get 503 at once while the runs in flight finish (for at most
        NSX_SHUTDOWN_TIMEOUT_S): a load balancer sends them elsewhere instead of to a closing port."""

        def handle_exit(self, sig: int, frame: object) -> None:
            app.state.draining = True
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    # uvicorn ends the process by the signal it caught once it has stopped (at most the graceful
    # timeout after it), so a module thread that never returns does not hold the exit.
    Draining(config).run()
    return 0


def cmd_hash_key(args: argparse.Namespace) -> int:
    """The NSX_API_KEYS_FILE line for a tenant's key: a new random key (printed on stderr, once), or
    one read from standard input. Only the line, on stdout, so ``>> keys`` appends just that."""
    import secrets

    from .tenants import KeysError, file_line

    key = sys.stdin.readline().strip() if args.stdin else secrets.token_urlsafe(32)
    try:
        line = file_line(args.name, key)
    except KeysError as e:
        print(f"nsx hash-key: {e}", file=sys.stderr)
        return 2
    if not args.stdin:
        print(f"the key for {args.name} (kept nowhere: give it to them now): {key}", file=sys.stderr)
    print(line)
    return 0


def cmd_bench_all(args: argparse.Namespace) -> int:
    """Run the repository's bench/all.py, found beside the ``app`` package this nsx was loaded from."""
    import shlex
    import subprocess

    root = Path(__file__).resolve().parent.parent
    script = root / "bench" / "all.py"
    if not script.is_file():
        print(f"nsx: `nsx bench all` runs the benchmark scripts of a checkout of the repository, and this nsx is "
              f"installed without one (no {script}); run it from a clone, e.g. `pip install -e .` there",
              file=sys.stderr)
        return 2
    flags = [*(["--quick"] if args.quick else []), *(["--readme"] if args.readme else []),
             *(["--only", args.only] if args.only else [])]
    command = shlex.join(["nsx", "bench", "all", *flags])
    return subprocess.call([sys.executable, str(script), *flags, "--command", command], cwd=root)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nsx", description="Neuro-symbolic program executor.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the HTTP service (NSX_* environment variables configure it)")
    p.add_argument("--host", default=None, help="default NSX_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default NSX_PORT or 8000")
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("run", help="run a program in this process")
    p.add_argument("program", help="program file, or - for standard input")
    p.add_argument("--image", "-i", action="append", default=[], metavar="NAME=PATH", help="an input image")
    p.add_argument("--json", action="store_true", help="print the full trace as JSON")
    p.add_argument("--no-cache", action="store_true", help="compute every step")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("check", help="type-check programs without loading any model")
    p.add_argument("files", nargs="+")
    p.add_argument("--input", action="append", default=[], metavar="NAME",
                   help="an image variable the program may use (default IMAGE, LEFT, RIGHT)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only diagnostics")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("fmt", help="print programs in canonical form")
    p.add_argument("files", nargs="+")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if a file is not in canonical form")
    g.add_argument("-w", "--write", action="store_true", help="rewrite the files in place")
    p.set_defaults(fn=cmd_fmt)
    p = sub.add_parser("modules", help="list the module catalog")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_modules)
    p = sub.add_parser("hash-key", help="a tenant's line for NSX_API_KEYS_FILE, with a new key or one from stdin")
    p.add_argument("name", help="the tenant, e.g. alice")
    p.add_argument("--stdin", action="store_true", help="hash the key read from standard input instead of a new one")
    p.set_defaults(fn=cmd_hash_key)
    bench = sub.add_parser("bench", help="benchmarks that packs provide").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("all", help="every benchmark in bench/: results in bench/results/, the README's table")
    p.add_argument("--quick", action="store_true", help="fewer repeats: all of them in under 5 minutes")
    p.add_argument("--readme", action="store_true", help="also put the table into README.md between its markers")
    p.add_argument("--only", metavar="NAME,...", help="only these: dsl, startup, overhead, cache, batching, workload")
    p.set_defaults(fn=cmd_bench_all)
    add_pack_commands(Commands(sub, bench, _open_runner))
    return parser


def _open_runner(packs: Sequence[Pack], *, device: str = "auto", store_mb: int = 256
                 ) -> AbstractAsyncContextManager[RunService]:
    # Imported when a command runs, not when the parser is built: the service pulls in torch.
    from .service import open_runner

    return open_runner(packs, device=device, store_mb=store_mb)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
