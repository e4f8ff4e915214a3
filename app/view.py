"""The visual rationale: a run record as an HTML page a person can read, every step with its
arguments, inputs and outputs, images drawn with their boxes, labels, scores and masks.

Rendered on the server from the record's JSON (a stored record, or the state of a run in flight),
so it works for the runs of any pack: it knows value types, never modules. Every piece of text
that came from a user or a module (program, labels, OCR text, errors) is escaped here; pages load
nothing from outside the server (``PAGE_CSP``)."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from fastapi.responses import HTMLResponse

from .records import artifact_url

log = logging.getLogger("nsx.view")

__all__ = ["PAGE_CSP", "error_page", "html_response", "page", "render_body", "render_run", "render_step",
           "render_value"]

# Scripts, styles and images from this server only; no inline script or style can run.
# blob: is the playground's preview of an image picked from the user's own disk.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")

# Distinct on light and dark backgrounds; objects take them in order.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
           "#469990", "#800000")
_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_MAX_LIST_ITEMS = 24  # a list longer than this shows its first items and says how many it holds
_MAX_DRAWN = 64  # objects drawn and listed per value; the rest are counted


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: object) -> float | None:
    """A finite number, or None: JSON writes a NaN or an infinite score as null, and a record read
    from the store is not re-validated."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _ms(value: object) -> str:
    v = _num(value)
    return f"{v:.1f} ms" if v is not None else "—"


def _score(value: object, digits: int = 2) -> str:
    v = _num(value)
    return f"{v:.{digits}f}" if v is not None else "?"


def _box(value: object) -> tuple[float, float, float, float] | None:
    if isinstance(value, list) and len(value) == 4:
        nums = [_num(v) for v in value]
        if all(n is not None for n in nums):
            x0, y0, x1, y1 = (float(n) for n in nums if n is not None)
            return x0, y0, x1, y1
    return None


def render_value(doc: Mapping[str, Any] | None, anchor: str) -> str:
    """A value of a trace as HTML: ``anchor`` makes the ids inside it (SVG masks) unique on a page. A
    value this page cannot draw is shown as its JSON rather than failing the page."""
    try:
        return _value(doc, anchor)
    except Exception:  # one odd value must not cost the whole page
        log.warning("a value could not be drawn; shown as JSON", exc_info=True)
        return f'<pre class="raw">{_e(json.dumps(doc, indent=1, default=str)[:4000])}</pre>'


def _value(doc: Mapping[str, Any] | None, anchor: str) -> str:
    if doc is None:
        return '<p class="none">no output</p>'
    kind = doc.get("type")
    if kind == "image":
        return _figure(doc.get("url") or artifact_url(str(doc.get("key"))), doc.get("width"), doc.get("height"),
                       [], anchor, region=doc.get("mask_url"), caption=f"image {doc.get('width')}×{doc.get('height')}")
    if kind == "objects":
        size = doc.get("image_size") or [0, 0]
        items = list(doc.get("items") or [])
        caption = f"{len(items)} object" + ("" if len(items) == 1 else "s")
        figure = _figure(artifact_url(str(doc.get("image"))), size[0], size[1], items, anchor, caption=caption)
        return f'<div class="objects-out">{figure}{_object_table(items)}</div>'
    if kind == "list":
        items = list(doc.get("items") or [])
        shown = "".join(f"<li>{render_value(item, f'{anchor}-{i}')}</li>"
                        for i, item in enumerate(items[:_MAX_LIST_ITEMS]))
        more = (f'<li class="more">… and {len(items) - _MAX_LIST_ITEMS} more</li>'
                if len(items) > _MAX_LIST_ITEMS else "")
        return f'<div class="list"><p>list of {len(items)}</p><ol>{shown}{more}</ol></div>'
    if kind in ("number", "bool", "text", "none"):
        value = doc.get("value")
        text = json.dumps(value) if kind != "text" else str(value)
        return f'<p class="scalar {kind}"><span class="type">{kind}</span> <code>{_e(text)}</code></p>'
    return f'<pre class="raw">{_e(json.dumps(doc, indent=1)[:4000])}</pre>'


