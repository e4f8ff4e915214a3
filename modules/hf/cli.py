"""The hf pack's commands: ``nsx hf download`` fetches each role's weights into a folder, on a
machine that may reach the hub (the service itself never downloads unless a deployment allows it);
``nsx hf check`` says, role by role, whether a folder is what the service will load.

Building the parsers imports nothing heavy; ``download`` imports huggingface_hub when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modules.commands import Commands

from . import ROLES
from .weights import (
    ENV_MODELS,
    HASHED_SUFFIXES,
    PIPELINE,
    PIPELINE_ROLES,
    RoleWeights,
    WeightsError,
    configured_root,
    role_weights,
)

# The checkpoints the adapters were written against: what ``download`` takes by default, but for
# the OPT_IN roles.
CHECKPOINTS: dict[str, str] = {
    "loc": "google/owlv2-base-patch16-ensemble",
    "clip": "openai/clip-vit-base-patch32",
    "vqa": "Salesforce/blip-vqa-base",
    "caption": "Salesforce/blip-image-captioning-base",
    "seg": "facebook/mask2former-swin-tiny-coco-panoptic",
    "depth": "depth-anything/Depth-Anything-V2-Small-hf",
    "inpaint": "stabilityai/stable-diffusion-2-inpainting",
}
# Roles fetched only when named: several GB each, ten times the rest together, and they need an extra.
OPT_IN: dict[str, str] = {"inpaint": "about 5 GB; REPLACE also needs pip install 'nsx[generate]'"}
# Only what from_pretrained reads, and never pickled weights.
PATTERNS = [f"*{s}" for s in HASHED_SUFFIXES]
# A pipeline's components, in their sub-folders. The weights by their exact names, because ``*``
# crosses folders: *.safetensors would also fetch a repo's single-file checkpoint at the top
# (5 GB more for stable-diffusion-2-inpainting) and every .fp16 variant, none of which diffusers loads.
PIPELINE_PATTERNS = [PIPELINE, "*/*.json", "*/*.txt", "*/*.model", "*/model.safetensors",
                     "*/diffusion_pytorch_model.safetensors", "*/model-*-of-*.safetensors",
                     "*/diffusion_pytorch_model-*-of-*.safetensors"]


def add_commands(commands: Commands) -> None:
    """The ``nsx.commands`` entry point: ``nsx hf download|check``."""
    hf = commands.subparsers.add_parser("hf", help="the hf pack's model weights: download, check")
    sub = hf.add_subparsers(dest="hf_command", required=True)
    dl = sub.add_parser("download", help="download each role's weights into a folder (needs the hub)")
    dl.add_argument("--out", type=Path, required=True, help="the folder NSX_HF_MODELS will name")
    dl.add_argument("roles", nargs="*", metavar="ROLE[=HUB_ID]",
                    help=f"roles to fetch, optionally with another checkpoint (default: every role but "
                         f"{', '.join(OPT_IN)}: "
                         f"{', '.join(f'{r}={c}' for r, c in CHECKPOINTS.items() if r not in OPT_IN)}; "
                         f"fetched only when named: "
                         f"{', '.join(f'{r}={CHECKPOINTS[r]} ({why})' for r, why in OPT_IN.items())})")
    dl.add_argument("--dry-run", action="store_true", help="say what would be downloaded, and stop")
    dl.set_defaults(fn=cmd_download)
    ck = sub.add_parser("check", help="check a weights folder role by role")
    ck.add_argument("folder", nargs="?", type=Path, help=f"default: ${ENV_MODELS}")
    ck.set_defaults(fn=cmd_check)


def wanted(specs: list[str]) -> dict[str, str]:
    """``['loc', 'vqa=dandelin/vilt-b32-finetuned-vqa']`` → role → hub id; ValueError for an unknown role.
    No specs: every role (``download`` with no roles names the default ones instead)."""
    if not specs:
        return dict(CHECKPOINTS)
    out: dict[str, str] = {}
    for spec in specs:
        role, _, hub = spec.partition("=")
        role = role.strip()
        if role not in CHECKPOINTS:
            raise ValueError(f"unknown role {role!r}; the roles are {', '.join(CHECKPOINTS)}")
        out[role] = hub.strip() or CHECKPOINTS[role]
    return out


def patterns(role: str) -> list[str]:
    """What ``download`` fetches of a role's repo."""
    return PIPELINE_PATTERNS if role in PIPELINE_ROLES else PATTERNS


def cmd_download(args: argparse.Namespace) -> int:
    try:
        plan = wanted(args.roles or [r for r in CHECKPOINTS if r not in OPT_IN])
    except ValueError as e:
        print(f"nsx hf download: {e}", file=sys.stderr)
        return 2
    for role, hub in plan.items():
        print(f"{role}: {hub} → {args.out / role}")
    for role, why in OPT_IN.items():
        if role not in plan:
            print(f"{role}: not fetched unless named ({why}): nsx hf download --out {args.out} {role}")
    if args.dry_run:
        return 0
    from huggingface_hub import snapshot_download

    for role, hub in plan.items():
        snapshot_download(repo_id=hub, local_dir=str(args.out / role), allow_patterns=patterns(role))
    return _report(role_weights(args.out, tuple(ROLES)))


def cmd_check(args: argparse.Namespace) -> int:
    folder = args.folder or configured_root()
    if folder is None:
        print(f"nsx hf check: name a folder, or set {ENV_MODELS}", file=sys.stderr)
        return 2
    found = role_weights(folder, tuple(ROLES))
    if not found:
        print(f"{folder}: no role folders ({', '.join(ROLES)}) and no models.json", file=sys.stderr)
        return 1
    return _report(found)


def _report(found: dict[str, RoleWeights]) -> int:
    from .inpaint import pipeline_problem  # here: it brings OpenCV, which building the parsers must not

    bad = 0
    for role, w in sorted(found.items()):
        try:
            w.check(f"the {role} role's models")
            if role in PIPELINE_ROLES and w.folder is not None:
                problem = pipeline_problem(w.folder)
                if problem is not None:
                    raise WeightsError(f"role {role!r}: {w.folder} {problem}; expected a Stable Diffusion "
                                       f"inpainting pipeline")
            size = sum(p.stat().st_size for p in w.folder.rglob("*") if p.is_file()) if w.folder else 0
            print(f"{role}: ok  {w.describe()}  {size / 2**20:.1f} MB  version {w.digest()}")
        except WeightsError as e:
            bad += 1
            print(f"{role}: error  {e}")
    return 1 if bad else 0
