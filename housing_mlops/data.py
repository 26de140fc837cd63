"""Raw data in, processed data out: download, verify, extract, validate, split, manifests.

``fetch`` gets the StatLib archive (``--from`` > ``$HOUSING_DATA_ARCHIVE`` > configured
URLs), verifies its sha256 and builds the California Housing frame exactly as
scikit-learn's ``fetch_california_housing`` does. ``featurize`` validates that frame,
splits it deterministically and writes the train/test files, a manifest and the
reference profile used for drift detection. Every file is written to a temporary file
in the same folder and renamed into place, so a failure never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from housing_mlops import __version__
from housing_mlops.columns import FEATURES, TARGET
from housing_mlops.errors import DataError, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from housing_mlops.config import Settings

log = logging.getLogger(__name__)

COLUMNS = [*FEATURES, TARGET]

ARCHIVE_MEMBER = "CaliforniaHousing/cal_housing.data"
RAW_PARQUET = "california_housing.parquet"
MANIFEST = "manifest.json"
TRAIN_PARQUET = "train.parquet"
TEST_PARQUET = "test.parquet"
REFERENCE_PROFILE = "reference_profile.json"
ARCHIVE_ENV = "HOUSING_DATA_ARCHIVE"

_CHUNK = 64 * 1024
_MAX_MEMBER_BYTES = 50 * 1024 * 1024  # the real member is 2 MB; refuse tar bombs

# Plausible ranges (inclusive bounds; None = unbounded). The real data lies well inside
# them; values outside point at a broken or foreign file rather than unusual districts.
SCHEMA_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    # column: (low, high, low_exclusive)
    "MedInc": (0.0, 20.0, True),
    "HouseAge": (1.0, 52.0, False),
    "AveRooms": (0.0, 200.0, True),
    "AveBedrms": (0.0, 50.0, True),
    "Population": (1.0, 50_000.0, False),
    "AveOccup": (0.0, 2_000.0, True),
    "Latitude": (32.0, 42.1, False),
    "Longitude": (-124.5, -114.0, False),
    "MedHouseVal": (0.14, 5.00001, False),
}

# progress(description, bytes_done, bytes_total_or_None), called as bytes arrive.
ProgressHook = Callable[[str, int, int | None], None]


# ------------------------------------------------------------------------ helpers
def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ensure_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(
            f"cannot write to {path}: a file is in the way; fix paths in the config"
        ) from None
    except OSError as exc:
        raise DataError(
            f"cannot write to {path}: {exc.strerror}; fix paths in the config"
        ) from None
    if not os.access(path, os.W_OK):
        raise DataError(f"cannot write to {path}: permission denied; fix paths in the config")


@contextlib.contextmanager
def _temp_path(final: Path) -> Iterator[Path]:
    """A temporary file next to ``final``; removed unless the caller renamed it away."""
    try:
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    except OSError as exc:
        raise DataError(f"cannot write to {final.parent}: {exc.strerror}") from None
    os.close(fd)
    tmp = Path(name)
    # mkstemp creates 0600; the renamed file should get the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        tmp.chmod(0o666 & ~umask)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _atomic_write(final: Path, write: Callable[[Path], object]) -> None:
    """Write via ``write(tmp)`` then rename over ``final``: readers never see half a file."""
    with _temp_path(final) as tmp:
        try:
            write(tmp)
            os.replace(tmp, final)
        except OSError as exc:
            raise DataError(f"cannot write {final}: {exc.strerror or exc}") from None


def _write_json(final: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2) + "\n"
    _atomic_write(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_parquet(final: Path, frame: pd.DataFrame) -> None:
    _atomic_write(final, lambda tmp: frame.to_parquet(tmp))


def frame_content_hash(df: pd.DataFrame) -> str:
    """A sha256 of a frame's columns, dtypes, index and float64 values (machine independent).

    The values are hashed as little-endian float64 in C (row-major) order, so the hash
    does not depend on parquet encoding, pandas version or the machine's byte order.
    """
    import numpy as np

    digest = hashlib.sha256()
    header = {
        "columns": [str(c) for c in df.columns],
        "dtypes": [str(t) for t in df.dtypes],
        "rows": int(len(df)),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    index = df.index.to_numpy()
    if index.dtype.kind in "iu":
        digest.update(np.ascontiguousarray(index, dtype="<i8").tobytes())
    else:  # not expected for our frames, but hash something stable rather than fail
        digest.update(json.dumps([str(i) for i in index]).encode())
    digest.update(np.ascontiguousarray(df.to_numpy(dtype="<f8")).tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------ download
class _SourceFailed(Exception):
    """One source failed; ``retry`` says whether trying the same source again may help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def _local_path(source: str) -> Path | None:
    """The local path a source names (plain path or file:// URL), or None for http(s)."""
    parts = urllib.parse.urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if scheme in ("http", "https"):
        return None
    if len(scheme) > 1:  # not a Windows drive letter
        raise DataError(
            f"unsupported source {source!r}: use a local path, file:// or http(s):// URL"
        )
    return Path(source).expanduser().resolve()


