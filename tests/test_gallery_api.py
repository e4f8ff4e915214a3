"""The face gallery over HTTP: add, list and remove names; every refusal with its status and what
to fix; a name added through the API tagging the right face in a run and changing the cache key of
the steps that read the gallery; and the names outlasting a restart on the same Redis."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data

from app.main import create_app
from app.settings import Settings
from modules.base import Pack
from modules.core import pack as core_pack
from modules.photo import identity
from modules.photo.faces import FaceDet
from modules.values import Obj
from tests.apputil import b64
from tests.test_photo_identity import ASTRONAUT, HOPPER, centre_in, collage, pasted_faces

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 400_000
MAX_PIXELS = 4_000_000
EILEEN = "Eileen Collins"
GRACE = "Grace Hopper"


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


REFERENCE = jpeg(ASTRONAUT.crop((120, 20, 360, 260)).resize((180, 180)))  # not the pixels of the collage
HOPPER_JPEG = jpeg(HOPPER)


def photo_pack() -> Pack:
    """The photo pack's face detector and who-is-who modules, with their gallery (SEG, OCR and the
    edits are left out: these tests do not need them loaded)."""
    known, gallery = identity.build()
    return Pack("photo", [FaceDet(), *known], galleries=[gallery])


@contextmanager
def photo_client(redis_url: str | None = None, **overrides: object) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, max_image_bytes=MAX_BYTES, max_image_pixels=MAX_PIXELS,
                        **overrides)  # type: ignore[arg-type]
    with TestClient(create_app(settings, packs=[core_pack(), photo_pack()])) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.05)
        yield client


@pytest.fixture(scope="module")
def app_client() -> Iterator[TestClient]:
    with photo_client() as c:
        yield c


@pytest.fixture
def client(app_client: TestClient) -> Iterator[TestClient]:
    """The module's client with an empty faces gallery."""
    def clear() -> None:
        for entry in app_client.get("/v1/galleries/faces").json()["entries"]:
            assert app_client.delete(f"/v1/galleries/faces/{entry['name']}").status_code == 204
    clear()
    yield app_client
    clear()


def add(client: TestClient, name: str, image: bytes, gallery: str = "faces") -> dict:
    r = client.post(f"/v1/galleries/{gallery}", data={"name": name}, files={"image": ("face.jpg", image, "image/jpeg")})
    assert r.status_code == 201, r.text
    return r.json()


def on(item: dict, who: str) -> bool:
    """Whether an output item lies on a copy of ``who``'s face in the collage."""
    return centre_in(Obj(tuple(item["box"])), pasted_faces(who)) is not None


def refused(r: object, status: int, *phrases: str) -> str:
    assert getattr(r, "status_code", None) == status, getattr(r, "text", r)
    message = r.json()["errors"][0]["message"]  # type: ignore[attr-defined]
    for p in phrases:
        assert p in message, message
    return str(message)


def run(client: TestClient, program: str, **images: bytes) -> dict:
    r = client.post("/v1/runs", json={"program": program, "images": {k: b64(v) for k, v in images.items()}})
    assert r.status_code == 200, r.text
    return r.json()


# ----------------------------------------------------------------------------- add, list, delete


def test_add_list_and_delete_a_name(client: TestClient) -> None:
    listed = client.get("/v1/galleries").json()["galleries"]
    assert [(g["name"], g["names"], g["images"]) for g in listed] == [("faces", 0, 0)]
    assert "faces" in listed[0]["doc"].lower()
    empty = client.get("/v1/galleries/faces").json()

    first = add(client, EILEEN, REFERENCE)
    assert first["gallery"] == "faces" and first["name"] == EILEEN and first["images"] == 1
    assert first["image"].startswith("sha256:") and first["digest"] != empty["digest"]
    second = add(client, "eileen   COLLINS", (ROOT / "examples" / "astronaut.jpg").read_bytes())
    assert second["name"] == EILEEN and second["images"] == 2  # one person, two photos
    add(client, GRACE, HOPPER_JPEG)

    detail = client.get("/v1/galleries/faces").json()
    assert detail["entries"] == [{"name": EILEEN, "images": 2, "sources": ["api"]},
                                 {"name": GRACE, "images": 1, "sources": ["api"]}]
    assert (detail["names"], detail["images"]) == (2, 3)

    # What the store keeps for the gallery is out of reach of the artifact route (its keys hold a slash).
    assert client.get("/v1/artifacts/gallery%2Ffaces%2Findex").status_code == 404
    assert client.delete("/v1/galleries/faces/EILEEN COLLINS").status_code == 204
    assert [e["name"] for e in client.get("/v1/galleries/faces").json()["entries"]] == [GRACE]
    refused(client.delete(f"/v1/galleries/faces/{EILEEN}"), 404, f"no name '{EILEEN}'", "it has 'Grace Hopper'")


