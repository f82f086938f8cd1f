"""A Dataset's origin: list its files, check every name, and read each file once.

Names come from outside (object keys, URL paths, another volume's tree), so every one passes
`safe_relative_path` before a byte is written, and the whole listing is refused if any fails:
half a dataset is worse than none, and the condition names the offending entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from cairn.egress import EgressPolicy, EgressRefused
from cairn.node_agent.host.files import FileChangedError, FileIdentity, list_beneath, open_beneath
from cairn.paths import UnsafePathError, safe_relative_path

CHUNK = 8 * 1024 * 1024


class OriginError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class OriginFile:
    path: str
    """Relative path inside the dataset, already checked."""
    size: int
    locator: str
    """Where the origin keeps it: an object key, a URL, or a path under the source volume."""
    version: str | None = None
    """The origin's tag for this content (an S3 ETag, a strong HTTP ETag); None when it gives none."""


class Origin(Protocol):
    ranged: bool
    """`open` honours `start` and `length`; otherwise a file is read whole, from one stream."""

    def list_files(self) -> list[OriginFile]: ...
    def open(self, file: OriginFile, start: int = 0, length: int | None = None) -> BinaryIO: ...


def listing_digest(origin_identity: str | None, files: list[OriginFile]) -> str | None:
    """What a Dataset's copy is a copy of: the store, and every file's name, locator, size and tag.

    None when any file lacks a tag, or the origin is not a store (a PVC): equal names and sizes
    alone do not make equal bytes.
    """
    if origin_identity is None or any(f.version is None for f in files):
        return None
    listing = {
        "origin": origin_identity,
        "files": [[f.path, f.locator, f.size, f.version] for f in sorted(files, key=lambda f: f.path)],
    }
    return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


def checked_listing(entries: list[tuple[str, int, str, str | None]]) -> list[OriginFile]:
    """Every name checked and unique; OriginError(UnsafeName) naming the first bad one."""
    files: list[OriginFile] = []
    seen: dict[str, str] = {}
    for name, size, locator, version in entries:
        try:
            path = str(safe_relative_path(name))
        except UnsafePathError as error:
            raise OriginError("UnsafeName", f"the origin lists {name!r}, which is refused: {error}") from None
        folded = path.casefold()
        if folded in seen:
            raise OriginError("DuplicateName", f"the origin lists both {seen[folded]!r} and {path!r}")
        seen[folded] = path
        files.append(OriginFile(path, size, locator, version))
    # A name that is also a directory of another (a and a/b) cannot both be written.
    directories = {
        str(parent) for f in files for parent in PurePosixPath(f.path).parents if str(parent) != "."
    }
    clash = next((f.path for f in files if f.path in directories), None)
    if clash:
        raise OriginError("DuplicateName", f"the origin lists {clash!r} both as a file and as a directory")
    return sorted(files, key=lambda f: f.path)


class S3Origin:
    def __init__(self, client: Callable[[], Any], bucket: str, prefix: str) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def list_files(self) -> list[OriginFile]:
        start = f"{self.prefix}/" if self.prefix else ""
        entries = []
        for page in (
            self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
        ):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/") and obj["Size"] == 0:
                    continue  # a "directory" placeholder some tools create
                entries.append((key[len(start) :], int(obj["Size"]), key, obj.get("ETag")))
        return checked_listing(entries)

    ranged = True

    def open(self, file: OriginFile, start: int = 0, length: int | None = None) -> BinaryIO:
        # Pinned to the listed version: a copy must hold what its listing (and so a sharer) names,
        # so an object replaced mid-read fails the read (412) instead of mixing two versions.
        pinned = {"IfMatch": file.version} if file.version else {}
        if length is None:
            return self._client().get_object(Bucket=self.bucket, Key=file.locator, **pinned)["Body"]
        if length == 0:
            return io.BytesIO()  # S3 refuses an empty range
        span = f"bytes={start}-{start + length - 1}"
        return self._client().get_object(Bucket=self.bucket, Key=file.locator, Range=span, **pinned)["Body"]


class HttpOrigin:
    """Files by URL. Every connection, redirects included, goes through `egress`: a tenant's URL
    must not lead the agent to the node's own services or the cloud's metadata endpoint."""

    def __init__(self, urls: list[str], egress: EgressPolicy | None = None, timeout: float = 60.0) -> None:
        self.urls = urls
        self.timeout = timeout
        self.egress = egress or EgressPolicy()
        self._opener = self.egress.opener()

    def _urlopen(self, request: urllib.request.Request | str) -> Any:
        try:
            return self._opener.open(request, timeout=self.timeout)
        except EgressRefused as refused:
            url = request if isinstance(request, str) else request.full_url
            raise OriginError("OriginRefused", f"{url}: {refused}") from None

    def list_files(self) -> list[OriginFile]:
        entries = []
        for url in self.urls:
            parsed = urlparse(url)
            if parsed.scheme not in ("https", "http"):
                raise OriginError("InvalidSource", f"{url!r} is not an http(s) URL")
            name = unquote(parsed.path.rsplit("/", 1)[-1])
            with self._urlopen(urllib.request.Request(url, method="HEAD")) as response:
                length = response.headers.get("Content-Length")
                tag = response.headers.get("ETag")
            if length is None:
                raise OriginError(
                    "UnknownSize", f"{url} gives no Content-Length; its size must be known up front"
                )
            # A weak tag (W/...) promises equivalent content, not equal bytes.
            entries.append((name, int(length), url, tag if tag and not tag.startswith("W/") else None))
        return checked_listing(entries)

    ranged = False
    """Range support varies by server and a server ignoring it would send the whole file each time."""

    def open(self, file: OriginFile, start: int = 0, length: int | None = None) -> BinaryIO:
        assert start == 0 and length in (None, file.size), "an HTTP origin is read one whole file at a time"
        # Pinned to the listed tag, as S3 reads are; a server that ignores If-Match sends what it has.
        pinned = {"If-Match": file.version} if file.version else {}
        stream: BinaryIO = self._urlopen(urllib.request.Request(file.locator, headers=pinned))
        return stream


class DirectoryOrigin:
    """A source volume's tree. Only regular files are taken: a link or a device file fails the listing.

    The tree is a tenant's, so it is listed through directory descriptors, and each file is read
    only if it is still the one listed, and never past its listed size.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._listed: dict[str, FileIdentity] = {}

    def list_files(self) -> list[OriginFile]:
        try:
            listing = list_beneath(self.root, skip=frozenset({"lost+found"}))
        except OSError as error:
            raise OriginError("UnsafeName", f"the source volume cannot be listed safely: {error}") from None
        for relative, kind in listing.others:
            what = "a symbolic link; links are refused" if kind == "a symlink" else kind
            raise OriginError("UnsafeName", f"{relative!r} is {what} (only regular files are taken)")
        self._listed = dict(listing.files)
        return checked_listing(
            [(relative, listed.size, relative, None) for relative, listed in listing.files]
        )

    ranged = True

    def open(self, file: OriginFile, start: int = 0, length: int | None = None) -> BinaryIO:
        listed = self._listed.get(file.locator)
        try:
            stream = open_beneath(self.root, PurePosixPath(file.locator), expect=listed)
        except FileChangedError as error:
            raise OriginError("OriginChanged", f"{file.path} changed since it was listed: {error}") from None
        stream.seek(start)
        return stream  # the reader never asks past the span, which the listing bounds
