"""Raw data: fetch the archive, verify its checksum, extract the frame, write data/raw/.

``fetch`` gets the StatLib archive (``--from`` > ``$HOUSING_DATA_ARCHIVE`` > configured
URLs; HTTP through ``housing_mlops.download``), verifies its sha256 and builds the
California Housing frame exactly as scikit-learn's ``fetch_california_housing`` does, then
writes the raw parquet and its manifest. The next stage, ``housing_mlops.featurize``,
reads them back with ``read_raw_frame``. Every file is written through
``files.atomic_write``, so a failure never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from housing_mlops import __version__, download, files
from housing_mlops.columns import FEATURES, TARGET
from housing_mlops.download import DownloadFailed, ProgressHook
from housing_mlops.errors import DataError
from housing_mlops.timestamps import iso_utc

if TYPE_CHECKING:
    import pandas as pd

    from housing_mlops.config import Settings

log = logging.getLogger(__name__)

COLUMNS = [*FEATURES, TARGET]

ARCHIVE_MEMBER = "CaliforniaHousing/cal_housing.data"
RAW_PARQUET = "california_housing.parquet"
MANIFEST = "manifest.json"
ARCHIVE_ENV = "HOUSING_DATA_ARCHIVE"

_MAX_MEMBER_BYTES = 50 * 1024 * 1024  # the real member is 2 MB; refuse tar bombs


# ------------------------------------------------------------------------ helpers
def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) or raise DataError saying what is in the way."""
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


def write_atomically(final: Path, write: Callable[[Path], object]) -> None:
    """files.atomic_write, with a failure as a DataError naming the file."""
    try:
        files.atomic_write(final, write)
    except OSError as exc:
        raise DataError(f"cannot write {final}: {exc.strerror or exc}") from None


def write_json(final: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2) + "\n"
    write_atomically(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_parquet(final: Path, frame: pd.DataFrame) -> None:
    write_atomically(final, lambda tmp: frame.to_parquet(tmp))


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
def _local_path(source: str) -> Path | None:
    """The local path a source names (plain path or file:// URL), or None for http(s)."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", source)
    scheme = match.group(1).lower() if match else ""
    if scheme == "file":
        return download.file_url_path(source)
    if scheme in ("http", "https"):
        return None
    if len(scheme) > 1:  # not a Windows drive letter
        raise DataError(
            f"unsupported source {source!r}: use a local path, file:// or http(s):// URL"
        )
    return Path(source).expanduser().resolve()


def _too_large(limit: int) -> DownloadFailed:
    return DownloadFailed(
        f"more than {limit} bytes (data.max_archive_bytes): not the archive, which is about "
        "442 kB; aborted",
        retry=False,
    )


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
    try:
        if path is not None:
            try:
                with path.open("rb") as fh:
                    size = path.stat().st_size
                    chunks = download.file_chunks(fh)
                    _, sha = download.copy_capped(
                        chunks, dest, size, f"copy {path.name}", progress, limit
                    )
            except OSError as exc:
                raise DownloadFailed(f"cannot read {path}: {exc.strerror}", retry=False) from None
        else:
            _, sha = download.download_with_retries(
                source,
                dest,
                timeout=settings.data.timeout_s,
                retries=settings.data.retries,
                backoff_s=settings.data.backoff_s,
                limit=limit,
                progress=progress,
            )
    except download.TooLarge as exc:
        raise _too_large(exc.limit) from None
    if sha != expected:
        raise DownloadFailed(f"checksum mismatch: expected sha256 {expected}, got {sha}", False)


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
    return read_json_object(path, "run `housing fetch` first")


def read_json_object(path: Path, hint: str) -> dict[str, Any]:
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
        ensure_dir(raw_dir)
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

    cached = not force and archive.is_file() and files.file_sha256(archive) == expected
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
            label = str(path) if path is not None else candidate
            try:
                frame = _replace_archive(archive, candidate, label, settings, progress)
            except DownloadFailed as exc:
                failures.append(f"{candidate}: {exc}")
                if number < len(sources):
                    log.warning("could not fetch %s: %s; trying the next URL", candidate, exc)
                continue
            used = label
            break
        if frame is None:
            raise DataError(_failure_message(failures))

    content_hash = frame_content_hash(frame)
    parquet = raw_dir / RAW_PARQUET
    write_parquet(parquet, frame)
    fetched_at = (
        previous.get("fetched_at")
        if cached and previous.get("archive_sha256") == expected and previous.get("fetched_at")
        else iso_utc()
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
    write_json(raw_dir / MANIFEST, manifest)
    return {
        **manifest,
        "archive": str(archive),
        "parquet": str(parquet),
        "manifest": str(raw_dir / MANIFEST),
        "cached": cached,
    }


def _replace_archive(
    archive: Path,
    source: str,
    label: str,
    settings: Settings,
    progress: ProgressHook | None,
) -> pd.DataFrame:
    """Fetch ``source`` beside ``archive``, verify and parse it, then rename it into place.

    The parse comes before the rename: a bad archive never replaces a good one.
    """
    parsed: list[pd.DataFrame] = []

    def download_and_parse(tmp: Path) -> None:
        _fetch_source(source, tmp, settings, progress)
        parsed.append(_frame_from_member(_read_member(tmp, label), label))

    write_atomically(archive, download_and_parse)
    return parsed[0]


def _check_local_source(source: str, origin: str) -> Path | None:
    """The local path of ``source`` (None for http) after checking that the file exists
    (or, for http(s), that the URL is well formed: a malformed one fails at once)."""
    path = _local_path(source)
    if path is None:
        problem = download.url_problem(source)
        if problem is not None:
            what = f"{origin} URL" if origin != "data.urls" else "configured URL"
            raise DataError(f"{what} {source!r} is malformed: {problem}")
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


# ------------------------------------------------------------------------ read back
def read_parquet(path: Path, rebuild_with: str) -> pd.DataFrame:
    """Read a parquet file we wrote; an unreadable one is a DataError naming the fix."""
    import pandas as pd  # after the callers' checks: a missing file should fail fast

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for bad files
        raise DataError(
            f"cannot read {path} ({type(exc).__name__}); rerun `{rebuild_with}`"
        ) from None


def read_raw_frame(settings: Settings) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The raw frame written by ``fetch`` and its manifest, checked against each other."""
    raw_dir = Path(settings.paths.raw_dir)
    parquet = raw_dir / RAW_PARQUET
    if not parquet.is_file():
        raise DataError(f"no raw data at {parquet}: run `housing fetch` first")
    manifest = read_raw_manifest(settings)
    frame = read_parquet(parquet, "housing fetch --force")
    expected = manifest.get("content_hash")
    if [str(c) for c in frame.columns] == COLUMNS:
        got = frame_content_hash(frame)
        if got != expected:
            raise DataError(
                f"{parquet} does not match its manifest (content hash {got[:12]}, "
                f"manifest {str(expected)[:12]}): it was modified; rerun `housing fetch --force`"
            )
    return frame, manifest
