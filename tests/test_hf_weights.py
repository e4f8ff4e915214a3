"""Where the hf pack's weights come from: one folder per role, or a models.json; hub ids only when
the deployment allows downloads; every mistake named by role; versions that change with the files;
and the pack offering nothing until NSX_HF_MODELS is set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modules.hf import ROLES, pack
from modules.hf.cli import CHECKPOINTS, wanted
from modules.hf.weights import ENV_DOWNLOAD, ENV_MODELS, RoleWeights, WeightsError, role_weights

ROOT = Path(__file__).resolve().parents[1]


def role_folder(root: Path, role: str, weights: bytes = b"w") -> Path:
    folder = root / role
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_the_pack_is_off_until_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_MODELS, raising=False)
    hf = pack()
    assert hf.modules == [] and "NSX_HF_MODELS" in hf.doc


def test_role_folders_are_found_and_others_ignored(tmp_path: Path) -> None:
    role_folder(tmp_path, "loc")
    (tmp_path / "notes").mkdir()
    found = role_weights(tmp_path, tuple(ROLES))
    assert set(found) == {"loc"} and found["loc"].folder == tmp_path / "loc"
    assert found["loc"].check("OWL") == tmp_path / "loc"


def test_a_mapping_file_names_folders_and_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = role_folder(tmp_path / "store", "owl")
    (tmp_path / "models.json").write_text(json.dumps({"loc": str(elsewhere), "vqa": "hub:dandelin/vilt"}))
    found = role_weights(tmp_path, tuple(ROLES))
    assert found["loc"].folder == elsewhere and found["vqa"].hub_id == "dandelin/vilt"
    monkeypatch.delenv(ENV_DOWNLOAD, raising=False)
    with pytest.raises(WeightsError, match=f"role 'vqa' names the hub id 'dandelin/vilt', but downloads are off: "
                                           f"set {ENV_DOWNLOAD}=true"):
        found["vqa"].check("ViLT")
    monkeypatch.setenv(ENV_DOWNLOAD, "true")
    assert found["vqa"].check("ViLT") == "dandelin/vilt"


@pytest.mark.parametrize(("doc", "message"), [
    ("[1, 2]", "not an object"),
    ('{"wings": "x"}', "names the role 'wings'; the roles are loc"),
    ('{"loc": ""}', "role 'loc' must map to a folder"),
    ("{not json", "models.json is unusable"),
])
def test_a_broken_mapping_fails_every_role_with_its_message(tmp_path: Path, doc: str, message: str) -> None:
    (tmp_path / "models.json").write_text(doc)
    found = role_weights(tmp_path, tuple(ROLES))
    assert set(found) == set(ROLES)
    for w in found.values():
        with pytest.raises(WeightsError, match=message):
            w.check("anything")


@pytest.mark.parametrize(("make", "message"), [
    (lambda f: None, "no folder"),
    (lambda f: (f.mkdir(), (f / "model.safetensors").write_bytes(b"w")), "has no config.json"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text("{}"), (f / "pytorch_model.bin").write_bytes(b"w")),
     "no \\*.safetensors weights \\(pickled .bin weights are not loaded\\)"),
])
def test_a_wrong_folder_is_named_by_role(tmp_path: Path, make: object, message: str) -> None:
    folder = tmp_path / "loc"
    make(folder)  # type: ignore[operator]
    with pytest.raises(WeightsError, match=f"role 'loc': .*{message}"):
        RoleWeights("loc", folder).check("OWLv2 or OWL-ViT")


def test_a_missing_root_gives_every_role_the_message(tmp_path: Path) -> None:
    found = role_weights(tmp_path / "nope", tuple(ROLES))
    assert set(found) == set(ROLES)
    with pytest.raises(WeightsError, match="is not a folder; expected one sub-folder per role"):
        found["clip"].check("CLIP")


def test_the_digest_changes_with_the_files(tmp_path: Path) -> None:
    folder = role_folder(tmp_path, "loc", b"one")
    w = RoleWeights("loc", folder)
    before = w.digest()
    assert w.digest() == before  # stable
    (folder / "model.safetensors").write_bytes(b"two")
    assert w.digest() != before
    after = w.digest()
    (folder / "preprocessor_config.json").write_text('{"size": 960}')
    assert w.digest() != after  # the preprocessing is part of what the weights mean
    assert RoleWeights("loc", tmp_path / "gone").digest() != after


def test_download_roles(tmp_path: Path) -> None:
    assert wanted([]) == CHECKPOINTS
    assert wanted(["vqa=dandelin/vilt-b32-finetuned-vqa", "loc"]) == {
        "vqa": "dandelin/vilt-b32-finetuned-vqa", "loc": CHECKPOINTS["loc"]}
    with pytest.raises(ValueError, match="unknown role 'wings'"):
        wanted(["wings"])
    assert set(CHECKPOINTS) == set(ROLES)


def nsx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_nsx_hf_check_and_download_dry_run(tmp_path: Path) -> None:
    role_folder(tmp_path, "loc")
    (tmp_path / "vqa").mkdir()
    done = nsx("hf", "check", str(tmp_path))
    assert done.returncode == 1, done.stderr
    assert "loc: ok" in done.stdout and "vqa: error  role 'vqa':" in done.stdout and "no config.json" in done.stdout
    dry = nsx("hf", "download", "--out", str(tmp_path), "--dry-run", "loc")
    assert dry.returncode == 0 and f"loc: {CHECKPOINTS['loc']} → {tmp_path / 'loc'}" in dry.stdout
    assert nsx("hf", "download", "--out", str(tmp_path), "wings").returncode == 2
