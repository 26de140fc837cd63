"""Drift statistics (pure numpy), the drift tables and window readers, and DriftCollector.

Profiles are built directly with ``drift.build_profile``; the CLI and the registry-backed
reference are covered in test_drift_cli.py.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from synthetic import make_frame

from housing_mlops import columns, drift, store
from housing_mlops.config import DriftConfig
from housing_mlops.errors import UsageError

FEATURES = list(columns.FEATURES)
CFG = DriftConfig()  # the shipped defaults (psi 0.1/0.2, wasserstein 0.05/0.1)


def linear_prediction(frame: Any) -> np.ndarray:
    """A stand-in model: what a housing model mostly does with income and latitude."""
    return np.asarray(0.45 * frame["MedInc"] - 0.05 * (frame["Latitude"] - 36), dtype=float)


def window(frame: Any, predict=linear_prediction) -> dict[str, np.ndarray]:
    return {**{c: frame[c].to_numpy(dtype=float) for c in FEATURES}, "prediction": predict(frame)}


@pytest.fixture(scope="module")
def synthetic_profile() -> dict[str, Any]:
    train = make_frame(8000, seed=0)
    return drift.build_profile(window(train), sample_size=5000, seed=42)


def verdicts(result: dict[str, Any]) -> dict[str, str]:
    return {s["feature"]: s["verdict"] for s in result["scores"]}


# ------------------------------------------------------------------ pure statistics
def test_psi_is_zero_for_identical_shares_and_finite_with_empty_bins() -> None:
    shares = np.array([0.25, 0.25, 0.25, 0.25])
    assert drift.psi(shares, shares) == 0.0
    value = drift.psi(shares, np.array([0.5, 0.5, 0.0, 0.0]))
    assert math.isfinite(value) and value > 1.0
    # By hand: sum((c - r) ln(c / r)) with empty bins at epsilon.
    eps = drift.PSI_EPSILON
    expected = 2 * (0.25 * math.log(2)) + 2 * ((eps - 0.25) * math.log(eps / 0.25))
    assert value == pytest.approx(expected)


def test_psi_bins_come_from_reference_quantiles_and_ties_collapse() -> None:
    continuous = np.quantile(np.arange(1001.0), np.linspace(0, 1, 101))
    assert drift.psi_edges(continuous, 10) == pytest.approx(np.arange(100.0, 1000.0, 100.0))
    # A discrete column: most quantiles coincide, so there are fewer (unique) edges.
    discrete = np.quantile(np.repeat([1.0, 2.0, 3.0], [50, 30, 20]), np.linspace(0, 1, 101))
    edges = drift.psi_edges(discrete, 10)
    assert list(edges) == sorted(set(edges)) and len(edges) < 9
    shares = drift.bin_shares(np.array([-5.0, 150.0, 5000.0]), drift.psi_edges(continuous, 10))
    assert shares[0] == shares[1] == shares[-1] == pytest.approx(1 / 3)  # open outer bins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_and_wasserstein_equal_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, 300)
    b = rng.normal(0.2, 1.3, 170)
    ties_a = rng.integers(0, 6, 400).astype(float)
    ties_b = rng.integers(1, 7, 250).astype(float)
    for x, y in ((a, b), (ties_a, ties_b)):
        d, p = drift.ks_2samp(x, y)
        ref = stats.ks_2samp(x, y, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        assert p == pytest.approx(ref.pvalue, rel=0.15, abs=1e-6)
        assert drift.wasserstein(x, y) == pytest.approx(stats.wasserstein_distance(x, y))


def test_ks_pvalue_is_near_one_for_equal_samples_and_tiny_for_a_shift() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=5000)
    assert drift.ks_2samp(x, x) == (0.0, 1.0)
    assert drift.ks_2samp(x, rng.normal(0.3, 1, 5000))[1] < 1e-20


def test_verdict_needs_a_material_effect_and_a_significant_test() -> None:
    alpha = 0.001
    assert drift.verdict_for(0.01, 0.02, 0.5, CFG, alpha) == "ok"
    assert drift.verdict_for(0.15, 0.02, 1e-9, CFG, alpha) == "warn"  # PSI warn band
    assert drift.verdict_for(0.01, 0.07, 1e-9, CFG, alpha) == "warn"  # Wasserstein warn
    assert drift.verdict_for(0.25, 0.02, 1e-9, CFG, alpha) == "drift"  # PSI drift band
    assert drift.verdict_for(0.01, 0.12, 1e-9, CFG, alpha) == "drift"  # Wasserstein drift
    # A large distance on too little evidence is a warn, never drift ...
    assert drift.verdict_for(0.01, 0.30, 0.02, CFG, alpha) == "warn"
    # ... and a tiny p-value without a material effect is ok.
    assert drift.verdict_for(0.001, 0.01, 1e-30, CFG, alpha) == "ok"


def test_dataset_drift_by_share_or_by_a_hard_limit() -> None:
    def score(name: str, verdict: str, psi: float = 0.3, w: float = 0.2) -> dict[str, Any]:
        return {
            "feature": name,
            "kind": "feature",
            "verdict": verdict,
            "psi": psi,
            "wasserstein_norm": w,
        }

    few = [score(f, "drift" if i < 2 else "ok") for i, f in enumerate(FEATURES)]
    result = drift.dataset_verdict(few, CFG)
    assert result["drift_share"] == 0.25 and not result["dataset_drift"] and result["any_drift"]
    half = [score(f, "drift" if i < 4 else "ok") for i, f in enumerate(FEATURES)]
    assert drift.dataset_verdict(half, CFG)["dataset_drift"]
    hard = [
        score(f, "drift" if i == 0 else "ok", w=0.9 if i == 0 else 0.0)
        for i, f in enumerate(FEATURES)
    ]
    result = drift.dataset_verdict(hard, CFG)
    assert result["dataset_drift"] and result["hard_limit_features"] == ["MedInc"]
    # A drifting prediction fails the check but does not count towards the feature share.
    pred = [score(f, "ok") for f in FEATURES] + [
        {**score("prediction", "drift"), "kind": "prediction"}
    ]
    result = drift.dataset_verdict(pred, CFG)
    assert result["any_drift"] and not result["dataset_drift"] and result["drift_share"] == 0
    assert result["verdict"] == "drift"


def test_hard_limit_counts_only_for_features_marked_drift() -> None:
    """A *warn* feature past the Wasserstein hard limit is not dataset drift (README rule)."""
    # KS guard kept it warn: a huge distance on a tiny window, not significant.
    noisy = {"kind": "feature", "verdict": "warn", "psi": 0.05, "wasserstein_norm": 0.9}
    quiet = {"kind": "feature", "verdict": "ok", "psi": 0.01, "wasserstein_norm": 0.01}
    scores = [{"feature": "MedInc", **noisy}] + [{"feature": f, **quiet} for f in FEATURES[1:]]
    result = drift.dataset_verdict(scores, CFG)
    assert result["hard_limit_features"] == []
    assert result["dataset_drift"] is False and result["any_drift"] is False
    assert result["verdict"] == "warn"
    # The same distance on a feature marked drift passes the hard limit.
    scores[0] = {**scores[0], "verdict": "drift"}
    result = drift.dataset_verdict(scores, CFG)
    assert result["hard_limit_features"] == ["MedInc"] and result["dataset_drift"] is True


def judged(verdicts: dict[str, str], w: float = 0.2, **extra: Any) -> dict[str, Any]:
    """A drift result as check_drift returns it, from verdicts per column (others ok)."""
    scores = [
        {
            "feature": name,
            "kind": "prediction" if name == "prediction" else "feature",
            "verdict": verdicts.get(name, "ok"),
            "psi": 0.3 if verdicts.get(name, "ok") != "ok" else 0.01,
            "wasserstein_norm": w if verdicts.get(name, "ok") != "ok" else 0.01,
        }
        for name in [*FEATURES, "prediction"]
    ]
    thresholds = {k: getattr(CFG, k) for k in ("drift_share", "hard_limit_psi")}
    thresholds["hard_limit_wasserstein"] = CFG.hard_limit_wasserstein
    return {
        "rows": 1000,
        "sampled_rows": 1000,
        "other_versions": {},
        "thresholds": thresholds,
        "scores": scores,
        **drift.dataset_verdict(scores, CFG),
        **extra,
    }


def test_summary_explains_exit_6_when_columns_drift_without_dataset_drift() -> None:
    result = judged({"MedInc": "drift", "prediction": "drift"}, run_id=12)
    assert drift.summary_lines(result) == [
        "Dataset drift: no (1/8 features drifting, share 0.12, threshold 0.50; no drifting "
        "feature past the hard limits, PSI 1 or Wasserstein 0.5)",
        "Columns marked drift: MedInc, prediction",
        "Verdict: drift, exit 6: MedInc and the prediction are marked drift (a column marked "
        "drift fails the check even without dataset drift)",
        "Stored as drift run 12",
    ]


def test_summary_of_dataset_drift_by_a_hard_limit_and_of_a_drifting_prediction() -> None:
    lines = drift.summary_lines(judged({"MedInc": "drift", "HouseAge": "warn"}, w=0.9))
    assert lines == [
        "Dataset drift: YES (1/8 features drifting, share 0.12, threshold 0.50; hard limit "
        "passed by MedInc)",
        "Columns marked drift: MedInc",
        "Columns marked warn: HouseAge",
        "Verdict: drift, exit 6: MedInc is marked drift",
    ]
    lines = drift.summary_lines(judged({"prediction": "drift"}))
    assert lines[1:] == [
        "Columns marked drift: prediction",
        "Verdict: drift, exit 6: the prediction is marked drift (a column marked drift "
        "fails the check even without dataset drift)",
    ]


def test_summary_of_a_clean_or_warn_only_window_says_exit_0_and_notes_the_window() -> None:
    # A warn past the hard limit (the KS guard held it back) is no dataset drift.
    result = judged(
        {"MedInc": "warn", "AveRooms": "warn"},
        w=0.9,
        rows=120_000,
        sampled_rows=50_000,
        other_versions={"9": 300},
    )
    assert drift.summary_lines(result) == [
        "Dataset drift: no (0/8 features drifting, share 0.00, threshold 0.50; no drifting "
        "feature past the hard limits, PSI 1 or Wasserstein 0.5)",
        "Columns marked drift: none",
        "Columns marked warn: MedInc, AveRooms",
        "Verdict: warn, exit 0: no column is marked drift (MedInc and AveRooms only warn)",
        "Judged on a uniform sample of 50000 of 120000 rows",
        "Other versions in the window (v9: 300 rows): judge them with --model-version N",
    ]
    assert drift.summary_lines(judged({}))[1:] == [
        "Columns marked drift: none",
        "Verdict: ok, exit 0: no column is marked drift or warn",
    ]


@pytest.mark.parametrize("seed", range(20))
def test_summary_lines_never_contradict_each_other(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = [*FEATURES, "prediction"]
    verdicts = dict(zip(names, rng.choice(["ok", "warn", "drift"], len(names)), strict=True))
    lines = drift.summary_lines(judged(verdicts, w=float(rng.choice([0.2, 0.9]))))
    verdict_line = next(line for line in lines if line.startswith("Verdict: "))
    exits_6 = "drift" in verdicts.values()
    assert verdict_line.startswith("Verdict: drift, exit 6") == exits_6, (verdicts, lines)
    if lines[0].startswith("Dataset drift: YES"):
        assert exits_6, lines
    marked = [n for n in names if verdicts[n] == "drift"]
    assert lines[1] == f"Columns marked drift: {', '.join(marked) or 'none'}"


# ---------------------------------------------------------- boundaries of the rules
def test_psi_edges_of_two_quantiles_split_their_range_and_one_value_gives_one_bin() -> None:
    assert drift.psi_edges([0.0, 10.0], 5) == pytest.approx([2.0, 4.0, 6.0, 8.0])
    assert drift.psi_edges([5.0], 10).size == 0
    assert list(drift.bin_shares([1.0, 7.0], drift.psi_edges([5.0], 10))) == [1.0]


@pytest.mark.parametrize(("n", "m"), [(5, 4), (7, 3), (12, 9), (30, 20)])
def test_ks_pvalue_is_the_kolmogorov_tail_with_stephens_correction(n: int, m: int) -> None:
    """p = Q((sqrt(en) + 0.12 + 0.11 / sqrt(en)) * D): the correction matters on small samples."""
    from scipy import special

    rng = np.random.default_rng(n * m)
    a, b = rng.normal(size=n), rng.normal(0.8, 1, size=m)
    d, p = drift.ks_2samp(a, b)
    root = math.sqrt(n * m / (n + m))
    assert p == pytest.approx(special.kolmogorov((root + 0.12 + 0.11 / root) * d), rel=1e-9)


def test_an_empty_sample_gives_nan_distances_without_warnings() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by an empty sample's size
        for x, y in (([], [1.0, 2.0]), ([1.0, 2.0], []), ([], [1.0]), ([1.0], [])):
            assert all(math.isnan(v) for v in drift.ks_2samp(x, y)), (x, y)
            assert math.isnan(drift.wasserstein(x, y)), (x, y)


@pytest.mark.parametrize(
    ("psi", "w", "expected"),
    [
        # Each threshold is reached at its value exactly ("at or above").
        (0.2, 0.0, "drift"),
        (0.19999, 0.0, "warn"),
        (0.0, 0.1, "drift"),
        (0.0, 0.09999, "warn"),
        (0.1, 0.0, "warn"),
        (0.09999, 0.0, "ok"),
        (0.0, 0.05, "warn"),
        (0.0, 0.04999, "ok"),
    ],
)
def test_verdict_thresholds_are_reached_at_their_value(psi: float, w: float, expected: str) -> None:
    assert (CFG.psi_warn, CFG.psi_drift) == (0.1, 0.2)
    assert (CFG.wasserstein_warn, CFG.wasserstein_drift) == (0.05, 0.1)
    assert drift.verdict_for(psi, w, 1e-12, CFG, 0.001) == expected


def test_a_ks_pvalue_equal_to_alpha_is_not_significant() -> None:
    assert drift.verdict_for(0.3, 0.3, 0.001, CFG, 0.001) == "warn"
    assert drift.verdict_for(0.3, 0.3, 0.000999, CFG, 0.001) == "drift"


def _normal_column(n: int, shift: float = 0.0) -> np.ndarray:
    """n evenly spaced quantiles of a normal distribution: a noise-free sample."""
    from scipy.stats import norm

    return np.asarray(norm.ppf((np.arange(n) + 0.5) / n) + shift)


def test_the_ks_guard_is_bonferroni_divided_by_the_columns_judged() -> None:
    """A 0.3-std shift on 200 rows (p ~ 0.008): drift alone, warn among 9 columns."""
    ref = _normal_column(2000)
    column = {"sample": list(ref), "mean": 0.0, "std": float(ref.std(ddof=1))}
    shifted, unshifted = _normal_column(200, 0.3), _normal_column(200)
    alone = drift.compare_column(column, shifted, CFG)
    assert CFG.ks_pvalue / 9 < alone["ks_pvalue"] < CFG.ks_pvalue
    assert alone["wasserstein_norm"] > CFG.wasserstein_drift and alone["verdict"] == "drift"
    assert drift.compare_column(column, shifted, CFG, alpha=CFG.ks_pvalue / 9)["verdict"] == "warn"

    names = [f"c{i}" for i in range(9)]
    reference = {"columns": {name: column for name in names}}
    current = {name: shifted if name == "c0" else unshifted for name in names}
    nine = drift.compare_window(reference, current, CFG, columns=tuple(names))
    assert nine["ks_alpha"] == pytest.approx(CFG.ks_pvalue / 9)
    assert verdicts(nine)["c0"] == "warn" and not nine["any_drift"]
    one = drift.compare_window(reference, current, CFG, columns=("c0",))
    assert one["ks_alpha"] == CFG.ks_pvalue and verdicts(one) == {"c0": "drift"}


def test_only_columns_in_both_the_profile_and_the_window_are_judged(
    synthetic_profile: dict[str, Any],
) -> None:
    features_only = {c: make_frame(500, seed=4)[c].to_numpy(dtype=float) for c in FEATURES}
    result = drift.compare_window(synthetic_profile, features_only, CFG)
    assert list(verdicts(result)) == FEATURES  # no prediction in the window
    assert result["ks_alpha"] == pytest.approx(CFG.ks_pvalue / 8)
    partial = {"columns": {c: synthetic_profile["columns"][c] for c in FEATURES[:3]}}
    result = drift.compare_window(partial, window(make_frame(500, seed=4)), CFG)
    assert list(verdicts(result)) == FEATURES[:3]  # the rest has no reference


def test_column_statistics_report_the_reference_std_and_a_one_row_window() -> None:
    ref = _normal_column(1000)
    column = {"sample": list(ref), "mean": 0.0, "std": 1.5}
    result = drift.compare_column(column, [0.25], CFG)
    assert result["ref_std"] == 1.5 and result["ref_mean"] == 0.0
    assert result["rows"] == 1 and result["cur_mean"] == 0.25 and result["cur_std"] == 0.0


def test_an_all_nan_window_is_refused() -> None:
    column = {"sample": [1.0, 2.0, 3.0], "mean": 2.0, "std": 1.0}
    with pytest.raises(ValueError, match="must be non-empty"):
        drift.compare_column(column, [float("nan")] * 5, CFG)
    with pytest.raises(ValueError, match="must be non-empty"):
        drift.compare_column({**column, "sample": []}, [1.0], CFG)


def test_without_stored_quantiles_psi_bins_on_the_reference_sample() -> None:
    """An old profile without quantiles: the sample's quantiles give the same PSI."""
    rng = np.random.default_rng(8)
    profile = drift.build_profile({"x": rng.normal(size=1000)}, sample_size=1000)
    column = profile["columns"]["x"]
    shifted = rng.normal(0.5, 1, size=1000)
    stored = drift.compare_column(column, shifted, CFG)["psi"]
    assert stored > CFG.psi_drift
    assert drift.compare_column({**column, "quantiles": []}, shifted, CFG)["psi"] == (
        pytest.approx(stored)
    )


