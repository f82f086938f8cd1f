"""Restoring a checkpoint: every byte from the best source that proves it right.

`restore.plan.choose_sources` decides the order; this module does the moving. A source is
anything that can hand over the manifest's text and open one file: a directory on this node, a
peer's agent over HTTP, or the S3 tier. Nothing a source says is trusted. Its manifest counts only
if its digest is the one the Checkpoint records, and each file is hashed as it streams into a
temporary name inside the destination, then renamed into place only once its size and digest
match. So a name in the destination always holds verified bytes, and a crash leaves at worst a
`.cairn-partial-` file behind, never a wrong one under a right name.

A source that fails once (unreachable, short, corrupt) is dropped for the rest of the run and the
file falls through to the next source; files already verified stay.
"""

from __future__ import annotations

import http.client
import os
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote

from cairn.fault_injection import crash_point
from cairn.node_agent import metrics
from cairn.node_agent.checkpoints.restore.plan import SourceKind
from cairn.node_agent.host.files import (
    Directory,
    NotRegularFileError,
    atomic_write,
    fsync_directory,
    open_beneath,
)
from cairn.node_agent.manifests import (
    ALL_CORES,
    CHUNK_BYTES,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestEntry,
    ManifestError,
    new_hasher,
)
from cairn.node_agent.p2p.addresses import split_address
from cairn.paths import UnsafePathError, safe_relative_path
from cairn.s3 import S3Location

PARTIAL_MARK = ".cairn-partial-"


class SourceError(Exception):
    """A source cannot give what was asked; the message says why, without naming the source."""


