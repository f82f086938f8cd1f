"""The seeder's one read of the origin: several streams at once, handing over each part as it lands.

One TCP stream is a poor way to read an origin at its link rate while the same node's uplink is
busy serving the swarm: the stream's ACKs queue behind the upload, its round trip grows, and a lost
ACK stalls it. In bench.p2p_seed the one stream fell from ~180 to 89 Mbit/s (on 200) as soon as
the swarm ran beside it. Several streams on byte ranges, the usual way to read S3 fast anyway, keep
the origin's link busy while any one of them waits. Origins without ranges (HTTP) get one stream
per file instead.

Ranges are written in place with pwrite, so files are built out of order; each file is hashed for
the dataset digest once its part is complete, from the page cache, before the part is handed on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cairn.background import backoff_seconds
from cairn.node_agent.datasets.origin import Origin, OriginError, OriginFile
from cairn.node_agent.host.priority import run_in_background
from cairn.node_agent.host.rate_limit import TokenBucket
from cairn.node_agent.manifests import ManifestEntry, new_hasher
from cairn.units import MiB

STREAMS = 4
RANGE_BYTES = 8 * MiB
CAPPED_RANGE_BYTES = 1 * MiB
"""Under a cap the streams share one rate, so wide ranges only spread it over more parts at once:
4 streams on 4 files of one and the next part published the first after twice its time. Narrow
ranges keep every stream on the earliest part, so peers can start on it sooner."""
READ_BYTES = 1 * MiB
SPAN_ATTEMPTS = 5
log = logging.getLogger("cairn.node.datasets.origin")


@dataclass(frozen=True)
class Span:
    file: OriginFile
    start: int
    length: int


def spans_of(file: OriginFile, ranged: bool, range_bytes: int = RANGE_BYTES) -> list[Span]:
    """The reads that make up `file`: ranges of `range_bytes`, or the whole file in one."""
    if not ranged or file.size <= range_bytes:
        return [Span(file, 0, file.size)]
    return [
        Span(file, start, min(range_bytes, file.size - start)) for start in range(0, file.size, range_bytes)
    ]


def fetch_parts(
    origin: Origin,
    parts: Sequence[Sequence[OriginFile]],
    data: Path,
    on_bytes: Callable[[int], None],
    on_part: Callable[[int, list[ManifestEntry]], None],
    streams: int = STREAMS,
    bucket: TokenBucket | None = None,
) -> None:
    """Read every part's files into `data` and call `on_part(index, entries)` for each, in order.

    `on_part` runs in the caller's thread while the streams read on into the next parts, so
    publishing one part never idles the origin's link. The first failure stops everything.
    With a `bucket` (a Background Dataset) the streams share its rate, and they run at the lowest
    CPU and I/O priority, so a job training on this node keeps its disk and cores.
    """
    for part in parts:
        for file in part:
            target = data / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                out.truncate(file.size)  # sparse until written: only what arrives takes space
    initializer = run_in_background if bucket is not None else None
    range_bytes = CAPPED_RANGE_BYTES if bucket is not None else RANGE_BYTES
    with ThreadPoolExecutor(streams, thread_name_prefix="origin", initializer=initializer) as pool:
        pending: list[list[Future[None]]] = [
            [
                pool.submit(_read_span, origin, span, data, on_bytes, bucket=bucket)
                for file in part
                for span in spans_of(file, origin.ranged, range_bytes)
            ]
            for part in parts
        ]
        try:
            for index, part in enumerate(parts):
                for future in pending[index]:
                    future.result()
                on_part(index, [_settle(data, file) for file in part])
        except BaseException:
            for futures in pending:
                for future in futures:
                    future.cancel()
            raise


def _read_span(
    origin: Origin,
    span: Span,
    data: Path,
    on_bytes: Callable[[int], None],
    *,
    bucket: TokenBucket | None = None,
    attempts: int = SPAN_ATTEMPTS,
    backoff: Callable[[int], float] = backoff_seconds,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Read one span into place, resuming a broken read where it stopped.

    A ranged origin is asked again from the first byte not yet written, so what arrived is kept
    and the origin is not read twice; one without ranges sends the file from its start again.
    After `attempts` broken reads the seeding fails with a reason instead of looping for ever.
    """
    cursor = _Cursor(span.start)
    end = span.start + span.length
    surplus = b""
    for attempt in range(1, attempts + 1):
        if not origin.ranged:
            cursor.offset = span.start
        try:
            surplus = _read_from(origin, span, data, on_bytes, cursor, bucket)
            break
        except OriginError:
            raise  # the origin's own answer, not a broken connection: no retry changes it
        except Exception as error:  # a reset, a timeout, a 5xx: the network's, so retried
            if attempt == attempts:
                raise OriginError(
                    "OriginUnavailable",
                    f"{span.file.path}: bytes {cursor.offset}-{end - 1} could not be read in "
                    f"{attempts} attempts: {type(error).__name__}: {error}",
                ) from None
            delay = backoff(attempt)
            log.warning(
                "%s: read broke at byte %d (%s); attempt %d of %d in %.0fs",
                span.file.path,
                cursor.offset,
                error,
                attempt + 1,
                attempts,
                delay,
            )
            sleep(delay)
    if cursor.offset != end or surplus:
        raise OriginError(
            "OriginChanged",
            f"{span.file.path}: the origin listed {span.file.size} bytes but sent "
            f"{'more' if surplus else cursor.offset - span.start} for bytes {span.start}-{end - 1}",
        )


@dataclass
class _Cursor:
    offset: int
    """The first byte of the span not yet written: where a broken read resumes."""


def _read_from(
    origin: Origin,
    span: Span,
    data: Path,
    on_bytes: Callable[[int], None],
    cursor: _Cursor,
    bucket: TokenBucket | None = None,
) -> bytes:
    """Read the span from cursor.offset on, moving the cursor as bytes land; any byte past its end."""
    end = span.start + span.length
    descriptor = os.open(data / span.file.path, os.O_WRONLY)
    try:
        length = end - cursor.offset if origin.ranged else None
        with origin.open(span.file, cursor.offset, length) as stream:
            while cursor.offset < end and (chunk := stream.read(min(READ_BYTES, end - cursor.offset))):
                if bucket is not None:
                    bucket.acquire(len(chunk))  # after the read: TCP then paces the origin to the cap
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(descriptor, view, cursor.offset)
                    view = view[written:]
                    cursor.offset += written
                on_bytes(len(chunk))
            return stream.read(1) if not origin.ranged else b""
    finally:
        os.close(descriptor)


def _settle(data: Path, file: OriginFile) -> ManifestEntry:
    """Hash the file for the dataset digest, from the page cache.

    No fsync: it held each part back by up to a second behind the loop device's writeback, and
    buys nothing. A seeder that crashes before finishing reads the origin again from the start,
    and one that crashes after has its files checked piece by piece on restart (no clean-shutdown
    marker), as every other node's are.
    """
    hasher = new_hasher("blake3")
    with open(data / file.path, "rb") as stream:
        while chunk := stream.read(8 * MiB):
            hasher.update(chunk)
    return ManifestEntry(file.path, file.size, f"blake3:{hasher.hexdigest()}")