def test_a_constant_reference_scales_the_distance_by_its_value_at_least_1() -> None:
    def moved(before: float, after: float) -> float:
        ref = drift.build_profile({"c": np.full(100, before)}, 100)["columns"]["c"]
        return float(drift.compare_column(ref, np.full(50, after), CFG)["wasserstein_norm"])

    assert moved(4.0, 5.0) == pytest.approx(0.25)  # a quarter of the constant's value
    assert moved(-4.0, -5.0) == pytest.approx(0.25)
    assert moved(0.5, 1.0) == pytest.approx(0.5)  # small constants: an absolute change


def test_histograms_span_both_samples_on_30_bins() -> None:
    ref = _normal_column(1000)
    cur = _normal_column(400, 2.0)
    hist = drift.compare_column({"sample": list(ref), "std": 1.0}, cur, CFG)["hist"]
    assert len(hist["edges"]) == 31 and len(hist["reference"]) == len(hist["current"]) == 30
    assert hist["edges"][0] == pytest.approx(np.quantile(ref, 0.005), abs=1e-6)
    assert hist["edges"][-1] == pytest.approx(np.quantile(cur, 0.995), abs=1e-6)
    assert sum(hist["reference"]) == pytest.approx(1.0) and sum(hist["current"]) == (
        pytest.approx(1.0)
    )
    # A constant column on both sides: one bin of width 1/30 around it holds everything.
    flat = drift.compare_column({"sample": [3.0] * 50, "std": 0.0}, [3.0] * 20, CFG)["hist"]
    assert (flat["edges"][0], flat["edges"][-1]) == (2.5, 3.5)
    assert flat["reference"] == flat["current"] == [0.0] * 15 + [1.0] + [0.0] * 14


