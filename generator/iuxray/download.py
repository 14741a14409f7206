"""Fetch the Open-i archives, resuming a partial download, and check the checksum.

A download goes to ``<name>.part`` and is renamed only once complete and checked, so a
file under the final name is always whole. A later run sends ``Range: bytes=<n>-`` for
the ``.part`` it finds; a server that answers 200 instead of 206 restarts it.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from generator.errors import GeneratorError

OPENI_BASE_URL = "https://openi.nlm.nih.gov/imgs/collections/"
REPORTS_ARCHIVE = "NLMCXR_reports.tgz"
IMAGES_ARCHIVE = "NLMCXR_png.tgz"
REPORTS_SHA256 = "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a"
CHUNK = 1024 * 1024
TIMEOUT_S = 60

CHECKSUM_MISMATCH = (
    "{name} has sha256 {actual}, expected {expected}: the download is corrupt or not "
    "the official file; it was deleted, run the import again to fetch it afresh"
)
HTTP_FAILED = "downloading {url} failed: {error}"


class DownloadError(GeneratorError, RuntimeError):
    """A download failed or gave the wrong bytes; the message names the file."""


@dataclass(frozen=True)
class Downloaded:
    path: Path
    resumed_from: int
    sha256: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Downloaded:
    """Download ``url`` to ``dest`` (resuming ``dest.part``) and check ``sha256``."""
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
        return Downloaded(dest, dest.stat().st_size, sha256 or sha256_file(dest))
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            resumed = start if response.status == 206 else 0
            with part.open("ab" if resumed else "wb") as file:
                while chunk := response.read(CHUNK):
                    file.write(chunk)
                    if progress:
                        progress(len(chunk))
    except OSError as error:  # URLError and HTTPError are OSErrors
        if getattr(error, "code", None) == 416 and start:
            resumed = start  # the .part is already whole
        else:
            raise DownloadError(HTTP_FAILED.format(url=url, error=error)) from None
    actual = sha256_file(part)
    if sha256 and actual != sha256:
        part.unlink()
        raise DownloadError(
            CHECKSUM_MISMATCH.format(name=dest.name, actual=actual, expected=sha256)
        )
    part.replace(dest)
    return Downloaded(dest, resumed, actual)


def fetch_openi(
    folder: Path, *, base_url: str = OPENI_BASE_URL, images: bool = True
) -> tuple[Path, Path | None]:
    """Both official archives into ``folder``; the reports archive is checksummed."""
    folder.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    reports = fetch(
        base + REPORTS_ARCHIVE, folder / REPORTS_ARCHIVE, sha256=REPORTS_SHA256
    )
    if not images:
        return reports.path, None
    return reports.path, fetch(base + IMAGES_ARCHIVE, folder / IMAGES_ARCHIVE).path
