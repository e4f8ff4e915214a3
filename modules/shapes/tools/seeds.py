"""Which world seeds each tool draws its scenes from, in one place, so no set of scenes is ever
another's: a figure measured on scenes a network was trained on would say nothing.

Scene ``i`` of a set is ``render_scene(world seed, i)``. A training run with seed ``s`` trains on
world seed ``s`` and scores its report on ``s + HELDOUT_SEED_OFFSET``; ``nsx bench shapes --seed s``
draws from ``s + BENCH_SEED_OFFSET`` (each of its conditions from its own block of
``CONDITION_STRIDE`` scene indices) and refuses weights whose report names its seed;
``bench/shapes_validation.py`` draws from ``VALIDATION_SEED``. The values are part of every figure
the tools have printed: changing one changes the scenes, so they never change.
"""

from __future__ import annotations

HELDOUT_SEED_OFFSET = 1_000_003  # training's held-out scenes: world seed = training seed + this
BENCH_SEED_OFFSET = 5_000_011  # the question bench's held-out scenes: world seed = --seed + this
CONDITION_STRIDE = 1_000_000  # the bench's conditions draw scene indices from blocks this far apart
VALIDATION_SEED = 777  # bench/shapes_validation.py: scenes neither training nor the question bench draws


def heldout_seed(train_seed: int) -> int:
    """The world seed of the scenes a training run with ``train_seed`` is scored on."""
    return train_seed + HELDOUT_SEED_OFFSET


def bench_seed(seed: int) -> int:
    """The world seed of the question bench's held-out scenes for ``--seed``."""
    return seed + BENCH_SEED_OFFSET


def question_seed(seed: int, condition: int) -> int:
    """The seed of the bench's questions for ``--seed`` on its ``condition``-th set of scenes."""
    return seed * 1000 + condition