def _score(name: str, verdict: str, psi: float = 0.3, w: float = 0.2) -> dict[str, Any]:
    kind = "prediction" if name == "prediction" else "feature"
    return {"feature": name, "kind": kind, "verdict": verdict, "psi": psi, "wasserstein_norm": w}


@pytest.mark.parametrize(
    ("psi", "w", "hard"),
    [(1.0, 0.2, True), (0.99999, 0.2, False), (0.3, 0.5, True), (0.3, 0.49999, False)],
)
def test_hard_limits_are_reached_at_their_value(psi: float, w: float, hard: bool) -> None:
    assert (CFG.hard_limit_psi, CFG.hard_limit_wasserstein) == (1.0, 0.5)
    scores = [_score("MedInc", "drift", psi, w)] + [_score(f, "ok") for f in FEATURES[1:]]
    result = drift.dataset_verdict(scores, CFG)
    assert result["hard_limit_features"] == (["MedInc"] if hard else [])
    assert result["dataset_drift"] is hard


def test_the_drift_share_boundary_counts_features_only() -> None:
    """4 of 8 features (0.5) is dataset drift, 3 of 8 is not; the prediction adds nothing."""
    four = [_score(f, "drift" if i < 4 else "ok") for i, f in enumerate(FEATURES)]
    assert drift.dataset_verdict(four, CFG)["dataset_drift"] is True
    three = [_score(f, "drift" if i < 3 else "ok") for i, f in enumerate(FEATURES)]
    result = drift.dataset_verdict([*three, _score("prediction", "drift")], CFG)
    assert result["drift_share"] == 3 / 8 and result["features"] == 8
    assert result["dataset_drift"] is False and result["drifting_features"] == FEATURES[:3]
    # Only a prediction: no features to share, so never dataset drift.
    alone = drift.dataset_verdict([_score("prediction", "drift", 5.0, 5.0)], CFG)
    assert alone["features"] == 0 and alone["drift_share"] == 0.0
    assert alone["dataset_drift"] is False and alone["verdict"] == "drift"


