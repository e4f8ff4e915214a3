"""Where each role's weights are: ``NSX_HF_MODELS`` names a folder with one sub-folder per role
(``loc/``, ``vqa/``, …, each what ``save_pretrained`` writes), or a ``models.json`` in it mapping a
role to a folder (relative to it, or absolute) or to a hub id. A pipeline role (``inpaint``) holds
what a diffusers pipeline's ``save_pretrained`` writes instead: ``model_index.json`` and one
sub-folder per component. A hub id is used only when the
deployment allows downloads (``NSX_HF_ALLOW_DOWNLOAD=true``); otherwise it is an error that says so.

Nothing here imports transformers: the pool reads every module's version (which hashes the role's
files) before anything loads."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

ENV_MODELS = "NSX_HF_MODELS"
ENV_DOWNLOAD = "NSX_HF_ALLOW_DOWNLOAD"
MAPPING = "models.json"
# What a role's folder must hold for from_pretrained: its config and its weights.
CONFIG = "config.json"
WEIGHT_SUFFIXES = (".safetensors",)
# Roles whose folder is a diffusers pipeline: components in sub-folders, listed by PIPELINE.
PIPELINE = "model_index.json"
PIPELINE_ROLES = frozenset({"inpaint"})
# Hashed with the weights: a new tokenizer or preprocessing config must not serve old results.
HASHED_SUFFIXES = (".json", ".txt", ".model", ".safetensors")


class WeightsError(Exception):
    """A role's weights are missing or unusable; the message names the role and what was expected."""