def test_an_unknown_gallery_is_404_listing_the_galleries(client: TestClient) -> None:
    for r in (client.get("/v1/galleries/pets"), client.delete("/v1/galleries/pets/Rex"),
              client.post("/v1/galleries/pets", data={"name": "Rex"}, files={"image": ("r.jpg", REFERENCE)})):
        refused(r, 404, "no gallery 'pets'", "this deployment has 'faces'")


def _two_faces() -> bytes:
    two = Image.new("RGB", (1024, 512))
    two.paste(ASTRONAUT, (0, 0))
    two.paste(HOPPER.resize((512, 600)).crop((0, 44, 512, 556)), (512, 0))
    return jpeg(two)


@pytest.mark.parametrize(("form", "files", "phrases"), [
    ({"name": "Coffee"}, {"image": ("c.jpg", jpeg(Image.fromarray(data.coffee())))}, ["no face found"]),
    ({"name": "Two"}, {"image": ("t.jpg", _two_faces())}, ["2 faces", "one person only"]),
    ({"name": "Broken"}, {"image": ("b.jpg", b"not an image at all")}, ["the image is not a readable image"]),
    ({"name": "Empty"}, {"image": ("e.jpg", b"")}, ["the image is empty"]),
    ({"name": "  "}, {"image": ("f.jpg", REFERENCE)}, ["the name is empty"]),
    ({"name": "Ada, Alan"}, {"image": ("f.jpg", REFERENCE)}, ["a comma"]),
    ({"name": ".."}, {"image": ("f.jpg", REFERENCE)}, ["only dots"]),
    ({"name": "Face"}, {"image": ("f.jpg", REFERENCE)}, ["a word the modules already read"]),
    ({"name": "people"}, {"image": ("f.jpg", REFERENCE)}, ["a word the modules already read"]),
    ({}, {"image": ("f.jpg", REFERENCE)}, ["no 'name' field"]),
    ({"name": "Ada"}, {"photo": ("f.jpg", REFERENCE)}, ["needs one 'image' file, got no 'image' field"]),
    ({"name": "Ada", "image": "not a file"}, {"x": ("f.jpg", b"x")}, ["needs one 'image' file, got 'image' as text"]),
], ids=["no-face", "two-faces", "undecodable", "empty-image", "empty-name", "comma", "dots", "reserved-face",
        "reserved-people", "no-name", "no-image", "image-as-text"])
def test_what_cannot_be_added_is_422_saying_what_to_fix(client: TestClient, form: dict, files: dict,
                                                        phrases: list[str]) -> None:
    r = client.post("/v1/galleries/faces", data=form, files=files)
    refused(r, 422, *phrases)
    if "name" in phrases[0] or "dots" in phrases[0] or "word" in phrases[0]:
        assert "photo" not in r.json()["errors"][0].get("hint", "")  # a name's error says nothing of faces
    assert client.get("/v1/galleries/faces").json()["entries"] == []


def test_a_body_that_is_not_a_form_is_422_with_the_curl_to_send(client: TestClient) -> None:
    r = client.post("/v1/galleries/faces", json={"name": EILEEN})
    refused(r, 422, "send a multipart form with the fields 'name' and 'image'")
    assert "curl -F 'name=Nicole Kidman' -F image=@" in r.json()["errors"][0]["hint"]


def test_a_form_that_cannot_be_parsed_is_400(client: TestClient) -> None:
    body = b"--XX\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nAda\r\n--XX--\r\n"
    r = client.post("/v1/galleries/faces", content=body, headers={"content-type": "multipart/form-data"})
    refused(r, 400, "the form could not be read", "boundary")


def test_too_large_is_413(client: TestClient) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8))
    big = png(noise)  # ~790 kB: over the body limit
    assert len(big) > MAX_BYTES + 64 * 1024
    refused(client.post("/v1/galleries/faces", data={"name": "Big"}, files={"image": ("b.png", big)}), 413,
            f"an image may be at most {MAX_BYTES} bytes")
    just_over = png(noise.crop((0, 0, 512, 280)))  # within the form's room, over the image limit
    assert MAX_BYTES < len(just_over) < MAX_BYTES + 60 * 1024
    refused(client.post("/v1/galleries/faces", data={"name": "Big"}, files={"image": ("b.png", just_over)}), 413,
            f"the limit is {MAX_BYTES}")
    wide = png(Image.new("RGB", (2100, 2000), "white"))
    refused(client.post("/v1/galleries/faces", data={"name": "Wide"}, files={"image": ("w.png", wide)}), 413,
            "2100×2000 pixels")


