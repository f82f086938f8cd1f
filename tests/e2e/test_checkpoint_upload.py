"""The S3 tier uploader against the real S3 server: multipart, cap, crash and resume, verification."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest

from cairn.node_agent.checkpoints.upload import CheckpointUploader, TransferError, UploadError
from cairn.node_agent.host.files import TenantDirectory
from cairn.node_agent.manifests import MANIFEST_NAME, Manifest, build_manifest
from cairn.s3 import S3Location, checksum_header, s3_client, transport_checksum
from tests.testbed.bed import TestBed
from tests.testbed.checkpoints import write_dcp
from tests.testbed.leaks import process_env

MiB = 1024 * 1024
PART = 5 * MiB


def uploader(bed: TestBed, state_dir: Path, **kwargs) -> CheckpointUploader:
    assert bed.s3 is not None
    client = s3_client(bed.s3.endpoint, bed.s3.access_key, bed.s3.secret_key)
    return CheckpointUploader(client, state_dir, part_size=PART, **kwargs)


def test_upload_is_multipart_concurrent_and_verified(bed: TestBed, bucket: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / "step_100"
    write_dcp(checkpoint, [12 * MiB + 3, 7 * MiB, 1000])
    manifest = build_manifest(checkpoint)
    location = S3Location(bucket, "team-a/train/step_100")
    tier = uploader(bed, tmp_path / "state", concurrency=3)
    report = tier.upload(checkpoint, manifest, location)
    assert report.parts_sent == 3 + 2 + 1 + 1 and report.bytes_sent == manifest.total_bytes
    assert tier.verify(manifest, location) == []
    client = bed.s3.client()
    head = client.head_object(Bucket=bucket, Key="team-a/train/step_100/__0_0.distcp")
    assert head["ETag"].strip('"').endswith("-3")  # really multipart
    body = client.get_object(Bucket=bucket, Key="team-a/train/step_100/__0_0.distcp")["Body"].read()
    assert body == (checkpoint / "__0_0.distcp").read_bytes()
    stored = client.get_object(Bucket=bucket, Key=f"team-a/train/step_100/{MANIFEST_NAME}")["Body"].read()
    assert json.loads(stored) == json.loads(manifest.to_json())


def test_a_flipped_byte_in_s3_fails_verification(bed: TestBed, bucket: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / "step_5"
    write_dcp(checkpoint, [6 * MiB])
    manifest = build_manifest(checkpoint)
    location = S3Location(bucket, "ckpt/step_5")
    tier = uploader(bed, tmp_path / "state")
    tier.upload(checkpoint, manifest, location)
    client = bed.s3.client()
    key = "ckpt/step_5/__0_0.distcp"
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[12345] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))  # someone rewrote it behind our back
    problems = tier.verify(manifest, location)
    assert len(problems) == 1 and "__0_0.distcp" in problems[0]


def test_objects_carry_s3s_crc_of_the_whole_file_and_no_body_is_hashed_to_sign(
    bed: TestBed, bucket: str, tmp_path: Path
) -> None:
    """The transport is guarded by a CRC S3 checks, not by SHA-256: no body pays for a second
    cryptographic pass (botocore signs bodies with SHA-256 over plain HTTP unless told not to)."""
    checkpoint = tmp_path / "step_11"
    write_dcp(checkpoint, [11 * MiB + 17, 2000])
    manifest = build_manifest(checkpoint)
    location = S3Location(bucket, "ckpt/step_11")
    tier = uploader(bed, tmp_path / "state", concurrency=2)
    signed: list[str] = []
    tier.client.meta.events.register(
        "before-send.s3", lambda request, **_: signed.append(request.headers["X-Amz-Content-SHA256"])
    )
    tier.upload(checkpoint, manifest, location)
    assert tier.verify(manifest, location) == []
    # create, 3 parts, complete for the shard; one PUT each for .metadata and the manifest
    assert len(signed) >= 7 and all(value in (b"UNSIGNED-PAYLOAD", "UNSIGNED-PAYLOAD") for value in signed)
    client = bed.s3.client()
    for name in ("__0_0.distcp", ".metadata"):
        head = client.head_object(Bucket=bucket, Key=f"ckpt/step_11/{name}", ChecksumMode="ENABLED")
        expected = checksum_header(transport_checksum((checkpoint / name).read_bytes()))
        assert head.get("ChecksumCRC64NVME") == expected, head
        assert head.get("ChecksumType") == "FULL_OBJECT" and "ChecksumSHA256" not in head


class CorruptingUploaderFault(CheckpointUploader):
    """Injects a fault no real part makes on demand: one bit flipped in a part's body after its CRC
    was computed, as a bad NIC or a bug between the hash and the socket would."""

    def _body(self, data: bytes) -> bytes:
        return data if len(data) < PART else bytes([data[0] ^ 1]) + data[1:]


def test_s3_refuses_a_part_whose_bytes_do_not_match_its_crc(
    bed: TestBed, bucket: str, tmp_path: Path
) -> None:
    assert bed.s3 is not None
    checkpoint = tmp_path / "step_13"
    write_dcp(checkpoint, [6 * MiB])
    manifest = build_manifest(checkpoint)
    client = s3_client(bed.s3.endpoint, bed.s3.access_key, bed.s3.secret_key)
    tier = CorruptingUploaderFault(client, tmp_path / "state", part_size=PART)
    location = S3Location(bucket, "ckpt/step_13")
    with pytest.raises(TransferError, match=r"__0_0\.distcp"):
        tier.upload(checkpoint, manifest, location)
    listing = bed.s3.client().list_objects_v2(Bucket=bucket, Prefix="ckpt/step_13/__0_0")
    assert not listing.get("Contents"), "a corrupted part was completed into an object"


def test_a_copy_an_older_agent_made_with_sha256_still_verifies(
    bed: TestBed, bucket: str, tmp_path: Path
) -> None:
    """Copies made before the CRC carry S3's SHA-256 instead; they stay proven, not re-uploaded."""
    import base64
    import hashlib

    checkpoint = tmp_path / "step_17"
    write_dcp(checkpoint, [1000, 3000])
    manifest = build_manifest(checkpoint)
    location = S3Location(bucket, "ckpt/step_17")
    client = bed.s3.client()
    for entry in manifest.files:
        data = (checkpoint / entry.path).read_bytes()
        client.put_object(
            Bucket=bucket,
            Key=location.key(entry.path),
            Body=data,
            ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
            Metadata={"cairn-digest": entry.digest},
        )
    client.put_object(Bucket=bucket, Key=location.key(MANIFEST_NAME), Body=manifest.to_json().encode())
    assert uploader(bed, tmp_path / "state").verify(manifest, location) == []