def test_the_warn_list_names_warning_features_and_the_verdict_follows_the_worst_column() -> None:
    clean = drift.dataset_verdict([_score(f, "ok") for f in FEATURES], CFG)
    assert clean["verdict"] == "ok" and clean["warning_features"] == []
    assert clean["drifting_features"] == [] and clean["any_drift"] is False
    mixed = [
        _score(f, {1: "warn", 5: "warn", 6: "drift"}.get(i, "ok")) for i, f in enumerate(FEATURES)
    ]
    result = drift.dataset_verdict(mixed, CFG)
    assert result["warning_features"] == [FEATURES[1], FEATURES[5]]
    assert result["drifting_features"] == [FEATURES[6]] and result["verdict"] == "drift"
    # A warning prediction makes the verdict warn but is not a warning feature.
    pred_warn = [_score(f, "ok") for f in FEATURES] + [_score("prediction", "warn")]
    result = drift.dataset_verdict(pred_warn, CFG)
    assert result["verdict"] == "warn" and result["warning_features"] == []


# ------------------------------------------------------------- windows vs a profile
def test_a_window_from_the_training_distribution_drifts_nowhere(synthetic_profile) -> None:
    for seed, n in ((1, 3000), (2, 1000), (3, 300)):
        result = drift.compare_window(synthetic_profile, window(make_frame(n, seed=seed)), CFG)
        assert "drift" not in verdicts(result).values(), (n, verdicts(result))
        assert not result["dataset_drift"] and not result["any_drift"]
        assert len(result["scores"]) == 9


