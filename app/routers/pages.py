"""Pages for people: the playground at ``/`` (write or pick a program, add images, run it and watch
its rationale), and the key a browser keeps for the pages and event streams of a keyed deployment.

The run pages themselves (``/v1/runs/{id}/view``) live with the runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from program_dsl import ProgramError

from ..deps import KEY_COOKIE, presented_key, service, tenant_of
from ..errors import responses
from ..service import Service
from ..view import html_response, page

router = APIRouter()


@dataclass(frozen=True)
class Example:
    name: str
    title: str
    program: str
    image: str  # under /static/examples/


EXAMPLES = (
    Example("shapes-count", "Shapes: red or large things", """\
OBJS = LOC(image=IMAGE, object='object')
RED = FILTER(box=OBJS, value='red')
BIG = FILTER(box=OBJS, value='large')
BOTH = UNION(left=RED, right=BIG)
n = COUNT(box=BOTH)
answer = EVAL(expr="'{n} red or large things'")
""", "shapes.png"),
    Example("shapes-crop", "Shapes: what is left of the cube", """\
CUBE = LOC(image=IMAGE, object='cube')
LEFT = CROP_LEFTOF(image=IMAGE, box=CUBE)
OBJS = LOC(image=LEFT, object='object')
n = COUNT(box=OBJS)
""", "shapes.png"),
    Example("photo-faces", "Photo: find and pixelate faces", """\
faces = FACEDET(IMAGE)
private = PIXELATE(IMAGE, faces)
n = COUNT(faces)
""", "astronaut.jpg"),
    Example("photo-edit", "Photo: blur the background, cover the face", """\
OBJ0 = FACEDET(image=IMAGE)
IMAGE0 = BGBLUR(image=IMAGE, object=OBJ0)
IMAGE1 = EMOJI(image=IMAGE0, object=OBJ0, emoji='smiling_face_with_sunglasses')
FINAL_RESULT = RESULT(var=IMAGE1)
""", "astronaut.jpg"),
    Example("photo-segment", "Photo: people, faces and text, with masks", """\
OBJS = SEG(image=IMAGE)
FACES = SELECT(image=IMAGE, object=OBJS, query='face')
TAGGED = TAG(image=IMAGE, object=FACES)
""", "astronaut.jpg"),
)


def available_examples(svc: Service) -> list[Example]:
    """The examples this deployment's catalog compiles: a shapes-only server offers no photo ones."""
    out = []
    for ex in EXAMPLES:
        try:
            svc.runs.compile(ex.program, None, count=False)
        except ProgramError:
            continue
        out.append(ex)
    return out


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground(request: Request, svc: Service = Depends(service)) -> HTMLResponse:
    """The playground. It holds nothing of any tenant's: what it shows comes through the API, with
    the key the page asks for when the deployment has keys."""
    examples = [{"name": e.name, "title": e.title, "program": e.program, "image": f"/static/examples/{e.image}"}
                for e in available_examples(svc)]
    body = _PLAYGROUND.replace("{{examples}}", escape(json.dumps(examples), quote=True))
    data = {"keys": "yes" if getattr(request.app.state, "keyed", False) else "no"}
    return html_response(page("nsx playground", body, scripts=["/static/playground.js"], data=data))


@router.post("/v1/session", responses=responses(401), tags=["pages"])
async def open_session(request: Request) -> JSONResponse:
    """Keep the request's API key in a cookie, for what a browser opens by itself: run pages
    (``/view``) and event streams. The cookie is HttpOnly and SameSite=Strict, and counts for GET
    requests only: starting a run still needs the key in a header."""
    out = JSONResponse({"tenant": tenant_of(request) or None})
    key = presented_key(request.scope["headers"], "POST")
    if key:
        out.set_cookie(KEY_COOKIE, quote(key, safe=""), httponly=True, samesite="strict", path="/v1",
                       secure=request.url.scheme == "https")
    return out


@router.delete("/v1/session", status_code=204, responses=responses(401), tags=["pages"])
async def close_session() -> Response:
    """Forget the key cookie."""
    out = Response(status_code=204)
    out.delete_cookie(KEY_COOKIE, path="/v1")
    return out


_PLAYGROUND = """
<header class="bar"><h1>nsx playground</h1>
<form id="keyform" class="key" hidden><label>API key <input id="key" type="password" autocomplete="off"></label>
<button type="submit">use</button><button id="forget" type="button">forget</button>
<span id="keystate" class="muted"></span></form></header>
<main class="playground">
<section class="editor-pane">
  <div class="row"><label>example <select id="examples" data-examples="{{examples}}">
  <option value="">— pick one —</option></select></label></div>
  <div class="editor"><pre id="gutter" class="gutter" aria-hidden="true"></pre>
  <textarea id="program" spellcheck="false" autocomplete="off" autocapitalize="off" rows="12"
   aria-label="program">faces = FACEDET(IMAGE)
n = COUNT(faces)</textarea></div>
  <ul id="diagnostics" class="diagnostics" aria-live="polite"></ul>
  <div id="drop" class="drop">
    <p>Drop images here, or <label class="file">choose <input id="files" type="file" accept="image/*" multiple></label>.
    Each is bound to the name beside it.</p>
    <ul id="images" class="images"></ul>
  </div>
  <div class="row"><label><input id="cache" type="checkbox" checked> cache</label>
  <button id="run" type="button">Run</button><span id="runstate" class="muted"></span></div>
</section>
<section class="result-pane"><div id="rationale" class="rationale-holder">
<p class="muted">Run a program to see every step here.</p></div></section>
<aside class="catalog-pane"><h2>modules</h2><input id="filter" type="search" placeholder="filter" aria-label="filter">
<div id="catalog" class="catalog"></div></aside>
</main>
"""
