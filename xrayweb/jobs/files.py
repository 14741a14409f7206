"""Job files through Django storage: attempt-scoped keys, deleted with their attempt,
and a periodic sweep of files that no row points to.

A file is written under its attempt's prefix (``generations/<id>/<attempt>/``) and
becomes a result only when the fenced write that names its key commits. The scheme
needs no rename and no local path, so it works unchanged on object storage.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO

from django.core.files.storage import default_storage
from django.utils import timezone

logger = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20


def opener(key: str) -> Callable[[], IO[bytes]]:
    """A function that opens ``key`` for reading: how code in ``generator/``, which
    knows no Django, is handed a stored file (there is no path on object storage)."""
    return functools.partial(default_storage.open, key, "rb")


def fetch(key: str, target: Path) -> None:
    """Copy stored ``key`` to the local file ``target`` through a temporary file
    beside it, so a copy cut short by a kill is never taken for a whole one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, default_storage.open(key, "rb") as src:
            shutil.copyfileobj(src, out, COPY_CHUNK)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)


def walk(prefix: str) -> Iterator[str]:
    """Every file key under ``prefix`` (a folder key ending in '/')."""
    try:
        folders, names = default_storage.listdir(prefix)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        yield f"{prefix}{name}"
    for folder in folders:
        yield from walk(f"{prefix}{folder}/")


def attempt_delete(prefix: str | None) -> int:
    """Delete every file an attempt wrote; how many were deleted."""
    if not prefix:
        return 0
    keys = list(walk(prefix))
    for key in keys:
        default_storage.delete(key)
    if keys:
        logger.info("deleted %d files of superseded attempt %s", len(keys), prefix)
    return len(keys)


def orphans_delete(prefix: str, referenced: set[str], older_than_s: int) -> list[str]:
    """Delete files under ``prefix`` that no row names and that are older than
    ``older_than_s`` (so a running attempt's fresh files are left alone)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    deleted = []
    for key in walk(prefix):
        if key in referenced or default_storage.get_modified_time(key) > cutoff:
            continue
        default_storage.delete(key)
        deleted.append(key)
    return deleted
