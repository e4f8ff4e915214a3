"""The README's screenshots, taken in headless Chromium from a served process: the playground after
running its shapes example, and the rationale pages of a shapes run and a photo run.

    .venv/bin/python scripts/screenshots.py [--out docs]

Needs Debian's chromium (``apt-get install chromium``) or NSX_CHROMIUM naming a Chromium binary, and
the playwright package (installed with the test extra); no browser is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import server  # noqa: E402
from tests.browser import find_chromium, launch, run_example  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no Chromium found: apt-get install chromium, or set NSX_CHROMIUM")
    args.out.mkdir(parents=True, exist_ok=True)
    with server({"NSX_PACKS": "core,shapes,photo", "NSX_LOG_LEVEL": "warning"}) as srv, launch(chromium) as browser:
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        view = run_example(page, srv.base, "shapes-count")
        page.screenshot(path=str(args.out / "playground.png"))
        page.goto(srv.base + view)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(args.out / "rationale-shapes.png"), full_page=True)
        view = run_example(page, srv.base, "photo-segment")
        page.goto(srv.base + view)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(args.out / "rationale-photo.png"), full_page=True)
    for name in ("playground.png", "rationale-shapes.png", "rationale-photo.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