def test_medinc_times_1_2_drifts_medinc_and_the_prediction_only(synthetic_profile) -> None:
    frame = make_frame(3000, seed=1)
    frame["MedInc"] *= 1.2
    result = drift.compare_window(synthetic_profile, window(frame), CFG)
    marked = verdicts(result)
    assert marked["MedInc"] == "drift" and marked["prediction"] == "drift"
    assert all(marked[f] != "drift" for f in FEATURES if f != "MedInc"), marked
    assert result["drifting_features"] == ["MedInc"] and result["any_drift"]
    medinc = next(s for s in result["scores"] if s["feature"] == "MedInc")
    assert medinc["cur_mean"] == pytest.approx(1.2 * make_frame(3000, seed=1)["MedInc"].mean())
    assert medinc["ks_pvalue"] < 1e-10 and medinc["wasserstein_norm"] > 0.2


def test_small_windows_from_the_training_distribution_are_not_marked_drift(
    synthetic_profile,
) -> None:
    """200 rows (the default min_rows): distances are noisy, the KS guard keeps them warn."""
    rng = np.random.default_rng(7)
    big = make_frame(20000, seed=11)
    for _ in range(25):
        sample = big.iloc[rng.choice(len(big), 200, replace=False)]
        result = drift.compare_window(synthetic_profile, window(sample), CFG)
        assert not result["any_drift"], verdicts(result)