def _too_large(limit: int) -> _SourceFailed:
    return _SourceFailed(
        f"more than {limit} bytes (data.max_archive_bytes): not the archive, which is about "
        "442 kB; aborted",
        retry=False,
    )


def _copy_stream(
    src: IO[bytes],
    dest: Path,
    total: int | None,
    label: str,
    progress: ProgressHook | None,
    limit: int,
) -> tuple[int, str]:
    """Copy ``src`` into ``dest`` while hashing; returns (bytes, sha256).

    Stops with ``_SourceFailed`` as soon as more than ``limit`` bytes arrive (an endless
    body), or at once when the announced ``total`` is already larger.
    """
    if total is not None and total > limit:
        raise _too_large(limit)
    digest = hashlib.sha256()
    done = 0
    if progress:
        progress(label, 0, total)
    with dest.open("wb") as out:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            if done + len(chunk) > limit:
                raise _too_large(limit)
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(label, done, total)
    return done, digest.hexdigest()


def _download_once(
    url: str, dest: Path, timeout: float, progress: ProgressHook | None, limit: int
) -> tuple[int, str]:
    # Only http(s) URLs reach here (_local_path handles paths and file://).
    headers = {"User-Agent": f"housing-mlops/{__version__}"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            label = f"download from {urllib.parse.urlsplit(url).netloc}"
            size, sha = _copy_stream(response, dest, total, label, progress, limit)
    except urllib.error.HTTPError as exc:
        transient = exc.code >= 500 or exc.code in (408, 429)
        raise _SourceFailed(f"HTTP {exc.code} {exc.reason}", retry=transient) from None
    except urllib.error.URLError as exc:
        raise _SourceFailed(str(getattr(exc, "reason", exc)), retry=True) from None
    except TimeoutError:
        raise _SourceFailed(f"timed out after {timeout:g}s", retry=True) from None
    except (OSError, ValueError) as exc:  # reset connections, http.client errors
        raise _SourceFailed(f"{type(exc).__name__}: {exc}", retry=True) from None
    if total is not None and size != total:
        raise _SourceFailed(f"transfer truncated: got {size} of {total} bytes", retry=True)
    return size, sha


def _fetch_source(
    source: str,
    dest: Path,
    settings: Settings,
    progress: ProgressHook | None,
) -> None:
    """Put the archive from ``source`` into ``dest`` and verify its checksum."""
    expected = settings.data.sha256
    limit = settings.data.max_archive_bytes
    path = _local_path(source)
    if path is not None:
        try:
            with path.open("rb") as fh:
                size = path.stat().st_size
                _, sha = _copy_stream(fh, dest, size, f"copy {path.name}", progress, limit)
        except OSError as exc:
            raise _SourceFailed(f"cannot read {path}: {exc.strerror}", retry=False) from None
    else:
        attempts = settings.data.retries
        for attempt in range(1, attempts + 1):
            try:
                _, sha = _download_once(source, dest, settings.data.timeout_s, progress, limit)
                break
            except _SourceFailed as exc:
                if not exc.retry or attempt == attempts:
                    if attempts > 1 and exc.retry:
                        raise _SourceFailed(f"{exc} (after {attempts} attempts)", False) from None
                    raise
                wait = settings.data.backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "download of %s failed (%s); retry %d/%d in %.1fs",
                    source,
                    exc,
                    attempt,
                    attempts - 1,
                    wait,
                )
                time.sleep(wait)
    if sha != expected:
        raise _SourceFailed(f"checksum mismatch: expected sha256 {expected}, got {sha}", False)


def _sources(settings: Settings, source: str | None) -> tuple[list[str], str]:
    """The sources to try, and where they came from (for error messages)."""
    if source:
        return [source], "--from"
    env = os.environ.get(ARCHIVE_ENV)
    if env:
        return [env], f"${ARCHIVE_ENV}"
    if not settings.data.urls:
        raise DataError(
            "no data source: data.urls is empty; pass `--from PATH` or set $HOUSING_DATA_ARCHIVE"
        )
    return list(settings.data.urls), "data.urls"


