"""The playground and the rationale pages in a real browser (headless Chromium, the system's, driven
by Playwright) against a served process: examples run and every step and thumbnail shows, an error
shows at its line as it is typed, an async run's steps arrive one by one, user text stays text, and
a keyed deployment asks for its key once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.apputil import start_server, stop_server
from tests.browser import HOW_TO_GET_ONE, find_chromium, images_loaded, launch, run_example

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=HOW_TO_GET_ONE)


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    proc, url = start_server({"NSX_LOG_LEVEL": "warning"}, packs="core,shapes,photo,fault")
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM is not None
    with launch(CHROMIUM) as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    pg.nsx_problems = problems  # a test that expects some (a refused key) takes them out
    yield pg
    context.close()
    assert problems == []


def masks_answer(page: Any) -> list[int]:
    """The status of every mask the page's SVG overlays draw."""
    statuses: list[int] = page.evaluate("""async () => {
        const hrefs = [...document.querySelectorAll('svg mask image')].map((im) => im.getAttribute('href'));
        return Promise.all(hrefs.map(async (h) => (await fetch(h)).status));
    }""")
    return statuses


@pytest.mark.parametrize("example, steps", [("shapes-count", 6), ("photo-segment", 3)])
def test_an_example_runs_in_the_playground_with_every_step_and_thumbnail(served: str, page: Any, example: str,
                                                                         steps: int) -> None:
    view = run_example(page, served, example)
    assert page.get_attribute("#rationale header.run", "data-status") == "succeeded"
    sections = page.locator("#rationale section.step")
    assert sections.count() == steps
    assert all(s == "succeeded" for s in sections.evaluate_all("els => els.map(e => e.dataset.status)"))
    loaded = images_loaded(page)
    assert loaded["total"] > steps // 2 and loaded["loaded"] == loaded["total"]
    masks = masks_answer(page)
    assert masks and set(masks) == {200}  # LOC and SEG give every object a mask
    # The run's own page shows the same, every step linkable.
    page.goto(served + view + "#s2")
    assert page.locator("section.step").count() == steps
    assert page.evaluate("document.querySelector(':target').id") == "s2"
    assert images_loaded(page)["loaded"] == loaded["total"] - 1  # the playground also shows its own upload
    assert page.locator("pre.program a[data-step='s1']").count() == 1


def test_a_program_error_shows_at_its_line_as_it_is_typed(served: str, page: Any) -> None:
    page.goto(served + "/")
    page.fill("#program", "x = 1\ny = FOO(IMAGE)\nz = x + 1\n")
    diag = page.wait_for_selector('#diagnostics .diag.error[data-line="2"]')
    assert diag.get_attribute("data-column") == "5"
    assert "unknown module 'FOO'" in diag.inner_text() and "line 2, column 5" in diag.inner_text()
    assert page.locator('#gutter .ln.err[data-line="2"]').count() == 1
    assert page.locator("#gutter .ln.err").count() == 1
    page.fill("#program", "x = 1\ny = COUNT(box=REGION(image=IMAGE, box=[0, 0, 4, 4]))\n")
    page.wait_for_selector('#diagnostics[data-ok="true"]', state="attached")
    assert page.locator("#diagnostics .diag.error").count() == 0