@dataclass(frozen=True)
class RoleWeights:
    """One role's source: a local folder, or a hub id a deployment allows to download."""

    role: str
    folder: Path | None
    hub_id: str | None = None
    error: str | None = None  # the configuration itself is wrong (a broken models.json)

    def describe(self) -> str:
        return str(self.folder) if self.folder is not None else f"hub:{self.hub_id}"

    def check(self, expected: str) -> Path | str:
        """The folder, or the hub id, to load from; WeightsError saying what is wrong otherwise.
        ``expected`` names the model families the role takes (for the message)."""
        if self.error is not None:
            raise WeightsError(f"role {self.role!r}: {self.error}")
        if self.folder is None:
            if not _downloads_allowed():
                raise WeightsError(f"role {self.role!r} names the hub id {self.hub_id!r}, but downloads are off: "
                                   f"set {ENV_DOWNLOAD}=true, or put the weights in a folder "
                                   f"(nsx hf download on a machine that reaches the hub)")
            assert self.hub_id is not None
            return self.hub_id
        if self.role in PIPELINE_ROLES:
            return self._check_pipeline(self.folder, expected)
        if not self.folder.is_dir():
            raise WeightsError(f"role {self.role!r}: no folder {self.folder}; expected what save_pretrained "
                               f"writes for {expected} ({CONFIG} and *.safetensors)")
        if not (self.folder / CONFIG).is_file():
            raise WeightsError(f"role {self.role!r}: {self.folder} has no {CONFIG}; expected what save_pretrained "
                               f"writes for {expected}")
        if not any(p.suffix in WEIGHT_SUFFIXES for p in self.folder.iterdir()):
            raise WeightsError(f"role {self.role!r}: {self.folder} has no *.safetensors weights (pickled .bin "
                               f"weights are not loaded); re-save them with save_pretrained(safe_serialization=True)")
        return self.folder

    def _check_pipeline(self, folder: Path, expected: str) -> Path:
        """A pipeline folder: its index, and every component it names in a sub-folder of its own, a
        model's with safetensors weights. What kind of pipeline it is, the adapter checks."""
        if not folder.is_dir():
            raise WeightsError(f"role {self.role!r}: no folder {folder}; expected what a diffusers pipeline's "
                               f"save_pretrained writes for {expected} ({PIPELINE} and one sub-folder per component)")
        try:
            index = json.loads((folder / PIPELINE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WeightsError(f"role {self.role!r}: {folder} has no {PIPELINE}; expected what a diffusers "
                               f"pipeline's save_pretrained writes for {expected}, not a single model") from None
        except (OSError, ValueError) as e:
            raise WeightsError(f"role {self.role!r}: {folder} has an unreadable {PIPELINE} ({e})") from None
        if not isinstance(index, dict):
            raise WeightsError(f"role {self.role!r}: {folder / PIPELINE} is not an object; expected {expected}")
        for name in pipeline_components(index):
            part = folder / name
            if not part.is_dir():
                raise WeightsError(f"role {self.role!r}: {folder} has no {name}/ folder, which its {PIPELINE} "
                                   f"names; expected what save_pretrained writes for {expected}")
            # A model component has a config.json; the scheduler and tokenizer have none and no weights.
            if (part / CONFIG).is_file() and not any(p.suffix in WEIGHT_SUFFIXES for p in part.iterdir()):
                raise WeightsError(f"role {self.role!r}: {part} has no *.safetensors weights (pickled .bin weights "
                                   f"are not loaded); re-save the pipeline with "
                                   f"save_pretrained(safe_serialization=True)")
        return folder

    def digest(self) -> str:
        """sha256 over the role's files (names and bytes, sub-folders included: a pipeline keeps its
        components there), or over the hub id: part of the module's version, so new weights never
        serve old cached results. A missing folder hashes as such; ``check`` is where it is reported."""
        h = hashlib.sha256(self.role.encode() + b"\0")
        if self.folder is None:
            h.update(f"hub:{self.hub_id}".encode())
            return h.hexdigest()[:12]
        if not self.folder.is_dir():
            h.update(b"missing")
            return h.hexdigest()[:12]
        for p in sorted(self.folder.rglob("*")):
            if p.is_file() and p.suffix in HASHED_SUFFIXES:
                h.update(str(p.relative_to(self.folder)).encode() + b"\0")
                with p.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
        return h.hexdigest()[:12]


def pipeline_components(index: dict[str, object]) -> list[str]:
    """The components a ``model_index.json`` names (``"unet": ["diffusers", "UNet2DConditionModel"]``),
    leaving out its settings (``_class_name``, ``requires_safety_checker``) and the optional parts it
    lists as absent (``"safety_checker": [null, null]``)."""
    return sorted(k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2
                  and all(isinstance(x, str) for x in v))


def _downloads_allowed() -> bool:
    return os.environ.get(ENV_DOWNLOAD, "").strip().lower() in ("1", "true", "yes")


def configured_root() -> Path | None:
    value = os.environ.get(ENV_MODELS, "").strip()
    return Path(value).expanduser() if value else None


def role_weights(root: Path, roles: tuple[str, ...]) -> dict[str, RoleWeights]:
    """The configured roles under ``root``: its sub-folders named after roles, and what its
    ``models.json`` maps. A missing root or a broken mapping gives every role a folder that
    ``check`` reports, so /readyz names the problem."""
    if not root.is_dir():
        return {r: RoleWeights(r, root / r, error=f"{ENV_MODELS}={root} is not a folder; expected one sub-folder "
                                                  f"per role ({', '.join(roles)}) or a {MAPPING}") for r in roles}
    out = {r: RoleWeights(r, root / r) for r in roles if (root / r).is_dir()}
    mapping = root / MAPPING
    if not mapping.is_file():
        return out
    try:
        doc = json.loads(mapping.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("it is not an object of role → folder or 'hub:<id>'")
        unknown = [r for r in doc if r not in roles]
        if unknown:
            raise ValueError(f"it names the role {unknown[0]!r}; the roles are {', '.join(roles)}")
        bad = [r for r, w in doc.items() if not isinstance(w, str) or not w.strip()]
        if bad:
            raise ValueError(f"role {bad[0]!r} must map to a folder or 'hub:<id>'")
    except ValueError as e:
        # Every role then fails to load with this message, where /readyz and /v1/modules show it.
        return {r: RoleWeights(r, root / r, error=f"{mapping} is unusable: {e}") for r in roles}
    for role, where in doc.items():
        if where.startswith("hub:"):
            out[role] = RoleWeights(role, None, where[4:])
        else:
            folder = Path(where).expanduser()
            out[role] = RoleWeights(role, folder if folder.is_absolute() else root / folder)
    return out
