"""The manifest of a checkpoint: every file's path, size and hash, and one digest over them all.

It is written beside the checkpoint, uploaded with it, and every restored byte is checked against
it. Hashing is BLAKE3 by default. On the 2-core test machine (whose CPU has SHA-NI, SHA-256's best
case) one core hashed 6.5-7.2 GB/s with BLAKE3, 1.7-1.8 GB/s with SHA-256 (bench/hash_choice.py). So
a manifest takes about a quarter of the CPU time from a trainer on the same node that SHA-256 would,
and on a fast NVMe SHA-256, not the disk, would set the pace.

A digest is written as "<algorithm>:<hex>", so an entry carries its own algorithm and a manifest
can never be checked with the wrong one.

The whole-checkpoint digest hashes a canonical encoding of the sorted entries (with the format
version and algorithm in front), so two manifests describe the same bytes exactly when their
digests are equal: one string to compare across tiers and to show in status.

File names in a manifest come back from S3 and peers, so on restore they are untrusted:
`safe_relative_path` is the one gate every name passes before it is joined to a directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

import blake3

from cairn.api.checkpoint import HashAlgorithm
from cairn.node_agent.host.files import (
    Directory,
    FileChangedError,
    FileIdentity,
    list_beneath,
    open_beneath,
)
from cairn.paths import UnsafePathError, safe_relative_path
from cairn.units import MiB

FORMAT = "cairn.dev/checkpoint-manifest"
FORMAT_VERSION = 1
MANIFEST_NAME = ".cairn-manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
"""A manifest line is ~150 bytes, so this is over a million files: more is a broken or hostile source."""
_DIGEST = re.compile(r"(blake3|sha256):[0-9a-f]{64}")
CHUNK_BYTES = 8 * MiB
"""Measured best of 1, 8 and 32 MiB (bench/hash_choice.py): fewer syscalls than 1 MiB and big enough
batches for BLAKE3's threads, while 32 MiB falls out of the CPU caches and is a third slower."""
ALL_CORES = blake3.blake3.AUTO
"""`threads=ALL_CORES`: BLAKE3 on every core. Worth it where someone waits (a restore); not while
a trainer shares the node, since a second core bought only 1.2-1.4x here."""


class ManifestError(ValueError):
    """A checkpoint cannot be described, or a manifest cannot be trusted; the message says why."""


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...
    def hexdigest(self) -> str: ...


def new_hasher(algorithm: HashAlgorithm | str, threads: int = 1) -> Hasher:
    """`threads` applies to BLAKE3 only (1, n, or ALL_CORES); SHA-256 cannot be split."""
    match HashAlgorithm(algorithm):
        case HashAlgorithm.BLAKE3:
            return blake3.blake3(max_threads=threads)
        case HashAlgorithm.SHA256:
            return hashlib.sha256()


@dataclass(frozen=True, order=True)
class ManifestEntry:
    path: str
    """POSIX path relative to the checkpoint directory."""
    size: int
    digest: str
    """"<algorithm>:<lowercase hex>"."""

    @property
    def algorithm(self) -> HashAlgorithm:
        return HashAlgorithm(self.digest.partition(":")[0])


