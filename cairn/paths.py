"""Names that cannot leave the directory they are joined to.

File names come from tenants' volumes, manifests read back from S3 and peers, and dataset origins:
every one passes `safe_relative_path` before it is joined to a directory or an object key.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath


class UnsafePathError(ValueError):
    """A name that could leave the directory it is joined to, or that no file can have."""


def safe_relative_path(name: str) -> PurePosixPath:
    """`name` as a path that cannot leave the directory it is joined to.

    Refuses rather than normalises: a name like "a/../b" never comes from Cairn's own listings, so
    it means a tampered or broken list and nothing should be written at all.
    """
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"file name {name!r} is empty")
    if "\0" in name:
        raise UnsafePathError(f"file name {name!r} contains a NUL byte")
    if "\\" in name:
        raise UnsafePathError(f"file name {name!r} contains a backslash")
    if name.startswith("/"):
        raise UnsafePathError(f"file name {name!r} is absolute")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePathError(f"file name {name!r} has an empty, '.' or '..' part")
    try:
        os.fsencode(name)
    except UnicodeEncodeError as error:
        raise UnsafePathError(f"file name {name!r} is not a possible file name") from error
    return PurePosixPath(*parts)