def _figure(url: str, width: object, height: object, items: list[Mapping[str, Any]], anchor: str, *,
            region: str | None = None, caption: str = "") -> str:
    """An image with an SVG drawn over it in the image's own pixel coordinates: a box, a label and a
    score per object, and each mask (a black-and-white PNG) as a tinted layer."""
    w = int(_num(width) or 0) or 1
    h = int(_num(height) or 0) or 1
    items = items[:_MAX_DRAWN]
    defs, layers = [], []
    masks = [(i, str(it["mask_url"])) for i, it in enumerate(items) if it.get("mask_url")]
    if region:
        masks.append((-1, region))
    for i, mask_url in masks:
        mid = f"m-{anchor}-{'r' if i < 0 else i}"
        defs.append(f'<mask id="{_e(mid)}"><image href="{_e(mask_url)}" width="{w}" height="{h}" '
                    f'preserveAspectRatio="none"/></mask>')
        color = "#ffd400" if i < 0 else PALETTE[i % len(PALETTE)]
        layers.append(f'<rect class="mask" width="{w}" height="{h}" fill="{color}" fill-opacity="0.45" '
                      f'mask="url(#{_e(mid)})"/>')
    stroke = max(1.0, min(float(w), float(h)) / 200)
    font = max(8.0, min(float(w), float(h)) / 28)
    for i, it in enumerate(items):
        box = _box(it.get("box"))
        if box is None:
            continue
        x0, y0, x1, y1 = box
        color = PALETTE[i % len(PALETTE)]
        label = f"{it.get('label', '')} {_score(it.get('score'))}".strip()
        ty = y0 - stroke if y0 > font else y0 + font
        layers.append(f'<g class="obj"><rect x="{x0:g}" y="{y0:g}" width="{x1 - x0:g}" height="{y1 - y0:g}" '
                      f'fill="none" stroke="{color}" stroke-width="{stroke:g}"/>'
                      f'<text x="{x0:g}" y="{ty:g}" font-size="{font:g}" fill="{color}" stroke="#000" '
                      f'stroke-width="{font / 12:g}" paint-order="stroke">{_e(label)}</text></g>')
    overlay = (f'<svg class="overlay" viewBox="0 0 {w} {h}" preserveAspectRatio="none" aria-hidden="true">'
               f'<defs>{"".join(defs)}</defs>{"".join(layers)}</svg>') if layers else ""
    return (f'<figure class="thumb"><div class="frame"><img src="{_e(url)}" alt="{_e(caption)}" width="{w}" '
            f'height="{h}">{overlay}</div><figcaption>{_e(caption)}</figcaption></figure>')


def _object_table(items: list[Mapping[str, Any]]) -> str:
    if not items:
        return ""
    rows = []
    for i, it in enumerate(items[:_MAX_DRAWN]):
        box = _box(it.get("box")) or ()
        attrs = it.get("attributes") or {}
        if not isinstance(attrs, dict):
            attrs = {"": attrs}
        rows.append(f'<tr><td><span class="swatch c{i % len(PALETTE)}"></span>{i}</td><td>{_e(it.get("label", ""))}'
                    f'</td><td>{_score(it.get("score"), 3)}</td><td>{_e(", ".join(f"{v:g}" for v in box))}</td>'
                    f'<td>{_e("; ".join(_attribute(k, v) for k, v in attrs.items()))}</td>'
                    f'<td>{"yes" if it.get("mask_url") else ""}</td></tr>')
    more = (f'<tr><td colspan="6">… and {len(items) - _MAX_DRAWN} more</td></tr>'
            if len(items) > _MAX_DRAWN else "")
    return ('<table class="objects"><thead><tr><th>#</th><th>label</th><th>score</th><th>box</th>'
            f'<th>attributes</th><th>mask</th></tr></thead><tbody>{"".join(rows)}{more}</tbody></table>')


def _attribute(name: str, value: object) -> str:
    """An object's attribute in a few words: a distribution by its likeliest entry, anything else
    as short JSON."""
    if isinstance(value, dict) and value and all(_num(v) is not None for v in value.values()):
        best = max(value, key=lambda k: value[k])
        return f"{name}: {best} ({_score(value[best])})"
    text = json.dumps(value, ensure_ascii=False)
    return f"{name}: {text if len(text) <= 120 else text[:117] + '…'}"


def _arg(value: object) -> str:
    if isinstance(value, dict) and set(value) == {"step"}:
        return f'<a href="#{_e(value["step"])}">{_e(value["step"])}</a>'
    if isinstance(value, dict) and set(value) == {"input"}:
        return f'<a href="#input-{_e(value["input"])}">{_e(value["input"])}</a>'
    return f"<code>{_e(json.dumps(value, ensure_ascii=False))}</code>"


def render_step(step: Mapping[str, Any], index: int) -> str:
    """One step of a run as a ``<section id="sN">``: what ran, on what, how, and what came out."""
    sid = str(step.get("id", f"s{index}"))
    status = str(step.get("status", "pending"))
    facts = [("status", status), ("cache", step.get("cache")), ("device", step.get("device")),
             ("batch", step.get("batch_size")), ("queue", _ms(step["queue_ms"]) if step.get("queue_ms") is not None
                                                  else None),
             ("compute", _ms(step.get("ms"))), ("pack", step.get("pack")), ("version", step.get("version"))]
    if step.get("shared"):
        facts.append(("shared", "computed once for several steps"))
    if step.get("via"):
        facts.append(("via", step.get("via")))
    if step.get("route"):
        facts.append(("route", step.get("route")))
    dl = "".join(f'<div class="fact {_e(k)}"><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>'
                 for k, v in facts if v not in (None, ""))
    args = step.get("args") or {}
    arg_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_arg(v)}</td></tr>" for k, v in args.items())
    error = f'<p class="error">{_e(step["error"])}</p>' if step.get("error") else ""
    out = render_value(step.get("output"), sid) if status == "succeeded" else ""
    bound = ", ".join(step.get("vars") or [])
    return (f'<section class="step {_e(status)}" id="{_e(sid)}" data-status="{_e(status)}">'
            f'<h3><a class="anchor" href="#{_e(sid)}">{_e(sid)}</a> <span class="module">{_e(step.get("module"))}'
            f'</span>{f" → <span class=vars>{_e(bound)}</span>" if bound else ""}</h3>'
            f'<dl class="facts">{dl}</dl>'
            f'{f"<table class=args>{arg_rows}</table>" if arg_rows else ""}{error}'
            f'<div class="output">{out}</div></section>')


