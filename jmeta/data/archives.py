"""Zip archives read safely, and downloads checked against a known digest.

A member whose name is absolute or climbs out with ``..`` is refused (the "zip slip"
attack), both when extracting and when reading members directly. A corrupt or truncated
archive raises ``ValueError`` naming the file instead of zipfile's internals.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import urllib.request
import zipfile
from typing import Iterator

from jmeta.checkpoint import temp_file_beside


def check_member_name(name: str, archive: str) -> None:
    """Raises ``ValueError`` for a member name that would escape the extraction folder."""
    normalised = posixpath.normpath(name.replace("\\", "/"))
    if (
        name.startswith(("/", "\\"))
        or normalised == ".."
        or normalised.startswith("../")
        or ":" in name.split("/")[0]
    ):
        raise ValueError(
            f"refusing archive member {name!r} of {archive}: it would escape the target folder"
        )


@contextlib.contextmanager
def open_zip(path: str | os.PathLike) -> Iterator[zipfile.ZipFile]:
    """Opens a zip archive, checking every member name; bad archives raise ``ValueError``."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                check_member_name(name, path)
            yield archive
    except zipfile.BadZipFile as error:
        raise ValueError(
            f"{path} is not a readable zip archive (corrupt or truncated?): {error}"
        ) from None


def read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """The bytes of one member; a CRC failure (a damaged archive) raises ``ValueError``."""
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(
            f"cannot read {name!r} from {archive.filename} (corrupt or truncated?): {error}"
        ) from None


def extract_zip(path: str | os.PathLike, target: str | os.PathLike) -> str:
    """Extracts every member of ``path`` under ``target``; refuses members that would escape it."""
    target = os.path.realpath(os.fspath(target))
    with open_zip(path) as archive:
        for member in archive.infolist():
            destination = os.path.realpath(os.path.join(target, member.filename))
            if destination != target and not destination.startswith(target + os.sep):
                raise ValueError(
                    f"refusing archive member {member.filename!r}: it would escape {target}"
                )
            if member.is_dir():
                os.makedirs(destination, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            with open(destination, "wb") as f:
                f.write(read_member(archive, member.filename))
    return target


def download(url: str, destination: str | os.PathLike, md5: str) -> str:
    """Downloads ``url`` to ``destination`` unless a file with that MD5 is already there.

    The file is written next to ``destination`` and moved into place only once its MD5
    matches ``md5``; a mismatch raises ``ValueError`` and leaves nothing behind.
    """
    destination = os.fspath(destination)
    if os.path.exists(destination) and _md5(destination) == md5:
        return destination
    fd, partial = temp_file_beside(destination, ".download-")
    os.close(fd)
    try:
        urllib.request.urlretrieve(url, partial)
        digest = _md5(partial)
        if digest != md5:
            raise ValueError(
                f"download of {url} has MD5 {digest}, expected {md5}: refusing a corrupt or "
                "different file"
            )
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return destination


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
