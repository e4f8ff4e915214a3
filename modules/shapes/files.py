"""Where the pack's trained networks live and what their files are called: the service loads them
from here, training writes them here, the benchmarks and tests look for them here."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"  # the pack's own weights, shipped with it
DETECTOR_FILE = "detector.safetensors"
ATTRIBUTES_FILE = "attributes.safetensors"
REPORT_FILE = "report.json"  # the training run's report: its seeds, its held-out scores


def weight_files(weights: Path = WEIGHTS) -> tuple[Path, Path]:
    """The detector's and the attribute classifier's files in a weights directory."""
    return weights / DETECTOR_FILE, weights / ATTRIBUTES_FILE


def have_weights(weights: Path = WEIGHTS) -> bool:
    """Whether both networks are there (a checkout without trained weights has neither)."""
    return all(p.is_file() for p in weight_files(weights))
