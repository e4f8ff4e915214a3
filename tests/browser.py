"""Headless Chromium for the page tests and the screenshots: the system's browser (Debian's
``chromium``, or NSX_CHROMIUM), driven by Playwright; nothing is downloaded."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HOW_TO_GET_ONE = ("no Chromium to drive: install Debian's (apt-get install chromium; ./scripts/test does it where it "
                  "can) or set NSX_CHROMIUM to a Chromium or Chrome binary")


def find_chromium() -> str | None:
    named = os.environ.get("NSX_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def launch(executable: str) -> Iterator[Any]:
    """A headless browser from ``executable`` until the block ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def run_example(page: Any, base: str, name: str, timeout_ms: float = 120_000) -> str:
    """Pick the playground's example ``name``, run it, wait for its rationale; the run page's path."""
    page.goto(base + "/")
    page.select_option("#examples", name)
    page.wait_for_selector("#images li img")
    page.wait_for_selector('#diagnostics[data-ok="true"]', state="attached")
    page.click("#run")
    page.wait_for_selector("#rationale article.rationale header.run", timeout=timeout_ms)
    href: str = page.get_attribute("#rationale a.permalink", "href")
    return href


def images_loaded(page: Any) -> dict[str, int]:
    """How many ``<img>`` the page holds, and how many of them have loaded pixels (after waiting for
    each to finish loading)."""
    result: dict[str, int] = page.evaluate("""async () => {
        const imgs = [...document.querySelectorAll('img')];
        await Promise.all(imgs.map((im) => im.decode().catch(() => null)));
        return {total: imgs.length, loaded: imgs.filter((im) => im.complete && im.naturalWidth > 0).length};
    }""")
    return result
