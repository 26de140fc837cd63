"""The YAML config as frozen pydantic models.

The defaults live here, once; ``configs/default.yaml`` spells out the same values (a test
keeps the two equal) so that users see every setting they can change.

``load_config(path)`` is the only way settings are built; nothing is read at import.
Relative paths are resolved against the current working directory when the config is
loaded. A few environment variables override settings for deployment (``ENV_OVERRIDES``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from housing_mlops.errors import ConfigError
from housing_mlops.timestamps import ACCEPTED_TIME_FORMS, parse_time

DEFAULT_CONFIG_PATH = Path("configs/default.yaml")
STATLIB_SHA256 = "aaa5c9a6afe2225cc2aed2723682ae403280c4a3695a2ddda4ffb5d8215ea681"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_types(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML gives any key a number, a list or a boolean: pydantic's lax mode would read
        # `port: yes` as port 1, and the path resolution below would have turned a list
        # into a folder named "[1]".
        kind = cls.model_fields[info.field_name or ""].annotation
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError("must be a number, not true/false")
        if kind in (Path, Path | str):
            if not isinstance(value, str | Path):
                raise ValueError(f"must be a path (text), not {_yaml_kind(value)}")
            if not str(value).strip():
                raise ValueError("must be a path, not empty")
        return value


def _yaml_kind(value: Any) -> str:
    """How YAML spelled ``value``, for a message: a list, a mapping, true/false, a number."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "empty (null)"
    return "a number" if isinstance(value, int | float) else type(value).__name__


class PathsConfig(_Section):
    raw_dir: Path = Path("data/raw")
    processed_dir: Path = Path("data/processed")
    reports_dir: Path = Path("reports")


class DataConfig(_Section):
    urls: list[str] = Field(
        default_factory=lambda: ["https://ndownloader.figshare.com/files/5976036"]
    )
    sha256: str = STATLIB_SHA256
    archive_name: str = Field("cal_housing.tgz", min_length=1)
    timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=1)
    backoff_s: float = Field(1.0, ge=0)
    # A download or copy larger than this is aborted: a hostile or broken mirror must not
    # fill the disk before the checksum can fail. The real archive is 441,963 bytes.
    max_archive_bytes: int = Field(5_000_000, ge=1)

    @field_validator("sha256")
    @classmethod
    def _hex64(cls, value: str) -> str:
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower()):
            raise ValueError("must be a 64-character hex sha256")
        return value.lower()


# scikit-learn (train_test_split, KFold) and numpy take seeds in [0, 2**32 - 1]; outside it
# they fail mid-run as "unexpected", so the config says so at load.
SEED_MAX = 2**32 - 1


class SplitConfig(_Section):
    test_size: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(42, ge=0, le=SEED_MAX)


class FeaturesConfig(_Section):
    """Feature engineering inside the model pipeline (see features.py)."""

    rotations_deg: list[float] = Field(default_factory=lambda: [15.0, 30.0, 45.0, 60.0, 75.0])
    city_distances: bool = True
    knn_neighbors: list[int] = Field(default_factory=lambda: [8, 32])
    # More folds: train-time neighbour sets closer to serving's (which uses every row).
    knn_folds: int = Field(10, ge=2)
    # Also give the distance to the k-th neighbour (local density) for each k.
    knn_distances: bool = True
    # Also give the distance to the nearest block, and the block's house age, rooms,
    # population and occupancy minus their mean over this many nearest blocks (0: off).
    context_neighbors: int = Field(8, ge=0)
    # Every candidate on these features adds to its prediction residual_weight x the mean
    # residual (target minus its own fit) of the residual_neighbors nearest training blocks
    # (models.ResidualCorrected; 0 neighbours: off). Same neighbour query: no extra lookup.
    residual_neighbors: int = Field(5, ge=0)
    residual_weight: float = Field(0.4, ge=0, le=1)
    profile_sample_size: int = Field(5000, ge=100)


EstimatorKind = Literal["ridge", "random_forest", "hist_gradient_boosting", "lightgbm"]


class CandidateConfig(_Section):
    name: str = Field(pattern=r"^[a-z0-9_\-]+$")
    estimator: EstimatorKind
    params: dict[str, Any] = Field(default_factory=dict)
    # Raw-feature candidates skip the spatial features (useful as baselines).
    engineered_features: bool = True


class MlflowConfig(_Section):
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str = "mlruns/artifacts"
    # Empty names are refused by MLflow only after the training (the model's registration).
    experiment_name: str = Field("california-housing", min_length=1)
    registered_model_name: str = Field("california-housing", min_length=1)