def test_a_file_changed_after_its_manifest_is_never_reported_uploaded(
    bed: TestBed, bucket: str, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "step_7"
    write_dcp(checkpoint, [6 * MiB])
    manifest = build_manifest(checkpoint)
    with (checkpoint / "__0_0.distcp").open("r+b") as shard:
        shard.seek(100)
        shard.write(b"X")
    with pytest.raises(UploadError, match="changed after its manifest was built"):
        uploader(bed, tmp_path / "state").upload(checkpoint, manifest, S3Location(bucket, "ckpt/step_7"))


def test_bandwidth_cap_holds_across_concurrent_parts(bed: TestBed, bucket: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / "step_9"
    write_dcp(checkpoint, [10 * MiB])
    manifest = build_manifest(checkpoint)
    tier = uploader(bed, tmp_path / "state", concurrency=4, bandwidth_bytes_per_second=8 * MiB)
    started = time.monotonic()
    report = tier.upload(checkpoint, manifest, S3Location(bucket, "ckpt/step_9"))
    # A correctness bound, not a speed claim: 10 MiB at 8 MiB/s cannot take less than ~1 s.
    assert time.monotonic() - started >= 0.9
    assert report.bytes_sent >= 10 * MiB


def test_upload_resumes_after_kill_9_without_resending_finished_parts(
    bed: TestBed, bucket: str, tmp_path: Path
) -> None:
    assert bed.s3 is not None
    checkpoint = tmp_path / "step_200"
    write_dcp(checkpoint, [40 * MiB])
    (checkpoint / MANIFEST_NAME).write_text(build_manifest(checkpoint).to_json())
    state_dir = tmp_path / "state"
    env = process_env(
        bed.run_id,
        {**os.environ, "AWS_ACCESS_KEY_ID": bed.s3.access_key, "AWS_SECRET_ACCESS_KEY": bed.s3.secret_key},
    )
    argv = [
        sys.executable,
        "-m",
        "cairn.node_agent.checkpoints.upload",
        "--dir",
        str(checkpoint),
        "--endpoint",
        bed.s3.endpoint,
        "--bucket",
        bucket,
        "--prefix",
        "ckpt/step_200",
        "--state-dir",
        str(state_dir),
        "--part-size",
        str(PART),
        "--concurrency",
        "2",
    ]
    slow = subprocess.Popen(
        [*argv, "--bandwidth", str(4 * MiB)], env=env, stdout=subprocess.PIPE, start_new_session=True
    )

    def finished_parts() -> int:
        files = [p for p in state_dir.glob("*.json")]
        if not files:
            return 0
        state = json.loads(files[0].read_text())["files"]
        return sum(len(f["parts"]) for f in state.values())

    deadline = time.monotonic() + 30
    while finished_parts() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(slow.pid, signal.SIGKILL)
    slow.wait(timeout=10)
    slow.stdout.close()
    done_before = finished_parts()
    assert 3 <= done_before < 8
    in_flight = bed.s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in in_flight] == ["ckpt/step_200/__0_0.distcp"]

    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["problems"] == []
    assert report["parts_skipped"] >= done_before
    # `.metadata` sorts first and finished before the kill; of the shard's 8 parts only the missing go.
    assert report["files"] == 1
    assert report["parts_skipped"] + report["parts_sent"] == 8
    body = bed.s3.client().get_object(Bucket=bucket, Key="ckpt/step_200/__0_0.distcp")["Body"].read()
    assert body == (checkpoint / "__0_0.distcp").read_bytes()


def _upload_in_child(
    endpoint: str, keys: tuple[str, str], volume: Path, manifest_json: str, state: Path, bucket: str, out
) -> None:
    directory = TenantDirectory(volume, PurePosixPath("ckpt/step_3"))
    client = s3_client(endpoint, *keys)
    try:
        CheckpointUploader(client, state, part_size=PART).upload(
            directory, Manifest.from_json(manifest_json), S3Location(bucket, "ckpt/x")
        )
    except UploadError as error:
        out.put((type(error).__name__, str(error)))
    else:
        out.put(("uploaded", ""))


@pytest.mark.parametrize("swap", ["fifo", "symlink-to-dev-zero", "symlink-to-host-file", "parent-symlink"])
def test_a_shard_swapped_after_its_manifest_is_refused_and_nothing_outside_is_read(
    bed: TestBed, bucket: str, tmp_path: Path, swap: str
) -> None:
    """The tenant owns the files: swapping one after the manifest must not block, loop or leak."""
    assert bed.s3 is not None
    volume = tmp_path / "volume"
    checkpoint = volume / "ckpt" / "step_3"
    write_dcp(checkpoint, [6 * MiB, 1000])  # a multipart shard and a small one
    manifest = build_manifest(checkpoint)
    host = tmp_path / "host"
    host.mkdir()
    secret = b"HOST-SECRET " * (600 * 1024)
    (host / "shadow").write_bytes(secret)
    shard = checkpoint / "__0_0.distcp"
    if swap == "parent-symlink":
        os.rename(checkpoint, volume / "ckpt" / "moved")
        os.symlink(host, checkpoint)
        (host / "__0_0.distcp").write_bytes(secret[: 6 * MiB])
    else:
        shard.unlink()
        if swap == "fifo":
            os.mkfifo(shard)
        elif swap == "symlink-to-dev-zero":
            os.symlink("/dev/zero", shard)
        else:
            os.symlink(host / "shadow", shard)
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    keys = (bed.s3.access_key, bed.s3.secret_key)
    child = spawn.Process(
        target=_upload_in_child,
        args=(bed.s3.endpoint, keys, volume, manifest.to_json(), tmp_path / "state", bucket, results),
    )
    child.start()
    child.join(20)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"uploading a checkpoint with a {swap} in it did not end within 20 s")
    kind, message = results.get(timeout=5)
    assert kind == "UnsafeFileError", message
    # Files go in manifest order; with the directory itself swapped, the first one is refused.
    assert message.startswith(".metadata" if swap == "parent-symlink" else "__0_0.distcp")
    client = bed.s3.client()
    for entry in client.list_objects_v2(Bucket=bucket, Prefix="ckpt/x/").get("Contents", []):
        assert b"HOST-SECRET" not in client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        parts = client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        assert not parts.get("Parts"), f"parts of {upload['Key']} were sent before the refusal"
