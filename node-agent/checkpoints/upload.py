"""Tiering a checkpoint to S3: multipart, concurrent, rate-limited, resumable, verified.

Each part is read once. The same bytes feed the file's manifest hash (BLAKE3) and a CRC-64/NVME
that S3 checks on receipt (it refuses a part whose bytes do not match). S3 combines the parts' CRCs
into the whole object's and compares that with ours at completion, so when the file's hash equals
the manifest entry and the object's checksum equals ours, the remote copy is proven equal to the
manifest without reading it back. (Until 2026-12 the transport checksum was SHA-256, one more full
cryptographic pass over every byte beside the trainer; verification still accepts such copies.)

Progress is persisted after every part, keyed by the location and the manifest's digest, so
progress made for one manifest is never taken for another's. After a crash (kill -9 included) the
next run asks S3 which parts it holds, re-reads them locally only to hash them, and sends the rest.

A remote copy is never overwritten by a different one: each object carries the manifest digest of
its file as metadata, and an upload into a location whose manifest names other contents is refused.
Verification reads only the remote side and compares it with the manifest: the remote manifest's
digest, each object's size, its recorded digest and S3's own checksum over what it received.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from cairn.fault_injection import crash_point
from cairn.node_agent.host.files import Directory, atomic_write, open_beneath
from cairn.node_agent.host.priority import run_in_background
from cairn.node_agent.host.rate_limit import ThrottledBody, TokenBucket
from cairn.node_agent.manifests import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestEntry,
    ManifestError,
    new_hasher,
)
from cairn.paths import UnsafePathError, safe_relative_path
from cairn.s3 import (
    TRANSPORT_CHECKSUM,
    S3Location,
    checksum_header,
    combined_checksum,
    s3_client,
    transport_checksum,
)
from cairn.units import MiB

MIN_PART_BYTES = 5 * MiB  # S3's floor for every part but the last


class UploadError(Exception):
    pass


DIGEST_METADATA = "cairn-digest"
"""Object metadata naming the manifest digest of the file it holds (`blake3:…`)."""


class RemoteConflictError(UploadError):
    """The location already holds a different checkpoint; nothing was written."""


def checkpoint_location(
    bucket: str, target_prefix: str, namespace: str, pvc: str, path: str, checkpoint_uid: str
) -> S3Location:
    """`<prefix>/<namespace>/<pvc>/<checkpoint path>/<Checkpoint uid>`.

    Browsable by claim and step, and the uid makes it this record's alone: a claim deleted and
    made again under the same name, writing the same step path, lands beside the first run's copy
    instead of over it, and both Checkpoints stay restorable.
    """
    if not checkpoint_uid or "/" in checkpoint_uid:
        raise ValueError(f"checkpoint uid {checkpoint_uid!r} cannot name a remote location")
    parts = [target_prefix.strip("/"), namespace, pvc, str(safe_relative_path(path)), checkpoint_uid]
    return S3Location(bucket, "/".join(p for p in parts if p))


@dataclass
class UploadReport:
    bytes_sent: int = 0
    parts_sent: int = 0
    parts_skipped: int = 0
    files: int = 0
    seconds: float = 0.0
    url: str = ""


CHECKSUM_FIELD = f"Checksum{TRANSPORT_CHECKSUM}"
LEGACY_CHECKSUM_FIELD = "ChecksumSHA256"
"""What copies uploaded before the CRC carry; S3 computed it over what it received, as it does the CRC."""


class UploadState:
    """What has been uploaded, persisted atomically (write to a temp name, then rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        if path.exists():
            self.files = json.loads(path.read_text())["files"]

    def file(self, relative: str) -> dict[str, Any]:
        with self._lock:
            return self.files.setdefault(relative, {"uploadId": None, "parts": {}, "checksum": None})

    def record_part(self, relative: str, number: int, etag: str, checksum: str) -> None:
        with self._lock:
            self.files[relative]["parts"][str(number)] = {"etag": etag, "checksum": checksum}
            self._save_locked()

    def update(self, relative: str, **values: Any) -> None:
        with self._lock:
            self.files[relative].update(values)
            self._save_locked()

    def _save_locked(self) -> None:
        atomic_write(self.path, json.dumps({"files": self.files}, sort_keys=True))


def state_path(state_dir: Path, location: S3Location, manifest_digest: str) -> Path:
    """One file per location and manifest: progress towards one manifest never counts for another."""
    name = hashlib.sha256(f"{location.url}\n{manifest_digest}".encode()).hexdigest()[:24]
    return state_dir / f"{name}.json"


class CheckpointUploader:
    def __init__(
        self,
        client: Any,
        state_dir: Path,
        *,
        concurrency: int = 4,
        part_size: int = 64 * MiB,
        bandwidth_bytes_per_second: int = 0,
    ) -> None:
        if part_size < MIN_PART_BYTES:
            raise ValueError(f"part size {part_size} is below S3's minimum of {MIN_PART_BYTES}")
        self.client = client
        self.state_dir = state_dir
        self.concurrency = concurrency
        self.part_size = part_size
        self.bucket = TokenBucket(bandwidth_bytes_per_second)

    def upload(
        self,
        directory: Directory,
        manifest: Manifest,
        location: S3Location,
        on_progress: Callable[[int], None] = lambda sent: None,
    ) -> UploadReport:
        started = time.monotonic()
        self._refuse_a_different_copy(manifest, location)
        state = UploadState(state_path(self.state_dir, location, manifest.digest))
        report = UploadReport(url=location.url)
        for entry in manifest.files:
            if state.file(entry.path).get("checksum"):
                continue  # finished in an earlier run
            with open_entry(directory, entry) as stream:
                if entry.size <= self.part_size:
                    self._put_small(stream, entry, location, state, report)
                else:
                    self._put_multipart(stream, entry, location, state, report, on_progress)
            report.files += 1
            on_progress(report.bytes_sent)
        # The manifest goes last: its presence says every file it names is in place.
        text = manifest.to_json().encode()
        self.client.put_object(
            Bucket=location.bucket,
            Key=location.key(MANIFEST_NAME),
            Body=text,
            **{CHECKSUM_FIELD: checksum_header(transport_checksum(text))},
        )
        report.seconds = time.monotonic() - started
        return report

    def _remote_manifest(self, location: S3Location) -> Manifest | None:
        try:
            response = self.client.get_object(Bucket=location.bucket, Key=location.key(MANIFEST_NAME))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return Manifest.from_json(response["Body"].read(MAX_MANIFEST_BYTES + 1))

    def _refuse_a_different_copy(self, manifest: Manifest, location: S3Location) -> None:
        try:
            remote = self._remote_manifest(location)
        except ManifestError as error:
            raise RemoteConflictError(
                f"{location.url} already holds an unreadable manifest ({error}); it is left as it is"
            ) from None
        if remote is not None and remote.digest != manifest.digest:
            raise RemoteConflictError(
                f"{location.url} already holds checkpoint {remote.digest}, not {manifest.digest}; "
                "another copy points there, so nothing was overwritten"
            )

    def abandon(self, manifest: Manifest, location: S3Location) -> None:
        """Aborts this manifest's unfinished multipart uploads and forgets its progress: after a
        failure no retry can fix, parts nobody will complete must not be billed forever."""
        path = state_path(self.state_dir, location, manifest.digest)
        state = UploadState(path)
        for relative, record in state.files.items():
            if record.get("uploadId"):
                with contextlib.suppress(ClientError):
                    self.client.abort_multipart_upload(
                        Bucket=location.bucket, Key=location.key(relative), UploadId=record["uploadId"]
                    )
        path.unlink(missing_ok=True)

    # -- one file -------------------------------------------------------------------------------

    def _body(self, data: bytes) -> bytes | ThrottledBody:
        # Without a cap, hand botocore the bytes themselves: no per-read Python overhead.
        return ThrottledBody(data, self.bucket) if self.bucket.rate > 0 else data

    def _put_small(
        self,
        stream: BinaryIO,
        entry: ManifestEntry,
        location: S3Location,
        state: UploadState,
        report: UploadReport,
    ) -> None:
        data = stream.read(entry.size + 1)  # one byte over shows a file grown since its manifest
        _check_matches_manifest(entry, data_hash(entry, [data]), len(data))
        checksum = checksum_header(transport_checksum(data))
        self.client.put_object(
            Bucket=location.bucket,
            Key=location.key(entry.path),
            Body=self._body(data),
            ContentLength=len(data),
            Metadata={DIGEST_METADATA: entry.digest},
            **{CHECKSUM_FIELD: checksum},
        )
        state.update(entry.path, checksum=checksum)
        report.bytes_sent += len(data)
        report.parts_sent += 1

    def _put_multipart(
        self,
        stream: BinaryIO,
        entry: ManifestEntry,
        location: S3Location,
        state: UploadState,
        report: UploadReport,
        on_progress: Callable[[int], None],
    ) -> None:
        key = location.key(entry.path)
        record = state.file(entry.path)
        if record.get("uploadId") and record.get("algorithm", "SHA256") != TRANSPORT_CHECKSUM:
            # Begun by an older agent with another checksum: S3 would refuse our parts into it.
            with contextlib.suppress(ClientError):
                self.client.abort_multipart_upload(
                    Bucket=location.bucket, Key=key, UploadId=record["uploadId"]
                )
            state.update(entry.path, uploadId=None, parts={})
        held = self._parts_on_server(location.bucket, key, state.file(entry.path).get("uploadId"))
        if held is None:
            upload = self.client.create_multipart_upload(
                Bucket=location.bucket,
                Key=key,
                ChecksumAlgorithm=TRANSPORT_CHECKSUM,
                ChecksumType="FULL_OBJECT",
                Metadata={DIGEST_METADATA: entry.digest},
            )
            state.update(entry.path, uploadId=upload["UploadId"], parts={}, algorithm=TRANSPORT_CHECKSUM)
            held = {}
        upload_id = state.file(entry.path)["uploadId"]

        hasher = new_hasher(entry.algorithm)
        part_crcs: dict[int, tuple[int, int]] = {}
        """Each part's CRC and length: the whole object's CRC is combined from them."""
        completed: dict[int, tuple[str, str]] = {}
        failures: list[BaseException] = []
        in_flight = threading.Semaphore(self.concurrency)
        lock = threading.Lock()

        def send(number: int, data: bytes) -> None:
            try:
                crc = transport_checksum(data)
                checksum = checksum_header(crc)
                with lock:
                    part_crcs[number] = (crc, len(data))
                response = self.client.upload_part(
                    Bucket=location.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=self._body(data),
                    ContentLength=len(data),
                    **{CHECKSUM_FIELD: checksum},
                )
                state.record_part(entry.path, number, response["ETag"], checksum)
                crash_point("agent.upload.part-sent")
                with lock:
                    completed[number] = (response["ETag"], checksum)
                    report.bytes_sent += len(data)
                    report.parts_sent += 1
                on_progress(report.bytes_sent)
            except BaseException as error:  # surfaced after the pool drains
                failures.append(error)
            finally:
                in_flight.release()

        size = 0
        pool = ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="upload", initializer=run_in_background
        )
        with pool:
            futures: list[Future[None]] = []
            number = 0
            # Never more than the manifest's size: a file grown since (or /dev/zero) is not read on.
            while data := stream.read(min(self.part_size, entry.size + 1 - size)):
                number += 1
                size += len(data)
                hasher.update(data)
                if number in held:
                    # Resuming: a part S3 holds is skipped only if it holds exactly these bytes.
                    crc = transport_checksum(data)
                    if held[number][1] == checksum_header(crc):
                        part_crcs[number] = (crc, len(data))
                        completed[number] = held[number]
                        report.parts_skipped += 1
                        continue
                in_flight.acquire()  # bounds memory to `concurrency` parts
                if failures:
                    in_flight.release()
                    break
                futures.append(pool.submit(send, number, data))
            for future in futures:
                future.result()
        if failures:
            # Kept, not aborted: the parts that did arrive are what a retry resumes from.
            raise TransferError(f"uploading {entry.path} failed: {failures[0]}") from failures[0]
        try:
            _check_matches_manifest(entry, f"{entry.algorithm}:{hasher.hexdigest()}", size)
        except UploadError:
            # These bytes will never be completed into an object: do not leave them billed in S3.
            with contextlib.suppress(ClientError):
                self.client.abort_multipart_upload(Bucket=location.bucket, Key=key, UploadId=upload_id)
            state.update(entry.path, uploadId=None, parts={})
            raise
        parts = [
            {"PartNumber": n, "ETag": completed[n][0], CHECKSUM_FIELD: completed[n][1]}
            for n in sorted(completed)
        ]
        whole = 0
        for number in sorted(part_crcs):
            crc, length = part_crcs[number]
            whole = combined_checksum(whole, crc, length)
        checksum = checksum_header(whole)
        # S3 combines the parts it holds the same way and refuses the completion if they differ.
        self.client.complete_multipart_upload(
            Bucket=location.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            ChecksumType="FULL_OBJECT",
            **{CHECKSUM_FIELD: checksum},
        )
        state.update(entry.path, checksum=checksum, uploadId=None)

    def _parts_on_server(
        self, bucket: str, key: str, upload_id: str | None
    ) -> dict[int, tuple[str, str]] | None:
        """Parts S3 holds for an earlier upload (it, not our state file, is the truth), or None."""
        if not upload_id:
            return None
        held: dict[int, tuple[str, str]] = {}
        marker = 0
        try:
            while True:
                page = self.client.list_parts(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
                )
                for part in page.get("Parts", []):
                    held[part["PartNumber"]] = (part["ETag"], part.get(CHECKSUM_FIELD, ""))
                if not page.get("IsTruncated"):
                    return held
                marker = page["NextPartNumberMarker"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
                return None  # expired or aborted: start that file again
            raise

    # -- verification --------------------------------------------------------------------------

    def verify(self, manifest: Manifest, location: S3Location) -> list[str]:
        """Problems with the remote copy, judged against the manifest; empty when it matches.

        Only the remote side and the manifest are consulted, so a copy is judged the same whether
        this agent uploaded it a moment ago or another run left it there. Each object must have the
        manifest's size, carry the manifest's digest for its file, and hold S3's checksum over the
        bytes it received (which S3 checked against the checksum computed from the bytes whose
        digest matched the manifest). Where this run's progress still knows the checksum sent, S3's
        must equal it too.
        """
        problems = []
        try:
            remote = self._remote_manifest(location)
        except (ClientError, ManifestError) as error:
            return [f"{MANIFEST_NAME}: unreadable ({error})"]
        if remote is None:
            return [f"{MANIFEST_NAME}: missing"]
        if remote.digest != manifest.digest:
            return [f"{MANIFEST_NAME}: names checkpoint {remote.digest}, not {manifest.digest}"]
        state = UploadState(state_path(self.state_dir, location, manifest.digest))
        for entry in manifest.files:
            sent = state.files.get(entry.path, {}).get("checksum")
            try:
                head = self.client.head_object(
                    Bucket=location.bucket, Key=location.key(entry.path), ChecksumMode="ENABLED"
                )
            except ClientError as error:
                problems.append(f"{entry.path}: {error.response.get('Error', {}).get('Code', error)}")
                continue
            recorded = head.get("Metadata", {}).get(DIGEST_METADATA)
            checksum = head.get(CHECKSUM_FIELD)
            if checksum is None and head.get(LEGACY_CHECKSUM_FIELD):
                checksum, sent = head[LEGACY_CHECKSUM_FIELD], None  # an older agent's copy
            if head["ContentLength"] != entry.size:
                problems.append(
                    f"{entry.path}: remote size {head['ContentLength']}, manifest says {entry.size}"
                )
            elif recorded != entry.digest:
                problems.append(f"{entry.path}: remote object holds {recorded}, manifest says {entry.digest}")
            elif not checksum or (sent and checksum != sent):
                problems.append(f"{entry.path}: remote checksum {checksum} is not {sent or 'present'}")
        return problems


def data_hash(entry: ManifestEntry, chunks: list[bytes]) -> str:
    hasher = new_hasher(entry.algorithm)
    for chunk in chunks:
        hasher.update(chunk)
    return f"{entry.algorithm}:{hasher.hexdigest()}"


class TransferError(UploadError):
    """S3 or the network failed mid-file; the parts that arrived are kept for the retry."""


class UnsafeFileError(UploadError):
    """A checkpoint file the agent will not read: a link, a FIFO or device, or another file."""


def open_entry(directory: Directory, entry: ManifestEntry) -> BinaryIO:
    """The manifest's file, opened beneath the checkpoint without following links, if it is still
    a regular file of the size the manifest names."""
    try:
        stream = open_beneath(directory, safe_relative_path(entry.path))
    except FileNotFoundError:
        raise UploadError(f"{entry.path} is gone since its manifest was built") from None
    except (OSError, UnsafePathError) as error:
        raise UnsafeFileError(
            f"{entry.path} cannot be read safely ({getattr(error, 'strerror', None) or error}): a link, "
            "FIFO or device where the manifest names a regular file; the checkpoint is not uploaded"
        ) from None
    size = os.fstat(stream.fileno()).st_size
    if size != entry.size:
        stream.close()
        raise UploadError(
            f"{entry.path} is {size} bytes, not the {entry.size} its manifest names; it changed after "
            "its manifest was built and the checkpoint was not marked uploaded"
        )
    return stream


def _check_matches_manifest(entry: ManifestEntry, digest: str, size: int) -> None:
    if size != entry.size or digest != entry.digest:
        raise UploadError(
            f"{entry.path} changed after its manifest was built (now {size} bytes, {digest}); "
            "the checkpoint is not consistent and was not marked uploaded"
        )


def main(argv: list[str] | None = None) -> None:
    """Upload one checkpoint directory (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--part-size", type=int, default=64 * MiB)
    parser.add_argument("--bandwidth", type=int, default=0, help="bytes per second; 0 is unlimited")
    args = parser.parse_args(argv)
    manifest = Manifest.from_json((args.dir / MANIFEST_NAME).read_text())
    client = s3_client(
        args.endpoint,
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
        concurrency=args.concurrency,
    )
    uploader = CheckpointUploader(
        client,
        args.state_dir,
        concurrency=args.concurrency,
        part_size=args.part_size,
        bandwidth_bytes_per_second=args.bandwidth,
    )
    location = S3Location(args.bucket, args.prefix)
    report = uploader.upload(args.dir, manifest, location)
    problems = uploader.verify(manifest, location)
    json.dump({**report.__dict__, "problems": problems}, sys.stdout)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
