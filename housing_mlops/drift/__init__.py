"""Drift detection: requests served vs the training data of the model that served them.

- ``drift.profile``: the reference profile of a frame (``build_profile``), written by
  ``housing featurize`` and stored with each version by ``housing train``;
- ``drift.statistics``: pure statistics and verdicts (PSI, KS, Wasserstein), no I/O;
- ``drift.window``: ``--since`` / ``--until`` parsing;
- ``drift.summary``: the lines ``housing drift`` prints under its table;
- ``drift.check``: ``check_drift``, the only part that reads the request log and the
  registry (import it from there; it is not re-exported, so importing this package
  stays free of I/O).
"""

from housing_mlops.drift.profile import PROFILE_FORMAT, build_profile
from housing_mlops.drift.statistics import (
    HISTOGRAM_BINS,
    PREDICTION,
    PSI_EPSILON,
    bin_shares,
    compare_column,
    compare_window,
    dataset_verdict,
    ks_2samp,
    psi,
    psi_edges,
    verdict_for,
    wasserstein,
    wasserstein_scale,
)
from housing_mlops.drift.summary import summary_lines
from housing_mlops.drift.window import ACCEPTED_TIME_FORMS, parse_when, resolve_window

__all__ = [
    "ACCEPTED_TIME_FORMS",
    "HISTOGRAM_BINS",
    "PREDICTION",
    "PROFILE_FORMAT",
    "PSI_EPSILON",
    "bin_shares",
    "build_profile",
    "compare_column",
    "compare_window",
    "dataset_verdict",
    "ks_2samp",
    "parse_when",
    "psi",
    "psi_edges",
    "resolve_window",
    "summary_lines",
    "verdict_for",
    "wasserstein",
    "wasserstein_scale",
]