# ------------------------------------------------------------------------ extract
def _read_member(path: Path, label: str | None = None) -> bytes:
    """Read only ``cal_housing.data`` from the archive (no extraction to disk).

    ``label`` names the archive in messages (the source, rather than a temporary file).
    """
    hint = "rerun `housing fetch --force`" if label is None else "check that source"
    archive = label or str(path)
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            try:
                member = tar.getmember(ARCHIVE_MEMBER)
            except KeyError:
                raise DataError(
                    f"archive {archive} has no {ARCHIVE_MEMBER}: it is not the StatLib "
                    "California Housing archive"
                ) from None
            if not member.isfile() or member.size > _MAX_MEMBER_BYTES:
                raise DataError(f"archive {archive}: {ARCHIVE_MEMBER} is not a plain data file")
            fh = tar.extractfile(member)
            if fh is None:
                raise DataError(f"archive {archive}: cannot read {ARCHIVE_MEMBER}")
            data = fh.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"archive {archive} is corrupt or truncated ({type(exc).__name__}: {exc}); {hint}"
        ) from None
    if len(data) != member.size:
        raise DataError(f"archive {archive} is truncated; {hint}")
    return data


def _frame_from_member(data: bytes, archive: Path | str) -> pd.DataFrame:
    """Build the frame exactly as sklearn.datasets.fetch_california_housing does."""
    import numpy as np
    import pandas as pd

    try:
        raw = np.loadtxt(io.BytesIO(data), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"archive {archive}: {ARCHIVE_MEMBER} is malformed ({exc})") from None
    if raw.shape[1] != 9 or raw.shape[0] == 0:
        raise DataError(
            f"archive {archive}: {ARCHIVE_MEMBER} has shape {raw.shape}, expected (n, 9)"
        )
    # Same column order and arithmetic as scikit-learn, so the values match bit for bit.
    raw = raw[:, [8, 7, 2, 3, 4, 5, 6, 1, 0]]
    target, features = raw[:, 0] / 100000.0, raw[:, 1:].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        features[:, 2] /= features[:, 5]
        features[:, 3] /= features[:, 5]
        features[:, 5] = features[:, 4] / features[:, 5]
    frame = pd.DataFrame(features, columns=FEATURES)
    frame[TARGET] = target
    return frame


def read_raw_manifest(settings: Settings) -> dict[str, Any]:
    """The manifest written by ``fetch``; DataError if fetch has not run."""
    path = Path(settings.paths.raw_dir) / MANIFEST
    return _read_json(path, "run `housing fetch` first")


def _read_json(path: Path, hint: str) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: {hint}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc}): {hint}") from None
    if not isinstance(payload, dict):
        raise DataError(f"{path} is not a JSON object: {hint}")
    return payload