def test_constant_columns_are_judged_without_nan() -> None:
    n = 2000
    rng = np.random.default_rng(0)
    ref = drift.build_profile({"flag": np.ones(n), "x": rng.normal(size=n)}, 1000)
    same = drift.compare_window(
        ref, {"flag": np.ones(500), "x": rng.normal(size=500)}, CFG, columns=("flag", "x")
    )
    flag = same["scores"][0]
    assert flag["verdict"] == "ok" and flag["wasserstein_norm"] == 0.0 and flag["psi"] == 0.0
    assert flag["note"] and "constant" in flag["note"]
    changed = drift.compare_window(
        ref, {"flag": np.zeros(500), "x": rng.normal(size=500)}, CFG, columns=("flag", "x")
    )
    flag = changed["scores"][0]
    assert flag["verdict"] == "drift" and flag["wasserstein_norm"] == pytest.approx(1.0)
    # The other way round: a varied reference, a constant window.
    frozen = drift.compare_window(
        ref, {"flag": np.ones(500), "x": np.zeros(500)}, CFG, columns=("flag", "x")
    )
    assert frozen["scores"][1]["verdict"] == "drift"
    for result in (same, changed, frozen):
        for s in result["scores"]:
            assert all(math.isfinite(s[k]) for k in ("psi", "ks", "ks_pvalue", "wasserstein_norm"))