@dataclass(frozen=True)
class Manifest:
    algorithm: HashAlgorithm
    files: tuple[ManifestEntry, ...]
    """Sorted by path."""
    empty_dirs: tuple[str, ...] = ()
    """Directories with nothing in them, sorted: restore recreates them, some readers expect them."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithm", HashAlgorithm(self.algorithm))
        object.__setattr__(self, "files", tuple(sorted(self.files)))
        object.__setattr__(self, "empty_dirs", tuple(sorted(self.empty_dirs)))
        seen: set[str] = set()
        for name in [*(f.path for f in self.files), *self.empty_dirs]:
            safe_relative_path(name)
            if name in seen:
                raise ManifestError(f"manifest lists {name!r} twice")
            seen.add(name)
        for entry in self.files:
            if entry.size < 0:
                raise ManifestError(f"manifest gives {entry.path!r} a negative size {entry.size}")
            if not _DIGEST.fullmatch(entry.digest):
                raise ManifestError(f"manifest gives {entry.path!r} a malformed digest {entry.digest!r}")
            if entry.algorithm is not self.algorithm:
                raise ManifestError(
                    f"manifest is {self.algorithm} but {entry.path!r} has a {entry.algorithm} digest"
                )

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        hasher = new_hasher(self.algorithm)
        # NUL cannot occur in a path, so NUL-separated fields cannot run into each other.
        hasher.update(f"{FORMAT}\0{FORMAT_VERSION}\0{self.algorithm}\0".encode())
        for entry in self.files:
            hasher.update(b"f\0" + os.fsencode(entry.path) + f"\0{entry.size}\0{entry.digest}\0".encode())
        for directory in self.empty_dirs:
            hasher.update(b"d\0" + os.fsencode(directory) + b"\0")
        return f"{self.algorithm}:{hasher.hexdigest()}"

    def to_json(self) -> str:
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "algorithm": str(self.algorithm),
            "totalBytes": self.total_bytes,
            "digest": self.digest,
            "files": [{"path": f.path, "size": f.size, "digest": f.digest} for f in self.files],
            "emptyDirs": list(self.empty_dirs),
        }
        # ASCII escapes keep names that are not valid UTF-8 (surrogate-escaped) intact and the file plain.
        return json.dumps(document, sort_keys=True, indent=1, ensure_ascii=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and check a manifest: format, version, safe names, and that the totals add up."""
        try:
            document: Any = json.loads(text)
            if document.get("format") != FORMAT:
                raise ManifestError(f"not a Cairn checkpoint manifest (format {document.get('format')!r})")
            if document.get("version") != FORMAT_VERSION:
                raise ManifestError(
                    f"manifest version {document.get('version')!r} is not {FORMAT_VERSION}; "
                    "upgrade the node agent to read it"
                )
            files = document["files"]
            manifest = cls(
                HashAlgorithm(document["algorithm"]),
                tuple(ManifestEntry(_text(f["path"]), _count(f["size"]), _text(f["digest"])) for f in files),
                tuple(_text(d) for d in document.get("emptyDirs", [])),
            )
        except (ManifestError, UnsafePathError):
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ManifestError(f"manifest is malformed: {error}") from error
        if document.get("totalBytes") != manifest.total_bytes or document.get("digest") != manifest.digest:
            raise ManifestError("manifest totalBytes or digest does not match its file list; it was altered")
        return manifest


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"manifest holds {value!r} where a string belongs")
    return value


def _count(value: object) -> int:
    # bool is an int to Python, and a float size would be silently truncated; both mean tampering.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"manifest holds {value!r} where a byte count belongs")
    return value


def hash_file(
    path: Path | str, algorithm: HashAlgorithm | str, *, chunk_bytes: int = CHUNK_BYTES, threads: int = 1
) -> tuple[int, str]:
    """(bytes read, "<algorithm>:<hex>") for one regular file the agent owns, read to its end."""
    with open(path, "rb", buffering=0) as stream:
        return hash_stream(stream, algorithm, limit=sys.maxsize, chunk_bytes=chunk_bytes, threads=threads)


def hash_stream(
    stream: BinaryIO,
    algorithm: HashAlgorithm | str,
    *,
    limit: int,
    chunk_bytes: int = CHUNK_BYTES,
    threads: int = 1,
) -> tuple[int, str]:
    """(bytes read, "<algorithm>:<hex>") of an open stream, streamed through one reused buffer.

    At most `limit` bytes and one more are read: a file longer than listed shows as such without
    being read to its end (it may be endless)."""
    hasher = new_hasher(algorithm, threads)
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    total = 0
    reader = cast(io.RawIOBase, stream)  # open_beneath's streams are unbuffered files
    while total <= limit and (read := reader.readinto(view[: min(chunk_bytes, limit + 1 - total)])):
        hasher.update(view[:read])
        total += read
    return total, f"{HashAlgorithm(algorithm)}:{hasher.hexdigest()}"