class TrainConfig(_Section):
    cv_folds: int = Field(5, ge=2)
    seed: int = Field(42, ge=0, le=SEED_MAX)
    # One thread per fit: on a shared 2-core box OpenMP with 2 threads was 6-25x slower
    # than 1 thread whenever another process ran (configs/default.yaml says more).
    n_jobs: int = Field(1, ge=1)
    # Worker processes for the CV folds and final fits (1: all in the calling process).
    cv_workers: int = Field(2, ge=1)
    candidates: list[CandidateConfig]

    @model_validator(mode="after")
    def _unique_names(self) -> TrainConfig:
        names = [c.name for c in self.candidates]
        if len(names) != len(set(names)):
            raise ValueError(f"candidate names must be unique, got {names}")
        if not names:
            raise ValueError("at least one candidate is required")
        return self


class EvaluateConfig(_Section):
    # A row counts as coastal when its distance to the nearest point of a coarse
    # California coastline polyline is at most this many kilometres.
    coastal_km: float = Field(50.0, gt=0)
    # Northern vs southern California split at this latitude.
    north_south_latitude: float = 35.8
    # Plausible prediction range in $100k (the target lies in [0.15, 5.00001]).
    plausible_min: float = 0.0
    plausible_max: float = 7.0

    @model_validator(mode="after")
    def _a_range(self) -> EvaluateConfig:
        # Reversed, every prediction failed the plausibility check and evaluate blamed
        # the model.
        if self.plausible_min >= self.plausible_max:
            raise ValueError(
                f"plausible_min ({self.plausible_min}) must be below plausible_max "
                f"({self.plausible_max})"
            )
        return self


class PromoteConfig(_Section):
    metric: Literal["rmse", "mae", "r2"] = "rmse"
    max_rmse: float = Field(0.45, gt=0)
    min_r2: float = Field(0.85, le=1)  # above 1 no model could pass
    # The candidate must beat the champion by at least this much of the metric.
    min_improvement: float = Field(0.0, ge=0)
    # The live gate (`housing promote --from-live`): labelled rows the challenger needs,
    # the confidence of the bootstrap interval of RMSE_challenger - RMSE_champion (its
    # upper end must be < 0) and the number of bootstrap resamples (also `evaluate --live`).
    min_live_rows: int = Field(200, ge=1)
    live_confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap_samples: int = Field(1000, ge=100)


