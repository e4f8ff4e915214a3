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
from .weights import ENV_MODELS, HASHED_SUFFIXES, RoleWeights, WeightsError, configured_root, role_weights

# The checkpoints the adapters were written against: what ``download`` takes by default.
CHECKPOINTS: dict[str, str] = {
    "loc": "google/owlv2-base-patch16-ensemble",
    "clip": "openai/clip-vit-base-patch32",
    "vqa": "Salesforce/blip-vqa-base",
    "caption": "Salesforce/blip-image-captioning-base",
    "seg": "facebook/mask2former-swin-tiny-coco-panoptic",
    "depth": "depth-anything/Depth-Anything-V2-Small-hf",
}
# Only what from_pretrained reads, and never pickled weights.
PATTERNS = [f"*{s}" for s in HASHED_SUFFIXES]


def add_commands(commands: Commands) -> None:
    """The ``nsx.commands`` entry point: ``nsx hf download|check``."""
    hf = commands.subparsers.add_parser("hf", help="the hf pack's model weights: download, check")
    sub = hf.add_subparsers(dest="hf_command", required=True)
    dl = sub.add_parser("download", help="download each role's weights into a folder (needs the hub)")
    dl.add_argument("--out", type=Path, required=True, help="the folder NSX_HF_MODELS will name")
    dl.add_argument("roles", nargs="*", metavar="ROLE[=HUB_ID]",
                    help=f"roles to fetch, optionally with another checkpoint (default: all, "
                         f"{', '.join(f'{r}={c}' for r, c in CHECKPOINTS.items())})")
    dl.add_argument("--dry-run", action="store_true", help="say what would be downloaded, and stop")
    dl.set_defaults(fn=cmd_download)
    ck = sub.add_parser("check", help="check a weights folder role by role")
    ck.add_argument("folder", nargs="?", type=Path, help=f"default: ${ENV_MODELS}")
    ck.set_defaults(fn=cmd_check)


def wanted(specs: list[str]) -> dict[str, str]:
    """``['loc', 'vqa=dandelin/vilt-b32-finetuned-vqa']`` → role → hub id; ValueError for an unknown role."""
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


def cmd_download(args: argparse.Namespace) -> int:
    try:
        plan = wanted(args.roles)
    except ValueError as e:
        print(f"nsx hf download: {e}", file=sys.stderr)
        return 2
    for role, hub in plan.items():
        print(f"{role}: {hub} → {args.out / role}")
    if args.dry_run:
        return 0
    from huggingface_hub import snapshot_download

    for role, hub in plan.items():
        snapshot_download(repo_id=hub, local_dir=str(args.out / role), allow_patterns=PATTERNS)
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
    bad = 0
    for role, w in sorted(found.items()):
        try:
            w.check(f"the {role} role's models")
            size = sum(p.stat().st_size for p in w.folder.rglob("*") if p.is_file()) if w.folder else 0
            print(f"{role}: ok  {w.describe()}  {size / 2**20:.1f} MB  version {w.digest()}")
        except WeightsError as e:
            bad += 1
            print(f"{role}: error  {e}")
    return 1 if bad else 0