# ----------------------------------------------------------------------------- in runs


TAGGING = """\
faces = FACEDET(IMAGE)
eileen = SELECT(IMAGE, faces, 'eileen collins')
named = CLASSIFY(IMAGE, faces, ['Eileen Collins', 'Grace Hopper'])
n = COUNT(eileen)
"""


def test_a_gallery_name_tags_the_right_face_in_a_run(client: TestClient) -> None:
    add(client, EILEEN, REFERENCE)
    add(client, GRACE, HOPPER_JPEG)
    record = run(client, TAGGING, IMAGE=jpeg(collage().image))
    assert record["result"] == {"type": "number", "value": 2}
    steps = {s["vars"][0]: s for s in record["steps"]}
    selected = steps["eileen"]["output"]["items"]
    assert len(selected) == 2 and {it["attributes"]["name"] for it in selected} == {EILEEN}
    assert all(on(it, "astronaut") for it in selected)
    named = {it["label"]: it for it in steps["named"]["output"]["items"] if it["label"] != "face"}
    assert set(named) == {EILEEN, GRACE}
    assert on(named[EILEEN], "astronaut") and on(named[GRACE], "hopper")


def test_face_match_with_a_reference_image_in_a_run(client: TestClient) -> None:
    record = run(client, "faces = FACEDET(IMAGE)\nher = FACE_MATCH(IMAGE, faces, RIGHT)\nn = COUNT(her)",
                 IMAGE=jpeg(collage().image), RIGHT=REFERENCE)
    assert record["result"] == {"type": "number", "value": 2}
    assert record["steps"][1]["device"] == "cpu"  # on the pool's worker thread, not the event loop


def test_adding_a_name_changes_the_key_of_the_steps_that_read_the_gallery(client: TestClient) -> None:
    program = "faces = FACEDET(IMAGE)\npeople = SELECT(IMAGE, faces, 'person')"
    image = jpeg(collage().image)

    def keys() -> dict[str, tuple[str, str]]:
        return {s["module"]: (s["key"], s["cache"]) for s in run(client, program, IMAGE=image)["steps"]}

    before, again = keys(), keys()
    assert again["SELECT"] == (before["SELECT"][0], "hit")
    add(client, EILEEN, REFERENCE)
    after = keys()
    assert after["FACEDET"] == (before["FACEDET"][0], "hit")  # the detector reads no gallery
    assert after["SELECT"][0] != before["SELECT"][0] and after["SELECT"][1] == "miss"


def test_embedding_runs_off_the_event_loop(client: TestClient) -> None:
    # A large photo: the face finder's tiles and the embedding take a second or so on a CPU.
    big = jpeg(ASTRONAUT.resize((1900, 1900)), quality=60)
    done: list[int] = []
    poster = threading.Thread(target=lambda: done.append(client.post(
        "/v1/galleries/faces", data={"name": EILEEN}, files={"image": ("big.jpg", big)}).status_code))
    poster.start()
    slowest, answered = 0.0, 0
    while poster.is_alive():
        t0 = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        slowest = max(slowest, time.perf_counter() - t0)
        answered += 1
    poster.join()
    assert done == [201]
    assert answered >= 2 and slowest < 0.5, (answered, slowest)


# ----------------------------------------------------------------------------- the README's example


README_PROGRAM = """faces = FACEDET(IMAGE)
her = SELECT(IMAGE, faces, 'Eileen Collins')
n = COUNT(her)"""


def test_the_readme_example(client: TestClient) -> None:
    # curl -s -F 'name=Eileen Collins' -F image=@examples/astronaut.jpg http://127.0.0.1:8000/v1/galleries/faces
    photo = (ROOT / "examples" / "astronaut.jpg").read_bytes()
    added = client.post("/v1/galleries/faces", data={"name": EILEEN},
                        files={"image": ("astronaut.jpg", photo, "image/jpeg")})
    assert added.status_code == 201 and added.json()["name"] == EILEEN
    # curl -s http://127.0.0.1:8000/v1/runs -F IMAGE=@examples/astronaut.jpg -F "program=…"
    r = client.post("/v1/runs", data={"program": README_PROGRAM},
                    files={"IMAGE": ("astronaut.jpg", photo, "image/jpeg")})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["result"] == {"type": "number", "value": 1}
    item = record["steps"][1]["output"]["items"][0]
    assert item["attributes"]["name"] == EILEEN and item["attributes"]["distance"] < 0.1
    assert client.get("/v1/galleries").json()["galleries"][0]["names"] == 1