def _program(program: str, steps: Iterable[Mapping[str, Any]]) -> str:
    """The program, each statement linked to the step that computes it."""
    by_var = {v: str(s.get("id")) for s in steps for v in (s.get("vars") or [])}
    lines = []
    for n, line in enumerate(program.splitlines(), 1):
        m = _ASSIGN.match(line)
        sid = by_var.get(m.group(1)) if m else None
        text = _e(line) or " "
        body = f'<a href="#{_e(sid)}" data-step="{_e(sid)}">{text}</a>' if sid else text
        lines.append(f'<span class="line" id="L{n}"><span class="ln">{n}</span>{body}</span>')
    return f'<pre class="program">{"".join(lines)}</pre>'


def render_body(record: Mapping[str, Any]) -> str:
    """The page's content (no ``<html>``): the playground shows the same inside its own page."""
    steps = list(record.get("steps") or [])
    status = str(record.get("status"))
    timings = record.get("timings") or {}
    inputs = record.get("inputs") or {}
    head = (f'<header class="run {_e(status)}" data-status="{_e(status)}"><h2>run <code>{_e(record.get("run_id"))}'
            f'</code> <span class="badge {_e(status)}">{_e(status)}</span></h2>'
            f'<p class="timings">compile {_ms(timings.get("compile_ms"))} · execute {_ms(timings.get("execute_ms"))}'
            f' · total {_ms(timings.get("total_ms"))} · {len(steps)} steps · '
            f'{sum(1 for s in steps if s.get("cache") == "hit")} cache hits · '
            f'persisted: {"yes" if record.get("persisted") else "no"}</p></header>')
    if record.get("error"):
        head += f'<p class="error run-error">{_e(record["error"])}</p>'
    result = record.get("result")
    answer = (f'<section class="result"><h3>answer</h3>{render_value(result, "result")}</section>'
              if result is not None else "")
    warnings = "".join(f'<li>{_e(w.get("message"))}</li>' for w in record.get("warnings") or [])
    warned = f'<ul class="warnings">{warnings}</ul>' if warnings else ""
    ins = "".join(f'<div class="input" id="input-{_e(name)}"><h4>{_e(name)}</h4>'
                  f'{_figure(artifact_url(str(im.get("key"))), im.get("width"), im.get("height"), [], name, caption=str(im.get("key"))[:19] + "…")}'  # noqa: E501
                  f'</div>' for name, im in inputs.items())
    return (f'<article class="rationale" data-run="{_e(record.get("run_id"))}">{head}{warned}{answer}'
            f'<section class="source"><h3>program</h3>{_program(str(record.get("program", "")), steps)}</section>'
            f'{f"<section class=inputs><h3>inputs</h3>{ins}</section>" if ins else ""}'
            f'<section class="steps"><h3>steps</h3>{"".join(render_step(s, i) for i, s in enumerate(steps))}'
            f'</section></article>')


def page(title: str, body: str, *, scripts: Iterable[str] = (), data: Mapping[str, str] | None = None) -> str:
    """A whole page around ``body``, with this server's stylesheet and ``scripts`` (paths under it)."""
    attrs = "".join(f' data-{_e(k)}="{_e(v)}"' for k, v in (data or {}).items())
    tags = "".join(f'<script src="{_e(s)}" defer></script>' for s in scripts)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f'<link rel="icon" href="/static/favicon.svg"><link rel="stylesheet" href="/static/nsx.css">{tags}</head>'
            f'<body{attrs}>{body}</body></html>')


def render_run(record: Mapping[str, Any]) -> str:
    """The rationale page of a run; a run still in flight follows its events until it ends."""
    running = record.get("status") == "running"
    nav = '<nav class="top"><a href="/">nsx playground</a></nav>'
    return page(f"nsx run {record.get('run_id')}", nav + render_body(record),
                scripts=["/static/view.js"] if running else [],
                data={"run": str(record.get("run_id")), "status": str(record.get("status"))})


def html_response(html: str, status: int = 200) -> HTMLResponse:
    """A page as an answer, under this server's policy (``PAGE_CSP``)."""
    return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": PAGE_CSP})


def error_page(status: int, message: str, hint: str | None = None) -> str:
    """An error of the API (the same status and words) as a page."""
    said = f'<p class="hint">{_e(hint)}</p>' if hint else ""
    return page(f"nsx: {status}", f'<nav class="top"><a href="/">nsx playground</a></nav><main class="failure">'
                f'<h2>{status}</h2><p class="error">{_e(message)}</p>{said}</main>')