@pytest.mark.slow
def test_real_data_test_split_and_train_sample_drift_nowhere_medinc_shift_does(
    real_archive: Path, tmp_path: Path
) -> None:
    from sklearn.linear_model import LinearRegression

    from housing_mlops import data, featurize
    from housing_mlops.config import load_config

    settings = load_config(_real_config(tmp_path))
    data.fetch(settings, source=str(real_archive))
    featurize.featurize(settings)
    x_train, y_train = featurize.load_split(settings, "train")
    x_test, _ = featurize.load_split(settings, "test")
    model = LinearRegression().fit(x_train, y_train)
    predict = model.predict
    profile = drift.build_profile(
        {**{c: x_train[c] for c in FEATURES}, "prediction": predict(x_train)}, 5000
    )

    def judge(frame: Any) -> dict[str, Any]:
        return drift.compare_window(profile, window(frame, predict), CFG)

    assert not judge(x_test)["any_drift"], verdicts(judge(x_test))
    sample = x_train.sample(3000, random_state=1)
    assert not judge(sample)["any_drift"], verdicts(judge(sample))
    shifted = x_test.copy()
    shifted["MedInc"] *= 1.2
    marked = verdicts(judge(shifted))
    assert marked["MedInc"] == "drift" and marked["prediction"] == "drift", marked
    assert all(marked[f] != "drift" for f in FEATURES if f != "MedInc"), marked


def _real_config(tmp_path: Path) -> Path:
    from synthetic import write_config

    return write_config(tmp_path)


# ------------------------------------------------------------------------ windows
def test_parse_when_accepts_durations_and_iso_timestamps() -> None:
    now = 1_800_000_000.0
    assert drift.parse_when("30m", now) == now - 1800
    assert drift.parse_when("12h", now) == now - 43200
    assert drift.parse_when("7d", now) == now - 7 * 86400
    assert drift.parse_when("2w", now) == now - 14 * 86400
    naive = drift.parse_when("2026-01-31T12:00:00", now)
    assert naive == drift.parse_when("2026-01-31T12:00:00Z", now)  # naive means UTC
    assert drift.parse_when("2026-01-31T13:00:00+01:00", now) == naive
    assert drift.parse_when("2026-01-31", now) == naive - 12 * 3600


@pytest.mark.parametrize("value", ["5x", "yesterday", "7 days", "-3d", "", "2026-13-01"])
def test_malformed_times_are_usage_errors_naming_the_forms(value: str) -> None:
    with pytest.raises(UsageError) as info:
        drift.parse_when(value, time.time())
    assert "30m, 12h, 7d or 2w" in str(info.value) and "ISO-8601" in str(info.value)


def test_window_must_end_after_it_starts() -> None:
    with pytest.raises(UsageError, match="must be before"):
        drift.resolve_window("1h", "2h", "7d", time.time())
    since, until = drift.resolve_window(None, None, "7d", 1_800_000_000.0)
    assert (since, until) == (1_800_000_000.0 - 7 * 86400, 1_800_000_000.0)


# ---------------------------------------------------------------- store and readers
def log_rows(frame: Any, ts: float, version: str = "1", status: int = 200) -> list[dict]:
    preds = linear_prediction(frame)
    return [
        {
            "ts": ts + i * 1e-3,
            "request_id": f"r{version}-{ts}-{i}",
            "row_index": 0,
            "model_name": "test-housing",
            "model_version": version if status == 200 else None,
            **{c: float(frame[c].iloc[i]) for c in FEATURES},
            "prediction": float(preds[i]) if status == 200 else None,
            "latency_ms": 1.5,
            "status": status,
            "error": None if status == 200 else "bad",
        }
        for i in range(len(frame))
    ]