# ------------------------------------------------------------------------ fetch
def fetch(
    settings: Settings,
    source: str | None = None,
    force: bool = False,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Download (or reuse) and verify the archive; write the raw parquet and its manifest."""
    raw_dir = Path(settings.paths.raw_dir)
    # Folders this run creates; a failed run removes them again when they are still empty,
    # so a typo in --from or an unreachable mirror leaves no empty data/raw/ behind.
    created = _missing_dirs(raw_dir)
    try:
        _ensure_dir(raw_dir)
        return _fetch_into(raw_dir, settings, source, force, progress)
    except BaseException:
        for folder in created:  # deepest first; rmdir refuses a folder that is not empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


def _fetch_into(
    raw_dir: Path,
    settings: Settings,
    source: str | None,
    force: bool,
    progress: ProgressHook | None,
) -> dict[str, Any]:
    archive = raw_dir / settings.data.archive_name
    expected = settings.data.sha256
    sources, origin = _sources(settings, source)
    if origin != "data.urls":
        # An explicit --from / $HOUSING_DATA_ARCHIVE typo should not hide behind the cache.
        _check_local_source(sources[0], origin)

    previous: dict[str, Any] = {}
    with contextlib.suppress(DataError):
        previous = read_raw_manifest(settings)

    cached = not force and archive.is_file() and _sha256_file(archive) == expected
    if cached:
        log.info("archive %s already matches sha256 %s; not downloading", archive, expected[:12])
        used = previous.get("source") if previous.get("archive_sha256") == expected else None
        used = used or str(archive)
        frame = _frame_from_member(_read_member(archive), archive)
    else:
        failures: list[str] = []
        used = ""
        frame = None
        for number, candidate in enumerate(sources, start=1):
            try:
                path = _check_local_source(candidate, origin)
            except DataError as exc:
                if origin != "data.urls":
                    raise
                failures.append(f"{candidate}: {exc}")  # a configured mirror: try the next
                continue
            with _temp_path(archive) as tmp:
                try:
                    _fetch_source(candidate, tmp, settings, progress)
                except _SourceFailed as exc:
                    failures.append(f"{candidate}: {exc}")
                    if number < len(sources):
                        log.warning("could not fetch %s: %s; trying the next URL", candidate, exc)
                    continue
                # Parse before the rename: a bad archive must not replace a good one.
                label = str(path) if path is not None else candidate
                frame = _frame_from_member(_read_member(tmp, label), label)
                try:
                    os.replace(tmp, archive)
                except OSError as exc:
                    raise DataError(f"cannot write {archive}: {exc.strerror}") from None
                used = label
                break
        if frame is None:
            raise DataError(_failure_message(failures))

    content_hash = frame_content_hash(frame)
    parquet = raw_dir / RAW_PARQUET
    _write_parquet(parquet, frame)
    fetched_at = (
        previous.get("fetched_at")
        if cached and previous.get("archive_sha256") == expected and previous.get("fetched_at")
        else _now()
    )
    manifest = {
        "source": used,
        "archive_sha256": expected,
        "content_hash": content_hash,
        "rows": int(len(frame)),
        "columns": list(COLUMNS),
        "fetched_at": fetched_at,
        "package_version": __version__,
    }
    _write_json(raw_dir / MANIFEST, manifest)
    return {
        **manifest,
        "archive": str(archive),
        "parquet": str(parquet),
        "manifest": str(raw_dir / MANIFEST),
        "cached": cached,
    }


def _check_local_source(source: str, origin: str) -> Path | None:
    """The local path of ``source`` (None for http) after checking that the file exists."""
    path = _local_path(source)
    if path is not None and not path.is_file():
        what = f"{origin} path" if origin != "data.urls" else "configured path"
        if path.is_dir():
            raise DataError(f"{what} is a folder, not the archive: {path}")
        raise DataError(f"{what} not found: {path}")
    return path


def _failure_message(failures: list[str]) -> str:
    hint = "pass `--from PATH` with a local copy of the archive (or set $HOUSING_DATA_ARCHIVE)"
    if len(failures) == 1:
        return f"could not fetch {failures[0]}; {hint}"
    return f"could not fetch the archive from any of {len(failures)} sources: " + (
        "; ".join(failures) + f"; {hint}"
    )


# ------------------------------------------------------------------------ schema
def validate_frame(df: pd.DataFrame, label: str = "raw data", max_rows: int = 5) -> None:
    """Raise DataError naming offending columns and rows unless ``df`` fits the schema."""
    import numpy as np

    columns = [str(c) for c in df.columns]
    if columns != COLUMNS:
        missing = [c for c in COLUMNS if c not in columns]
        extra = [c for c in columns if c not in COLUMNS]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"unexpected {extra}")
        if not detail:
            detail.append(f"order {columns}")
        raise DataError(f"{label} has the wrong columns ({', '.join(detail)}); expected {COLUMNS}")
    wrong = [f"{c}: {df[c].dtype}" for c in COLUMNS if df[c].dtype.kind != "f"]
    if wrong:
        raise DataError(f"{label} has non-float columns ({', '.join(wrong)})")
    if len(df) == 0:
        raise DataError(f"{label} has no rows")

    problems: list[str] = []

    def _rows(mask: np.ndarray) -> str:
        idx = [str(i) for i in df.index[mask][:max_rows]]
        more = "" if mask.sum() <= max_rows else ", ..."
        return f"{int(mask.sum())} row(s): {', '.join(idx)}{more}"

    for col in COLUMNS:
        values = df[col].to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            problems.append(f"{col} has NaN/inf in {_rows(bad)}")
        low, high, low_open = SCHEMA_RANGES[col]
        finite = np.where(bad, np.nan, values)
        with np.errstate(invalid="ignore"):
            out = np.zeros(len(values), dtype=bool)
            if low is not None:
                out |= (finite <= low) if low_open else (finite < low)
            if high is not None:
                out |= finite > high
        if out.any():
            bracket = "(" if low_open else "["
            problems.append(f"{col} outside {bracket}{low}, {high}] in {_rows(out)}")
    if problems:
        raise DataError(f"{label} failed validation: " + "; ".join(problems))


# ------------------------------------------------------------------------ featurize
def _read_parquet(path: Path, rebuild_with: str) -> pd.DataFrame:
    """Read a parquet file we wrote; an unreadable one is a DataError naming the fix."""
    import pandas as pd  # after the callers' checks: a missing file should fail fast

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for bad files
        raise DataError(
            f"cannot read {path} ({type(exc).__name__}); rerun `{rebuild_with}`"
        ) from None


def _read_raw_frame(settings: Settings) -> tuple[pd.DataFrame, dict[str, Any]]:
    raw_dir = Path(settings.paths.raw_dir)
    parquet = raw_dir / RAW_PARQUET
    if not parquet.is_file():
        raise DataError(f"no raw data at {parquet}: run `housing fetch` first")
    manifest = read_raw_manifest(settings)
    frame = _read_parquet(parquet, "housing fetch --force")
    expected = manifest.get("content_hash")
    if [str(c) for c in frame.columns] == COLUMNS:
        got = frame_content_hash(frame)
        if got != expected:
            raise DataError(
                f"{parquet} does not match its manifest (content hash {got[:12]}, "
                f"manifest {str(expected)[:12]}): it was modified; rerun `housing fetch --force`"
            )
    return frame, manifest


def featurize(settings: Settings) -> dict[str, Any]:
    """Validate the raw frame, split it deterministically and write data/processed/."""
    frame, raw_manifest = _read_raw_frame(settings)
    from sklearn.model_selection import train_test_split

    from housing_mlops.config import config_hash
    from housing_mlops.drift import build_profile

    validate_frame(frame, label=f"raw data {Path(settings.paths.raw_dir) / RAW_PARQUET}")
    # Hash check ran on the columns-ok path; a frame with other columns failed validation.
    data_version = str(raw_manifest["content_hash"])

    train, test = train_test_split(
        frame, test_size=settings.split.test_size, random_state=settings.split.seed
    )
    out = Path(settings.paths.processed_dir)
    _ensure_dir(out)
    paths = {
        name: out / fname for name, fname in (("train", TRAIN_PARQUET), ("test", TEST_PARQUET))
    }
    _write_parquet(paths["train"], train)
    _write_parquet(paths["test"], test)

    profile = build_profile(
        {f: train[f].to_numpy() for f in FEATURES},
        sample_size=settings.features.profile_sample_size,
        seed=settings.split.seed,
    )
    _write_json(out / REFERENCE_PROFILE, profile)

    manifest = {
        "raw_content_hash": data_version,
        "train_hash": frame_content_hash(train),
        "test_hash": frame_content_hash(test),
        "train_rows": int(len(train)),
        "test_rows": int(len(test)),
        "test_size": settings.split.test_size,
        "seed": settings.split.seed,
        "features": list(FEATURES),
        "target": TARGET,
        "config_hash": config_hash(settings),
        "created_at": _now(),
        "package_version": __version__,
    }
    # The manifest goes last: its presence means the split above is complete.
    _write_json(out / MANIFEST, manifest)
    return {
        **manifest,
        "data_version": data_version,
        "train_path": str(paths["train"]),
        "test_path": str(paths["test"]),
        "profile_path": str(out / REFERENCE_PROFILE),
        "manifest_path": str(out / MANIFEST),
    }


def read_processed_manifest(settings: Settings) -> dict[str, Any]:
    """The manifest written by ``featurize``; DataError if featurize has not run."""
    path = Path(settings.paths.processed_dir) / MANIFEST
    return _read_json(path, "run `housing featurize` first")


def load_split(settings: Settings, name: str) -> tuple[pd.DataFrame, pd.Series]:
    """(X, y) of the ``train`` or ``test`` split, verified against the processed manifest."""
    files = {"train": TRAIN_PARQUET, "test": TEST_PARQUET}
    if name not in files:
        raise UsageError(f"unknown split {name!r}: use 'train' or 'test'")
    path = Path(settings.paths.processed_dir) / files[name]
    if not path.is_file():
        raise DataError(f"no {name} split at {path}: run `housing featurize` first")
    manifest = read_processed_manifest(settings)
    frame = _read_parquet(path, "housing featurize")
    if frame_content_hash(frame) != manifest.get(f"{name}_hash"):
        raise DataError(
            f"{path} does not match {Path(settings.paths.processed_dir) / MANIFEST}: "
            "rerun `housing featurize`"
        )
    return frame[FEATURES], frame[TARGET]
