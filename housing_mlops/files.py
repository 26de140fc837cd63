"""Writing and hashing files: the one atomic-write helper and the one file digest.

Every file the stages write (raw and processed data, manifests, the reference profile)
goes through ``atomic_write`` (the report, several files at once, is staged as a folder):
the content goes to a temporary file in the same folder, which is then renamed over the
target with ``os.replace``. A reader sees the old file or the new one, never half of one,
and a failure leaves no partial file behind.
These helpers raise ``OSError``; the stages turn it into their own named error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def temp_file_beside(final: Path, suffix: str = ".part") -> Iterator[Path]:
    """An empty temporary file next to ``final``; removed unless the caller renamed it away.

    Its mode follows the umask like a freshly created file (mkstemp makes 0600, and the
    renamed file is for reading by others: data, manifests, reports).
    """
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    with contextlib.suppress(OSError):
        tmp.chmod(0o666 & ~current_umask())
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(final: Path, write: Callable[[Path], object]) -> None:
    """Write ``final`` through ``write(tmp)`` on a temporary file, then rename it into place."""
    with temp_file_beside(final) as tmp:
        write(tmp)
        os.replace(tmp, final)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks (``hashlib.file_digest``)."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
