"""Criterion and strategy names: the paper's, plain aliases, the baselines and the field's other criteria."""
from __future__ import annotations

__all__ = ['BASELINE_CRITERIA', 'CRITERIA', 'CRITERION_ALIASES', 'DATA_CRITERIA', 'PAPER_CRITERIA', 'STRATEGIES', 'canonical_criterion', 'canonical_strategy', 'is_data_driven', 'is_distance']


#: The paper's criterion names (upstream ``similarity.py``); "dis" in the name means a distance.
PAPER_CRITERIA: tuple[str, ...] = (
    "cosine_sim",
    "Euclide_dis",
    "VBD_dis",
    "Manhattan_dis",
    "Pearson_sim",
    "SNR_dis",
)
#: Plain aliases of the paper's names.
CRITERION_ALIASES: dict[str, str] = {
    "cosine": "cosine_sim",
    "euclidean": "Euclide_dis",
    "vbd": "VBD_dis",
    "manhattan": "Manhattan_dis",
    "pearson": "Pearson_sim",
    "snr": "SNR_dis",
}
#: Weight-only criteria run through the same pipeline: filter L1 norm, L2 norm, seeded uniform noise, and FPGM
#: (sum of Euclidean distances to the layer's other filters; filters near the geometric median go first).
BASELINE_CRITERIA: tuple[str, ...] = ("l1", "l2", "random", "fpgm")
#: Data-driven criteria, scored from feature maps of a few training batches (``coring.feature_criteria``):
#: HRank (average feature-map rank), CHIP (channel independence), first-order Taylor (|activation x gradient|).
DATA_CRITERIA: tuple[str, ...] = ("hrank", "chip", "taylor")
#: Every accepted criterion name.
CRITERIA: tuple[str, ...] = PAPER_CRITERIA + tuple(CRITERION_ALIASES) + BASELINE_CRITERIA + DATA_CRITERIA
#: Every accepted strategy name.
STRATEGIES: tuple[str, ...] = ("min_sum", "min_min", "sum")

_CRITERION_LOOKUP: dict[str, str] = {
    **{name.lower(): name for name in PAPER_CRITERIA},
    **CRITERION_ALIASES,
    **{name: name for name in BASELINE_CRITERIA + DATA_CRITERIA},
}


def canonical_criterion(name: str) -> str:
    """Return the canonical criterion name (the paper's spelling, or a name of ``BASELINE_CRITERIA``/``DATA_CRITERIA``).

    Matching is case-insensitive, so ``"vbd_dis"``, ``"VBD"`` and ``"vbd"`` all give ``"VBD_dis"``.
    Raises ValueError with a one-line message listing the valid names.
    """
    key = name.strip().lower() if isinstance(name, str) else None
    if key is None or key not in _CRITERION_LOOKUP:
        raise ValueError(f"unknown criterion {name!r}; valid criteria: {', '.join(CRITERIA)}")
    return _CRITERION_LOOKUP[key]


def canonical_strategy(name: str) -> str:
    """Return the canonical strategy name (``min_sum``, ``min_min`` or ``sum``), case-insensitively.

    Raises ValueError with a one-line message listing the valid names.
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
    if key not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}")
    return key


def is_distance(criterion: str) -> bool:
    """True when a (canonical or alias) CORING criterion is a distance (the paper's ``"dis" in name`` test)."""
    crit = canonical_criterion(criterion)
    if crit in BASELINE_CRITERIA + DATA_CRITERIA:
        raise ValueError(f"criterion {crit!r} is a baseline, not a pairwise metric")
    return "dis" in crit


def is_data_driven(criterion: str) -> bool:
    """True for the criteria scored from feature maps of training images (``hrank``, ``chip``, ``taylor``)."""
    return canonical_criterion(criterion) in DATA_CRITERIA