class ServeConfig(_Section):
    # Empty, uvicorn listened on every interface while the banner said http://:8000.
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    max_batch_size: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    # A SQLite file (created when missing) or a postgresql:// (postgres://) URL, kept as
    # a string: Path() would collapse its "//". The store parses and redacts it.
    request_log: Path | str = Path("data/requests.db")
    # The replica's name in the request log's `instance` column; empty: <hostname>:<pid>.
    instance: str = ""
    log_flush_interval_s: float = Field(1.0, gt=0)
    log_queue_size: int = Field(100_000, ge=1)
    reload_interval_s: float = Field(30.0, ge=0)
    reload_token_env: str = "HOUSING_RELOAD_TOKEN"  # noqa: S105 - a variable name, not a secret
    # The Bearer token of POST /feedback is read from this variable (unset: endpoint off).
    feedback_token_env: str = "HOUSING_FEEDBACK_TOKEN"  # noqa: S105 - a variable name
    microbatch_window_ms: float = Field(0.0, ge=0)
    microbatch_max_rows: int = Field(256, ge=1)
    microbatch_inline_rows: int = Field(64, ge=0)
    predictor_threads: int = Field(1, ge=1)
    # Where rows wait while the request log's database is unreachable (one file per
    # writer process; replayed in order when it is back, or by the next start).
    spool_dir: Path = Path("data/spool")
    # Live-quality gauges (housing_live_rmse ...): recomputed every interval (0: off) from
    # the labelled requests of the last window.
    live_quality_interval_s: float = Field(60.0, ge=0)
    live_quality_window_s: float = Field(86_400.0, gt=0)
    # The registry's `challenger` version beside the champion: off (not loaded for
    # answers), shadow (scored off the hot path and logged beside the champion's answer),
    # canary (answers canary_share of the requests, chosen by a hash of canary_key_header,
    # else of the request id). Env HOUSING_SERVE_CHALLENGER_MODE, --challenger-mode.
    challenger_mode: Literal["off", "shadow", "canary"] = "off"
    canary_share: float = Field(0.1, ge=0, le=1)
    canary_key_header: str = "X-Client-Key"
    # Rows waiting for the challenger's shadow score; beyond it they are logged without
    # one and counted (housing_shadow_dropped_total), never delaying an answer.
    shadow_queue_size: int = Field(10_000, ge=1)
    # The fast path's trees as compiled C (inference.compiled, a LightGBM model only; cached
    # in predict.compile_cache): auto = at once when this model's are cached, else built in
    # a background thread after the load and swapped in (readiness never waits); always =
    # built before the model serves; never. Used only when exactly LightGBM's numbers.
    # Env HOUSING_SERVE_COMPILED_TREES.
    compiled_trees: Literal["auto", "always", "never"] = "auto"

    @field_validator("challenger_mode", mode="before")
    @classmethod
    def _unquoted_off(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `off` as false.
        return "off" if value is False else value

    @field_validator("request_log", mode="before")
    @classmethod
    def _log_path_or_url(cls, value: Any) -> Any:
        if isinstance(value, str) and "://" in value:
            if not is_log_url(value):
                scheme = value.split("://", 1)[0]
                raise ValueError(f"a SQLite path or a postgresql:// URL, not {scheme}://")
            return value
        # (An empty string is left to _yaml_types: Path("") would be the current folder.)
        return Path(value) if isinstance(value, str) and value.strip() else value


class DriftConfig(_Section):
    default_since: str = "7d"
    min_rows: int = Field(200, ge=1)
    psi_bins: int = Field(10, ge=2)
    psi_warn: float = Field(0.1, gt=0)
    psi_drift: float = Field(0.2, gt=0)
    wasserstein_warn: float = Field(0.05, gt=0)
    wasserstein_drift: float = Field(0.1, gt=0)
    ks_pvalue: float = Field(0.01, gt=0, lt=1)
    drift_share: float = Field(0.5, gt=0, le=1)
    hard_limit_psi: float = Field(1.0, gt=0)
    hard_limit_wasserstein: float = Field(0.5, gt=0)
    sample_rows: int = Field(50_000, ge=1000)  # window rows read (uniform sample) per check

    @model_validator(mode="after")
    def _warn_before_drift(self) -> DriftConfig:
        # A warn threshold above the drift one: a column went from ok straight to drift,
        # and the report's "warn" never showed.
        for name in ("psi", "wasserstein"):
            warn, drift = getattr(self, f"{name}_warn"), getattr(self, f"{name}_drift")
            if warn > drift:
                raise ValueError(f"{name}_warn ({warn}) must be at most {name}_drift ({drift})")
        return self

    @field_validator("default_since")
    @classmethod
    def _a_time(cls, value: str) -> str:
        # The same rule as --since, checked here: a bad default is the config's fault,
        # not an option the user never typed.
        import time

        try:
            parse_time(value, time.time())
        except ValueError as exc:
            raise ValueError(f"{value!r} {exc}: use {ACCEPTED_TIME_FORMS}") from None
        return value


class PredictConfig(_Section):
    # Compiled trees for `housing predict` (inference.compiled): auto = for inputs of at least
    # compile_min_rows rows, or when this model's are already cached; always; never.
    compile: Literal["auto", "always", "never"] = "auto"
    compile_min_rows: int = Field(1_000_000, ge=0)
    # Where compiled trees are kept; empty: $XDG_CACHE_HOME/housing-mlops/trees.
    compile_cache: str = ""


class Settings(_Section):
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    features: FeaturesConfig = FeaturesConfig()
    mlflow: MlflowConfig = MlflowConfig()
    train: TrainConfig
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()
    serve: ServeConfig = ServeConfig()
    drift: DriftConfig = DriftConfig()
    predict: PredictConfig = PredictConfig()
    # Where the file came from (not part of the YAML).
    source: Path | None = Field(default=None, exclude=True)


def is_log_url(value: object) -> bool:
    """True when a request_log value is a PostgreSQL URL rather than a SQLite path."""
    return isinstance(value, str) and value.split("://", 1)[0].lower() in (
        "postgresql",
        "postgres",
    )


# Environment variable -> (section, key). Applied after the YAML is read.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "MLFLOW_TRACKING_URI": ("mlflow", "tracking_uri"),
    "HOUSING_MLFLOW_ARTIFACT_LOCATION": ("mlflow", "artifact_location"),
    "HOUSING_REGISTERED_MODEL": ("mlflow", "registered_model_name"),
    "HOUSING_SERVE_HOST": ("serve", "host"),
    "HOUSING_SERVE_PORT": ("serve", "port"),
    "HOUSING_SERVE_WORKERS": ("serve", "workers"),
    "HOUSING_REQUEST_LOG": ("serve", "request_log"),
    "HOUSING_INSTANCE": ("serve", "instance"),
    "HOUSING_SPOOL_DIR": ("serve", "spool_dir"),
    "HOUSING_COMPILE_CACHE": ("predict", "compile_cache"),
    "HOUSING_SERVE_CHALLENGER_MODE": ("serve", "challenger_mode"),
    "HOUSING_SERVE_COMPILED_TREES": ("serve", "compiled_trees"),
}