def build_manifest(
    directory: Directory | str,
    algorithm: HashAlgorithm | str = HashAlgorithm.BLAKE3,
    *,
    exclude: Iterable[str] = (MANIFEST_NAME,),
    chunk_bytes: int = CHUNK_BYTES,
    threads: int = 1,
) -> Manifest:
    """Hash every file beneath `directory`. Fails if a file changes while it is read.

    The tree is listed and each file opened through directory descriptors that follow no link, and
    a file is hashed only if it is still the one listed (device, inode, size, mtime) and only up to
    its listed size: a tenant swapping a shard for a FIFO, a link or a growing file gets an error,
    never a read outside its volume. `exclude` holds relative paths left out, by default the
    manifest itself.
    """
    root = Path(directory) if isinstance(directory, str) else directory
    try:
        listing = list_beneath(root, skip=frozenset(exclude))
    except OSError as error:
        raise ManifestError(f"{root} cannot be listed without following a link: {error.strerror}") from None
    if listing.others:
        path, kind = listing.others[0]
        raise ManifestError(
            f"{root}/{path} is {kind}; a checkpoint is tiered as plain files and directories, "
            "so write the data itself into the checkpoint directory"
        )
    entries: list[ManifestEntry] = []
    for relative, listed in listing.files:
        try:
            safe_relative_path(relative)
        except UnsafePathError as error:
            raise ManifestError(
                f"{root}/{relative}: {error}; Cairn cannot restore such a name safely, rename the file"
            ) from error
        try:
            with open_beneath(root, relative, expect=listed) as stream:
                size, digest = hash_stream(
                    stream, algorithm, limit=listed.size, chunk_bytes=chunk_bytes, threads=threads
                )
                after = FileIdentity.of(os.fstat(stream.fileno()))
        except FileChangedError as error:
            raise ManifestError(
                f"{root}/{relative} is not the file that was listed ({error.strerror}); the writer "
                "is still at work, or the file was swapped"
            ) from None
        except OSError as error:
            raise ManifestError(
                f"{root}/{relative} cannot be read safely ({error.strerror}): a link, FIFO or device "
                "took its place after it was listed"
            ) from None
        if size != listed.size or after.differs_from(listed):
            raise ManifestError(
                f"{root}/{relative} changed while it was hashed; the writer is still at work, so the "
                "checkpoint is not finished (raise the policy's settle time if this repeats)"
            )
        entries.append(ManifestEntry(relative, size, digest))
    return Manifest(HashAlgorithm(algorithm), tuple(entries), tuple(sorted(listing.empty_dirs)))


def verify_file(path: Path | str, entry: ManifestEntry, *, threads: int = 1) -> bool:
    """Does the file at `path` hold exactly the bytes `entry` describes? Missing or odd files do not."""
    try:
        info = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
            return False
        size, digest = hash_file(path, entry.algorithm, threads=threads)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return False
    return size == entry.size and digest == entry.digest


def verify_tree(directory: Path | str, manifest: Manifest, *, threads: int = 1) -> list[str]:
    """Everything about `directory` that disagrees with `manifest`; empty when it matches.

    Extra files count too: a copy that holds more than its manifest is not that checkpoint. The
    manifest file itself is allowed.
    """
    root = Path(directory)
    if not root.is_dir():
        return [f"{root} is not a directory"]
    listing = list_beneath(root, skip=frozenset({MANIFEST_NAME}))
    problems: list[str] = []
    for entry in manifest.files:
        target = root / safe_relative_path(entry.path)
        if not os.path.lexists(target):
            problems.append(f"{target} is missing")
        elif not verify_file(target, entry, threads=threads):
            problems.append(f"{target} does not match the manifest ({entry.size} bytes, {entry.digest})")
    for name in manifest.empty_dirs:
        if not (root / safe_relative_path(name)).is_dir():
            problems.append(f"{root / name} is missing (an empty directory in the checkpoint)")
    listed = {f.path for f in manifest.files}
    problems += [f"{root / path} is not in the manifest" for path, _ in listing.files if path not in listed]
    problems += [
        f"{root / path} is {kind}, not in the manifest" for path, kind in listing.others if path not in listed
    ]
    problems += [
        f"{root / path} is an empty directory not in the manifest"
        for path in listing.empty_dirs
        if path not in manifest.empty_dirs
    ]
    return problems