class RestoreError(Exception):
    """The restore did not produce a verified copy; the message names the files and each source's reason."""

    def __init__(self, message: str, report: RestoreReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class Stream(Protocol):
    length: int | None
    """What the source announces (Content-Length, stat size), checked before reading; None if unknown."""

    def read(self, size: int, /) -> bytes: ...
    def close(self) -> None: ...


class FetchSource(Protocol):
    @property
    def kind(self) -> SourceKind: ...
    @property
    def name(self) -> str:
        """How reports name it: "local", "peer node3", "s3"."""
        ...

    def manifest_text(self) -> bytes: ...
    def open_file(self, relative: PurePosixPath) -> Stream: ...


# -- local directory ------------------------------------------------------------------------------


class _FileStream:
    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.length: int | None = os.fstat(file.fileno()).st_size

    def read(self, size: int, /) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()


class LocalDirectorySource:
    """A checkpoint directory this process can read: this node's own copy, or any tree in tests."""

    def __init__(
        self, directory: Directory, kind: SourceKind = SourceKind.LOCAL, name: str = "local"
    ) -> None:
        self.directory = directory
        self.kind = kind
        self.name = name

    def manifest_text(self) -> bytes:
        stream = self.open_file(PurePosixPath(MANIFEST_NAME))
        try:
            return _read_bounded(stream, MAX_MANIFEST_BYTES)
        finally:
            stream.close()

    def open_file(self, relative: PurePosixPath) -> _FileStream:
        try:
            return _FileStream(open_beneath(self.directory, relative))
        except NotRegularFileError:
            raise SourceError(f"{relative} is not a regular file") from None
        except FileNotFoundError:
            raise SourceError(f"{relative} is missing from {self.directory}") from None
        except OSError as error:
            # ELOOP/ENOTDIR here mean a symlink where the copy should have a plain file or directory.
            raise SourceError(
                f"{relative} cannot be opened beneath {self.directory}: {error.strerror}"
            ) from None


# -- a peer's agent over HTTP ---------------------------------------------------------------------


class _HttpStream:
    def __init__(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self._connection = connection
        self._response = response
        self.length: int | None = response.length

    def read(self, size: int, /) -> bytes:
        return self._response.read(size)

    def close(self) -> None:
        self._connection.close()


TLS_ATTEMPTS = 4
TLS_RETRY_SECONDS = 1.5


def checkpoint_url_path(namespace: str, name: str, what: str) -> str:
    """The peer server's path for a checkpoint's `manifest` or `files/<relative path>`."""
    return f"/v1/checkpoints/{quote(namespace, safe='')}/{quote(name, safe='')}/{what}"


def file_url_part(relative: PurePosixPath) -> str:
    # Bytes, not str: a name that is not valid UTF-8 (surrogate-escaped) must survive the trip.
    return "files/" + quote(os.fsencode(str(relative)), safe="/")


class PeerSource:
    """Another node's agent (or this node's, seen from a CLI on it) serving its copy, over mutual TLS.

    `tls` trusts only the certificate that node publishes and presents this node's own; `headers`
    carry what the server authorises by (the volume a restore fills).
    """

    def __init__(
        self,
        address: str,
        namespace: str,
        checkpoint: str,
        tls: ssl.SSLContext,
        *,
        kind: SourceKind = SourceKind.PEER,
        name: str = "peer",
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.host, self.port = split_address(address)
        self.namespace = namespace
        self.checkpoint = checkpoint
        self.tls = tls
        self.timeout = timeout
        self.kind = kind
        self.name = name
        self.headers = dict(headers or {})

    def _get(self, what: str) -> _HttpStream:
        path = checkpoint_url_path(self.namespace, self.checkpoint, what)
        for attempt in range(TLS_ATTEMPTS):
            connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self.tls
            )
            try:
                connection.request("GET", path, headers=self.headers)
                response = connection.getresponse()
                break
            except ssl.SSLError as error:
                connection.close()
                # A node that just joined is trusted once the server re-lists StorageNodes (it does so
                # within seconds of refusing one): a refused handshake is worth a few more tries.
                if attempt + 1 == TLS_ATTEMPTS:
                    raise SourceError(f"agent at {self.host}:{self.port} is unreachable: {error}") from None
                time.sleep(TLS_RETRY_SECONDS)
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                raise SourceError(f"agent at {self.host}:{self.port} is unreachable: {error}") from None
        if response.status != 200:
            message = response.read(4096).decode(errors="replace").strip()
            connection.close()
            raise SourceError(f"agent at {self.host}:{self.port} answered {response.status}: {message}")
        return _HttpStream(connection, response)

    def manifest_text(self) -> bytes:
        stream = self._get("manifest")
        try:
            return _read_bounded(stream, MAX_MANIFEST_BYTES)
        finally:
            stream.close()

    def open_file(self, relative: PurePosixPath) -> _HttpStream:
        return self._get(file_url_part(relative))


# -- S3 ---------------------------------------------------------------------------------------------


class _S3Stream:
    def __init__(self, response: dict[str, Any]) -> None:
        self._body = response["Body"]
        self.length: int | None = response.get("ContentLength")

    def read(self, size: int, /) -> bytes:
        return self._body.read(size)

    def close(self) -> None:
        self._body.close()


class S3Source:
    """The remote tier. The client is made on first use: a restore served by peers needs no credentials."""

    def __init__(self, client: Callable[[], Any], location: S3Location, name: str = "s3") -> None:
        self._make_client = client
        self._client: Any = None
        self.location = location
        self.kind = SourceKind.S3
        self.name = name

    def _object(self, relative: str) -> _S3Stream:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.location.key(relative)
        try:
            if self._client is None:
                self._client = self._make_client()
            return _S3Stream(self._client.get_object(Bucket=self.location.bucket, Key=key))
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "error")
            raise SourceError(f"s3://{self.location.bucket}/{key}: {code}") from None
        except BotoCoreError as error:
            raise SourceError(f"s3://{self.location.bucket}/{key}: {error}") from None

    def manifest_text(self) -> bytes:
        stream = self._object(MANIFEST_NAME)
        try:
            return _read_bounded(stream, MAX_MANIFEST_BYTES)
        finally:
            stream.close()

    def open_file(self, relative: PurePosixPath) -> _S3Stream:
        return self._object(str(relative))


class UnavailableSource:
    """A source the planner knows of but cannot use (no address, no credentials): it fails with why."""

    def __init__(self, kind: SourceKind, name: str, reason: str) -> None:
        self.kind = kind
        self.name = name
        self.reason = reason

    def manifest_text(self) -> bytes:
        raise SourceError(self.reason)

    def open_file(self, relative: PurePosixPath) -> Stream:
        raise SourceError(self.reason)


def _read_bounded(stream: Stream, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while chunk := stream.read(CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise SourceError(f"manifest is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# -- the restore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class Tally:
    files: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class RestoreProgress:
    done_bytes: int
    """Verified bytes plus those of the file in flight; goes back when a file falls through."""
    total_bytes: int
    file: str
    source: str


@dataclass
class RestoreReport:
    destination: Path
    manifest_digest: str
    manifest_source: str = ""
    files: int = 0
    total_bytes: int = 0
    by_tier: dict[SourceKind, Tally] = field(default_factory=dict)
    by_source: dict[str, Tally] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    failed_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def tiers(self) -> list[SourceKind]:
        """The tiers that served at least one file, best first."""
        return [kind for kind in SourceKind if self.by_tier.get(kind, Tally()).files]


FILE_STREAMS = 4
"""Files fetched at once. One stream leaves a fast source idle while this side hashes and writes,
and a checkpoint is many shards (one per rank); 4 kept 2 cores busy here without thrashing."""


def restore(
    expected_digest: str,
    sources: Sequence[FetchSource],
    destination: Path,
    on_progress: Callable[[RestoreProgress], None] = lambda progress: None,
    *,
    hash_threads: int = ALL_CORES,
    streams: int = FILE_STREAMS,
) -> RestoreReport:
    """Write a verified copy of the checkpoint whose manifest digest is `expected_digest` to `destination`.

    `destination` must be missing or empty. Raises RestoreError when no manifest or some file could
    not be verified from any source; what was verified is left in place, nothing else is. Up to
    `streams` files move at once, each from the best source not yet dropped.
    """
    started = time.monotonic()
    _require_empty(destination)
    report = RestoreReport(destination, expected_digest)
    dropped: set[int] = set()
    manifest = _fetch_manifest(expected_digest, sources, report, dropped)
    report.total_bytes = manifest.total_bytes
    progress = _Progress(report.total_bytes, on_progress)
    on_progress(RestoreProgress(0, report.total_bytes, "", report.manifest_source))
    directories: set[Path] = {destination}
    lock = threading.Lock()

    def fetch(entry: ManifestEntry) -> None:
        relative = safe_relative_path(entry.path)
        final = destination / relative
        with lock:
            _make_parents(destination, relative, directories)
        served_by = None
        for index, source in enumerate(sources):
            with lock:
                if index in dropped:
                    continue
            try:
                _fetch_file(source, entry, relative, final, hash_threads, progress)
            except SourceError as error:
                with lock:
                    report.rejected.append(Rejection(source.name, str(error)))
                    dropped.add(index)
                continue
            served_by = source
            break
        with lock:
            if served_by is None:
                report.failed_files.append(entry.path)
                return
            for tally in (
                report.by_tier.setdefault(served_by.kind, Tally()),
                report.by_source.setdefault(served_by.name, Tally()),
            ):
                tally.files += 1
                tally.bytes += entry.size
            report.files += 1
        progress.file_done(entry, served_by.name)

    if streams <= 1:
        for entry in manifest.files:
            fetch(entry)
    else:
        with ThreadPoolExecutor(streams, thread_name_prefix="restore") as pool:
            # Largest first: the last file to start is a small one, so no stream is left alone at the end.
            ordered = sorted(manifest.files, key=lambda entry: -entry.size)
            for future in [pool.submit(fetch, entry) for entry in ordered]:
                future.result()
    report.failed_files.sort()
    report.seconds = time.monotonic() - started
    if report.failed_files:
        raise RestoreError(_failure_message(report), report)
    for name in manifest.empty_dirs:
        path = destination / safe_relative_path(name)
        path.mkdir(parents=True, exist_ok=True)
        directories.add(path)
    # Written last, like the uploader does: its presence says the copy is complete and verified.
    atomic_write(destination / MANIFEST_NAME, manifest.to_json(), temporary_prefix=PARTIAL_MARK)
    for directory in directories:
        fsync_directory(directory)
    report.seconds = time.monotonic() - started
    return report


class _Progress:
    """Verified bytes plus those in flight, across the files moving at once."""

    def __init__(self, total: int, on_progress: Callable[[RestoreProgress], None]) -> None:
        self.total = total
        self.on_progress = on_progress
        self.done = 0
        self.in_flight: dict[str, int] = {}
        self.lock = threading.Lock()

    def moved(self, entry: ManifestEntry, received: int, source: str) -> None:
        with self.lock:
            self.in_flight[entry.path] = received
            shown = self.done + sum(self.in_flight.values())
        self.on_progress(RestoreProgress(shown, self.total, entry.path, source))

    def file_done(self, entry: ManifestEntry, source: str) -> None:
        with self.lock:
            self.in_flight.pop(entry.path, None)
            self.done += entry.size
            shown = self.done + sum(self.in_flight.values())
        self.on_progress(RestoreProgress(shown, self.total, entry.path, source))


def count_restored_bytes(node: str, report: RestoreReport) -> None:
    """Add a finished restore to cairn_checkpoint_bytes_total{operation="restore", tier=...}."""
    for kind, tally in report.by_tier.items():
        metrics.CHECKPOINT_BYTES.labels(node=node, operation="restore", tier=kind.value).inc(tally.bytes)


def _require_empty(destination: Path) -> None:
    if destination.exists() and not destination.is_dir():
        raise RestoreError(
            f"{destination} exists and is not a directory; restore into a new or empty directory"
        )
    if destination.is_dir():
        with os.scandir(destination) as entries:
            found = sorted(entry.name for entry in entries)
        if found:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise RestoreError(
                f"{destination} is not empty ({len(found)} entries: {shown}); Cairn never overwrites "
                "data, so restore into a new or empty directory"
            )
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RestoreError(f"cannot create {destination}: {error.strerror}") from None


def _fetch_manifest(
    expected: str, sources: Sequence[FetchSource], report: RestoreReport, dropped: set[int]
) -> Manifest:
    for index, source in enumerate(sources):
        try:
            manifest = _parse_manifest(source.manifest_text(), expected)
        except (SourceError, ManifestError, UnsafePathError) as error:
            report.rejected.append(Rejection(source.name, f"manifest: {error}"))
            dropped.add(index)
            continue
        except Exception as error:  # any failure of a source means trying the next one, never aborting
            report.rejected.append(Rejection(source.name, f"manifest: {type(error).__name__}: {error}"))
            dropped.add(index)
            continue
        report.manifest_source = source.name
        return manifest
    reasons = "; ".join(str(r) for r in report.rejected) or "no sources were given"
    raise RestoreError(f"no source gave the checkpoint's manifest ({expected}): {reasons}", report)


def _parse_manifest(text: bytes, expected: str) -> Manifest:
    manifest = Manifest.from_json(text)
    if manifest.digest != expected:
        raise ManifestError(
            f"digest {manifest.digest} is not the checkpoint's {expected}; it is another copy"
        )
    if any(entry.path == MANIFEST_NAME for entry in manifest.files):
        raise ManifestError(f"manifest lists its own name {MANIFEST_NAME} as a file")
    return manifest


def _make_parents(destination: Path, relative: PurePosixPath, made: set[Path]) -> None:
    parent = destination
    for part in relative.parts[:-1]:
        parent = parent / part
        if parent in made:
            continue
        try:
            # The destination was empty and only this run adds to it, so nothing here is a symlink.
            parent.mkdir(exist_ok=True)
        except OSError as error:
            raise RestoreError(f"cannot create directory {parent}: {error.strerror}") from None
        made.add(parent)


def _fetch_file(
    source: FetchSource,
    entry: ManifestEntry,
    relative: PurePosixPath,
    final: Path,
    hash_threads: int,
    progress: _Progress,
) -> None:
    """Stream one file from `source` to `final`, verified; SourceError when the source is to blame."""
    try:
        stream = source.open_file(relative)
    except SourceError:
        raise
    except Exception as error:  # any failure of a source means trying the next one, never aborting
        raise SourceError(f"{entry.path}: {type(error).__name__}: {error}") from None
    temporary = final.with_name(f"{PARTIAL_MARK}{final.name}.{secrets.token_hex(4)}")
    try:
        if stream.length is not None and stream.length != entry.size:
            raise SourceError(f"{entry.path} is {stream.length} bytes, the manifest says {entry.size}")
        hasher = new_hasher(entry.algorithm, hash_threads)
        received = 0
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with open(descriptor, "wb") as output:
            while True:
                try:
                    chunk = stream.read(CHUNK_BYTES)
                except Exception as error:  # a dropped connection or a failing disk on the source's side
                    raise SourceError(
                        f"{entry.path}: reading failed after {received} bytes: {error}"
                    ) from None
                if not chunk:
                    break
                received += len(chunk)
                if received > entry.size:
                    raise SourceError(f"{entry.path} is longer than the manifest's {entry.size} bytes")
                hasher.update(chunk)
                output.write(chunk)
                progress.moved(entry, received, source.name)
            if received != entry.size:
                raise SourceError(f"{entry.path} ended after {received} of {entry.size} bytes")
            if f"{entry.algorithm}:{hasher.hexdigest()}" != entry.digest:
                raise SourceError(f"{entry.path} digest mismatch")
            output.flush()
            os.fsync(output.fileno())
        os.rename(temporary, final)
        crash_point("agent.restore.file-restored")
    except OSError as error:
        raise RestoreError(f"cannot write {final}: {error.strerror or error}") from None
    finally:
        with suppress(Exception):  # closing a stream that already failed may fail again; nothing to add
            stream.close()
        with suppress(FileNotFoundError):
            os.unlink(temporary)


def _failure_message(report: RestoreReport) -> str:
    files = report.failed_files
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    reasons = "; ".join(str(r) for r in report.rejected) or "no source was left to try"
    kept = (
        f"; the {report.files} of {report.files + len(files)} files verified so far are kept in "
        f"{report.destination}: empty it before trying again"
        if report.files
        else ""
    )
    return f"no source gave a verified copy of {shown}: {reasons}{kept}"
