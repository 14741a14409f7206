"""Read a tar archive member by member, refusing anything that is not a plain file.

The archive is read as a stream (``tarfile`` mode ``r|*``): one member's bytes are in
memory at a time, and nothing is ever extracted to disk. Each refused member becomes an
:class:`ItemError`; a total-size bomb stops the archive, since every later member
would be refused for the same reason.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from generator.iuxray.records import ItemError

MAX_MEMBER_BYTES = 64 * 1024 * 1024  # the largest Open-i PNG is about 9 MB
MAX_TOTAL_BYTES = 4 * 1024 * 1024 * 1024  # NLMCXR_png.tgz unpacks to about 1.3 GB
MAX_MEMBERS = 100_000
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")

ABSOLUTE_PATH = "absolute path in archive"
PARENT_PATH = "path leaves the archive ('..')"
SYMLINK = "symbolic link to {target!r}"
HARDLINK = "hard link to {target!r}"
DEVICE = "device or fifo, not a file"
NOT_A_FILE = "not a regular file (tar type {type!r})"
TOO_LARGE = "member is {size} bytes, over the {limit}-byte limit"
TOTAL_TOO_LARGE = "archive unpacks to more than {limit} bytes; rest of it skipped"
TOO_MANY = "archive has more than {limit} members; rest of it skipped"
NOT_A_TAR = "not a readable tar archive: {error}"


@dataclass(frozen=True)
class TarLimits:
    member_bytes: int = MAX_MEMBER_BYTES
    total_bytes: int = MAX_TOTAL_BYTES
    members: int = MAX_MEMBERS


@dataclass(frozen=True)
class TarFile:
    """One plain file read from an archive."""

    name: str
    data: bytes


def member_problem(member: tarfile.TarInfo, limits: TarLimits) -> str | None:
    """Why this member must not be read, or None when it is a safe plain file."""
    path = PurePosixPath(member.name)
    if member.name.startswith(("/", "\\")) or WINDOWS_DRIVE.match(member.name):
        return ABSOLUTE_PATH
    if ".." in path.parts or ".." in member.name.split("\\"):
        return PARENT_PATH
    if member.issym():
        return SYMLINK.format(target=member.linkname)
    if member.islnk():
        return HARDLINK.format(target=member.linkname)
    if member.ischr() or member.isblk() or member.isfifo():
        return DEVICE
    if not member.isreg():
        return NOT_A_FILE.format(type=member.type.decode(errors="replace"))
    if member.size > limits.member_bytes:
        return TOO_LARGE.format(size=member.size, limit=limits.member_bytes)
    return None


def iter_tar(
    path: Path, *, suffix: str, limits: TarLimits | None = None
) -> Iterator[TarFile | ItemError]:
    """Yield each plain ``suffix`` file of the archive, or the reason it was refused."""
    limits = limits or TarLimits()
    total = count = 0
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                count += 1
                item = f"{path.name}:{member.name}"
                if count > limits.members:
                    yield ItemError(item, TOO_MANY.format(limit=limits.members))
                    return
                if member.isdir():
                    continue
                problem = member_problem(member, limits)
                if problem:
                    yield ItemError(item, problem)
                    continue
                total += member.size
                if total > limits.total_bytes:
                    yield ItemError(
                        item, TOTAL_TOO_LARGE.format(limit=limits.total_bytes)
                    )
                    return
                if not member.name.lower().endswith(suffix):
                    continue
                data = archive.extractfile(member).read()
                yield TarFile(member.name, data)
    except (tarfile.TarError, OSError, EOFError) as error:
        yield ItemError(path.name, NOT_A_TAR.format(error=error))