def test_an_async_runs_steps_appear_one_by_one(served: str, page: Any) -> None:
    page.goto(served + "/")
    page.fill("#program", "a = SLOW(seconds=0.4)\nb = SLOW(seconds=a)\nc = SLOW(seconds=b)\nd = c + 1\n")
    page.wait_for_selector('#diagnostics[data-ok="true"]', state="attached")
    # What the live view held each time it changed, until the whole record replaced it.
    page.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            const live = document.querySelector('#rationale .live');
            if (live) window.seen.push(live.querySelectorAll('section.step').length);
        }).observe(document.getElementById('rationale'), {childList: true, subtree: true});
    }""")
    page.click("#run")
    page.wait_for_selector("#rationale article.rationale header.run", timeout=60_000)
    seen = page.evaluate("[...new Set(window.seen)]")
    assert seen[:4] == [0, 1, 2, 3]  # the live view grew a step at a time
    assert page.locator("#rationale section.step").count() == 4


def test_the_page_of_a_run_in_flight_follows_it_to_its_end(served: str, page: Any) -> None:
    program = "a = SLOW(seconds=1.5)\nb = SLOW(seconds=0.5)\nc = a + b\n"  # long enough to load the page mid-run
    accepted = httpx.post(served + "/v1/runs", json={"program": program, "options": {"async": True}}).json()
    page.goto(served + accepted["view"])
    assert page.get_attribute("body", "data-status") == "running"
    assert page.locator("section.step.pending").count() >= 1
    page.wait_for_selector("header.run[data-status='succeeded']", timeout=60_000)
    assert page.locator("section.step.succeeded").count() == 3
    assert "2.0" in page.locator("section.result").inner_text()


def test_a_label_holding_a_script_is_shown_as_text(served: str, page: Any) -> None:
    label = "<script>window.pwned = 1</script><img src=x onerror=alert(1)>"
    page.goto(served + "/")
    page.select_option("#examples", "shapes-count")
    page.wait_for_selector("#images li img")
    page.fill("#program", f'R = REGION(image=IMAGE, box=[10, 10, 120, 90], label="{label}")\n')
    page.wait_for_selector('#diagnostics[data-ok="true"]', state="attached")
    page.click("#run")
    page.wait_for_selector("#rationale article.rationale header.run", timeout=60_000)
    view = page.get_attribute("#rationale a.permalink", "href")
    for _ in range(2):
        assert page.evaluate("window.pwned") is None
        assert page.locator("svg text").first.text_content() == f"{label} 1.00"
        assert page.locator("table.objects tbody td").nth(1).text_content() == label
        assert page.locator("pre.program").text_content().count(label) == 1
        page.goto(served + view)


@pytest.fixture(scope="module")
def keyed() -> Iterator[str]:
    proc, url = start_server({"NSX_API_KEYS": "alice:key-of-alice", "NSX_LOG_LEVEL": "warning"}, packs="core")
    try:
        yield url
    finally:
        stop_server(proc)


def test_a_keyed_playground_asks_for_the_key_once(keyed: str, page: Any) -> None:
    page.goto(keyed + "/")
    assert page.is_visible("#keyform")
    assert page.locator("#catalog details").count() == 0
    page.fill("#key", "not-the-key")
    page.click("#keyform button")
    page.wait_for_selector("#keystate:has-text('refused')")
    page.fill("#key", "key-of-alice")
    page.click("#keyform button")
    page.wait_for_selector("#catalog details")
    page.fill("#program", "x = 20\ny = x + 22\n")
    page.wait_for_selector('#diagnostics[data-ok="true"]', state="attached")
    page.click("#run")
    page.wait_for_selector("#rationale article.rationale header.run[data-status='succeeded']")
    assert "42" in page.locator("#rationale section.result").inner_text()
    view = page.get_attribute("#rationale a.permalink", "href")
    page.goto(keyed + view)  # the browser opens the page itself: the cookie carries the key
    assert page.locator("header.run").get_attribute("data-status") == "succeeded"
    page.goto(keyed + "/")  # a new page in the same tab: the key is remembered
    page.wait_for_selector("#catalog details")
    # Without the browser's cookie the page is refused, as the API is.
    assert httpx.get(keyed + view).status_code == 401
    # The browser logs each refusal before the key was given (the catalog, the check, the wrong key).
    refused = [p for p in page.nsx_problems if "status of 401" in p]
    assert refused and len(refused) <= 4
    page.nsx_problems[:] = [p for p in page.nsx_problems if p not in refused]


def test_the_server_is_healthy_after_the_browser_tests(served: str) -> None:
    assert httpx.get(served + "/healthz").status_code == 200