def _resolve_paths(raw: dict[str, Any]) -> None:
    """Make every path absolute against the current working directory."""
    cwd = Path.cwd()
    for section, key in (
        ("paths", "raw_dir"),
        ("paths", "processed_dir"),
        ("paths", "reports_dir"),
        ("serve", "request_log"),
        ("serve", "spool_dir"),
    ):
        sec = raw.setdefault(section, {})
        if isinstance(sec, dict) and isinstance(sec.get(key), str) and sec[key].strip():
            # (Anything else is left to the models, which name the key: a list, a number.)
            if "://" in str(sec[key]):
                continue  # a URL, not a path (serve.request_log checks its scheme)
            sec[key] = str((cwd / Path(str(sec[key])).expanduser()).resolve())


def with_request_log(settings: Settings, value: str | Path | None) -> Settings:
    """``settings`` with ``serve.request_log`` replaced (``--request-log``): a path
    (resolved against the current directory) or a postgresql:// URL (kept as is)."""
    if value is None:
        return settings
    text = str(value)
    if "://" not in text:
        text = str((Path.cwd() / Path(text).expanduser()).resolve())
    elif not is_log_url(text):
        raise ConfigError(
            "--request-log takes a SQLite file path or a "
            f"postgresql://user:password@host:port/database URL, not {text.split('://')[0]}://"
        )
    try:
        serve = ServeConfig.model_validate({**settings.serve.model_dump(), "request_log": text})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(Path("--request-log"), err)) from None
    return settings.model_copy(update={"serve": serve})


def _format_validation_error(
    path: Path, err: ValidationError, from_env: dict[str, str] | None = None
) -> str:
    """One line naming each bad key and where its value came from: the file, or (for a key
    in ``from_env``, ``"section.key" -> variable``) the environment variable that set it,
    whose value the file never held. Values are not repeated: a URL may carry a password."""
    parts, env_parts = [], []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<root>"
        env = (from_env or {}).get(".".join(str(x) for x in e["loc"][:2]))
        if env is not None:
            env_parts.append(f"{env} (overrides '{loc}' of {path}): {e['msg']}")
        elif e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif e["type"] == "missing":
            parts.append(f"missing key '{loc}'")
        else:
            parts.append(f"'{loc}': {e['msg']}")
    messages = [f"invalid config {path}: " + "; ".join(parts)] if parts else []
    if env_parts:
        messages.append("invalid environment variable " + "; ".join(env_parts))
    return "; ".join(messages)


def settings_from_dict(raw: dict[str, Any], source: Path | None = None) -> Settings:
    """Validate a dict (as read from YAML) into Settings, applying env overrides."""
    label = source or Path("<dict>")
    data: dict[str, Any] = json.loads(json.dumps(raw, default=str))
    from_env: dict[str, str] = {}  # "section.key" -> the variable that set it
    for env, (section, key) in ENV_OVERRIDES.items():
        value = os.environ.get(env)
        if value:
            sec = data.setdefault(section, {})
            if not isinstance(sec, dict):
                raise ConfigError(f"invalid config {label}: '{section}' must be a mapping")
            sec[key] = value
            from_env[f"{section}.{key}"] = env
    # Defaults for path fields must resolve too, so fill them before resolving.
    for section, model in (("paths", PathsConfig), ("serve", ServeConfig)):
        sec = data.setdefault(section, {})
        if isinstance(sec, dict):
            for name, field in model.model_fields.items():
                if field.annotation in (Path, Path | str) and name not in sec:
                    sec[name] = str(field.default)
    _resolve_paths(data)
    try:
        settings = Settings.model_validate({**data, "source": source})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(label, err, from_env)) from None
    return settings


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> Settings:
    """Read, validate and freeze the YAML config at ``path``."""
    import yaml

    path = Path(path)
    try:
        is_file = path.is_file()
    except OSError as exc:  # a folder on the way that this user may not enter
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    if not is_file:
        if path.is_dir():  # `-c configs`: there, but a folder (maybe the one holding it)
            # `-c ""` (an unset "$CONFIG") reads as the current folder.
            here = path == Path()
            example = DEFAULT_CONFIG_PATH if here else path / DEFAULT_CONFIG_PATH.name
            what = "the current folder (an empty --config?)" if here else "a directory"
            raise ConfigError(
                f"config {path} is {what}, not a YAML file: pass the file with "
                f"--config PATH (e.g. {example})"
            )
        raise ConfigError(
            f"config file not found: {path} (pass --config PATH or run from the project root)"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config {path} is not UTF-8 text (undecodable byte at offset {exc.start}): "
            "pass the YAML config with --config PATH"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {path} is not valid YAML{where}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping at the top level")
    return settings_from_dict(raw, source=path)


def config_hash(settings: Settings) -> str:
    """A stable sha256 of the validated settings (recorded with every run)."""
    payload = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