def test_window_readers_count_answered_rows_per_version_and_sample_uniformly(
    tmp_path: Path, write_request_log: Any
) -> None:
    path = tmp_path / "requests.db"
    now = time.time()
    write_request_log(path, log_rows(make_frame(3000, 1), now - 3600, "2"))
    write_request_log(path, log_rows(make_frame(500, 2), now - 1800, "1"))
    write_request_log(path, log_rows(make_frame(100, 3), now - 1700, "1", status=422))
    write_request_log(path, log_rows(make_frame(50, 4), now - 90000, "1"))  # a day back
    db = store.open_readonly(path)
    assert db is not None
    counts = store.window_counts(db, now - 7200, now)
    assert [(c["model_version"], c["rows"]) for c in counts] == [("2", 3000), ("1", 500)]
    assert store.window_counts(db, now - 7200, now, "1")[0]["rows"] == 500
    full = store.window_sample(db, now - 7200, now, "2", ["MedInc", "prediction"])
    assert full["MedInc"].shape == (3000,)
    assert np.allclose(np.sort(full["MedInc"]), np.sort(make_frame(3000, 1)["MedInc"]))
    part = store.window_sample(db, now - 7200, now, "2", ["MedInc"], fraction=0.2)
    again = store.window_sample(db, now - 7200, now, "2", ["MedInc"], fraction=0.2)
    assert 450 < part["MedInc"].size < 750  # ~600
    assert np.array_equal(part["MedInc"], again["MedInc"])  # deterministic
    assert set(part["MedInc"]) <= set(full["MedInc"])
    db.close()


def test_drift_runs_are_stored_and_read_back(tmp_path: Path, synthetic_profile) -> None:
    conn = store.open_log(tmp_path / "requests.db", create=True)
    assert store.latest_drift_run(conn) is None and store.drift_history(conn) == []
    frame = make_frame(1000, seed=5)
    frame["MedInc"] *= 1.2
    judged = drift.compare_window(synthetic_profile, window(frame), CFG)
    result = {
        "created_at": 1_800_000_000.0,
        "window": {"since_ts": 1.0, "until_ts": 2.0},
        "model_name": "m",
        "model_version": "3",
        "rows": 1000,
        "sampled_rows": 1000,
        "other_versions": {"2": 10},
        "reference": {"source": "registry:m/3", "rows": 8000},
        "thresholds": {"psi_drift": 0.2},
        **judged,
    }
    first = store.save_drift_run(conn, result)
    second = store.save_drift_run(conn, {**result, "created_at": 1_800_000_100.0})
    latest = store.latest_drift_run(conn)
    assert latest is not None and latest["id"] == second > first
    assert latest["model_version"] == "3" and latest["other_versions"] == {"2": 10}
    assert latest["drifting_features"] == ["MedInc"] and latest["any_drift"] is True
    assert [s["feature"] for s in latest["scores"]] == [*FEATURES, "prediction"]
    medinc = latest["scores"][0]
    assert medinc["verdict"] == "drift" and medinc["psi"] == pytest.approx(
        judged["scores"][0]["psi"]
    )
    assert len(medinc["hist"]["edges"]) == len(medinc["hist"]["current"]) + 1
    assert [r["id"] for r in store.drift_history(conn, limit=5)] == [second, first]


# ---------------------------------------------------------------------- collector
def _scrape(path: Path) -> dict[tuple[str, tuple], float]:
    from prometheus_client import CollectorRegistry

    from housing_mlops.serving.drift_collector import DriftCollector

    registry = CollectorRegistry()
    registry.register(DriftCollector(path))
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def test_drift_collector_exports_the_latest_run(tmp_path: Path, synthetic_profile) -> None:
    path = tmp_path / "requests.db"
    assert _scrape(path) == {}  # no log yet: nothing, and no file created
    assert not path.exists()
    db = store.open_log(path, create=True)
    assert _scrape(path) == {}  # a log but no drift run
    frame = make_frame(1000, seed=5)
    frame["MedInc"] *= 1.2
    judged = drift.compare_window(synthetic_profile, window(frame), CFG)
    store.save_drift_run(db, {"created_at": 1_800_000_000.0, "rows": 1000, **judged})
    db.close()
    samples = _scrape(path)
    medinc = next(s for s in judged["scores"] if s["feature"] == "MedInc")
    key = ("housing_drift_score", (("feature", "MedInc"), ("method", "wasserstein")))
    assert samples[key] == pytest.approx(medinc["wasserstein_norm"])
    assert samples[("housing_drift_score", (("feature", "prediction"), ("method", "psi")))] > 0
    for f in [*FEATURES, "prediction"]:
        for method in ("psi", "ks", "wasserstein"):
            assert ("housing_drift_score", (("feature", f), ("method", method))) in samples
    assert samples[("housing_dataset_drift", ())] == 0.0
    assert samples[("housing_drift_last_run_timestamp_seconds", ())] == 1_800_000_000.0