# ----------------------------------------------------------------------------- restarts


def test_names_added_through_the_api_outlast_a_restart_on_the_same_redis(redis_url: str) -> None:
    with photo_client(redis_url) as first:
        add(first, EILEEN, REFERENCE)
        digest = first.get("/v1/galleries/faces").json()["digest"]
    with photo_client(redis_url) as second:
        detail = second.get("/v1/galleries/faces").json()
        assert detail["entries"] == [{"name": EILEEN, "images": 1, "sources": ["api"]}]
        assert detail["digest"] == digest  # the same entries: the same cache keys as before
        record = run(second, "n = COUNT(SELECT(IMAGE, FACEDET(IMAGE), 'Eileen Collins'))", IMAGE=jpeg(collage().image))
        assert record["result"] == {"type": "number", "value": 2}


def test_a_gallery_folder_is_loaded_before_the_service_is_ready(tmp_path: Path) -> None:
    (tmp_path / "faces" / GRACE).mkdir(parents=True)
    (tmp_path / "faces" / GRACE / "portrait.jpg").write_bytes(HOPPER_JPEG)
    (tmp_path / "faces" / f"{EILEEN}.jpg").write_bytes(REFERENCE)
    with photo_client(gallery_dir=str(tmp_path)) as c:
        assert c.get("/v1/galleries/faces").json()["entries"] == [
            {"name": EILEEN, "images": 1, "sources": ["folder"]}, {"name": GRACE, "images": 1, "sources": ["folder"]}]
        record = run(c, "n = COUNT(SELECT(IMAGE, FACEDET(IMAGE), 'Grace Hopper'))", IMAGE=jpeg(collage().image))
        assert record["result"] == {"type": "number", "value": 2}


# ----------------------------------------------------------------------------- tenants

ALICE = {"X-API-Key": "k-alice"}
BOB = {"X-API-Key": "k-bob"}


def test_each_tenant_has_its_own_gallery_over_the_folders(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / f"{GRACE}.jpg").write_bytes(HOPPER_JPEG)  # the deployment's: every tenant's
    program = "n = COUNT(SELECT(IMAGE, FACEDET(IMAGE), 'Eileen Collins'))"
    scene = jpeg(collage().image)

    def names(c: TestClient, who: dict[str, str]) -> list[str]:
        return [e["name"] for e in c.get("/v1/galleries/faces", headers=who).json()["entries"]]

    def count(c: TestClient, who: dict[str, str]) -> dict:
        r = c.post("/v1/runs", json={"program": program, "images": {"IMAGE": b64(scene)}}, headers=who)
        assert r.status_code == 200, r.text
        return r.json()

    with photo_client(redis_url, api_keys="alice:k-alice,bob:k-bob", gallery_dir=str(tmp_path)) as c:
        r = c.post("/v1/galleries/faces", data={"name": EILEEN}, files={"image": ("f.jpg", REFERENCE)}, headers=ALICE)
        assert r.status_code == 201, r.text
        assert names(c, ALICE) == [EILEEN, GRACE] and names(c, BOB) == [GRACE]
        assert [g["names"] for g in c.get("/v1/galleries", headers=BOB).json()["galleries"]] == [1]
        assert count(c, ALICE)["result"] == {"type": "number", "value": 2}
        bobs = count(c, BOB)
        assert bobs["status"] == "failed" and "not in the faces gallery" in bobs["error"]
        # Bob removes the deployment's name for himself only; he cannot remove Alice's.
        assert c.delete(f"/v1/galleries/faces/{GRACE}", headers=BOB).status_code == 204
        assert names(c, BOB) == [] and names(c, ALICE) == [EILEEN, GRACE]
        assert c.delete(f"/v1/galleries/faces/{EILEEN}", headers=BOB).status_code == 404
    with photo_client(redis_url, api_keys="alice:k-alice,bob:k-bob", gallery_dir=str(tmp_path)) as again:
        assert names(again, ALICE) == [EILEEN, GRACE] and names(again, BOB) == []  # kept per tenant
        assert count(again, ALICE)["result"] == {"type": "number", "value": 2}
