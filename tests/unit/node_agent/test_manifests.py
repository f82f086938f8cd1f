"""Checkpoint manifests over real files in tmp_path: hashing, round trips, tampering, unsafe names."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import blake3
import pytest

from cairn.node_agent import manifests
from cairn.node_agent.manifests import (
    ALL_CORES,
    MANIFEST_NAME,
    HashAlgorithm,
    Manifest,
    ManifestEntry,
    ManifestError,
    build_manifest,
    hash_file,
    verify_file,
    verify_tree,
)
from cairn.paths import UnsafePathError, safe_relative_path

ALGORITHMS = pytest.mark.parametrize("algorithm", list(HashAlgorithm))


def dcp_checkpoint(root: Path) -> Path:
    """A DCP-shaped checkpoint: two shards, .metadata, a nested directory and an empty one."""
    step = root / "step_100"
    (step / "extra").mkdir(parents=True)
    (step / "empty").mkdir()
    (step / "__0_0.distcp").write_bytes(os.urandom(300_000))
    (step / "__1_0.distcp").write_bytes(os.urandom(123_457))
    (step / "extra" / "rng.pt").write_bytes(b"rng state")
    (step / ".metadata").write_bytes(b"dcp metadata")
    return step


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0x01]))


@ALGORITHMS
def test_manifest_lists_every_file_with_size_and_hash(tmp_path: Path, algorithm: HashAlgorithm) -> None:
    step = dcp_checkpoint(tmp_path)
    manifest = build_manifest(step, algorithm)
    assert [f.path for f in manifest.files] == [".metadata", "__0_0.distcp", "__1_0.distcp", "extra/rng.pt"]
    assert manifest.empty_dirs == ("empty",)
    assert manifest.total_bytes == 300_000 + 123_457 + len(b"rng state") + len(b"dcp metadata")
    reference = hashlib.sha256 if algorithm is HashAlgorithm.SHA256 else blake3.blake3
    for entry in manifest.files:
        assert entry.size == (step / entry.path).stat().st_size
        assert entry.digest == f"{algorithm}:{reference((step / entry.path).read_bytes()).hexdigest()}"


@ALGORITHMS
def test_manifest_survives_a_json_round_trip(tmp_path: Path, algorithm: HashAlgorithm) -> None:
    manifest = build_manifest(dcp_checkpoint(tmp_path), algorithm)
    text = manifest.to_json()
    again = Manifest.from_json(text)
    assert again == manifest
    assert again.digest == manifest.digest
    assert again.to_json() == text, "serialisation is stable"
    document = json.loads(text)
    assert (document["version"], document["algorithm"], document["totalBytes"]) == (
        1,
        str(algorithm),
        manifest.total_bytes,
    )
    assert text == json.dumps(document, sort_keys=True, indent=1) + "\n", "keys are sorted"


def test_whole_checkpoint_digest_changes_with_any_entry_and_not_with_order(tmp_path: Path) -> None:
    manifest = build_manifest(dcp_checkpoint(tmp_path))
    reordered = Manifest(manifest.algorithm, tuple(reversed(manifest.files)), manifest.empty_dirs)
    assert reordered.digest == manifest.digest
    first, *rest = manifest.files
    renamed = Manifest(manifest.algorithm, (ManifestEntry("renamed", first.size, first.digest), *rest))
    resized = Manifest(manifest.algorithm, (ManifestEntry(first.path, first.size + 1, first.digest), *rest))
    digests = {manifest.digest, renamed.digest, resized.digest}
    assert len(digests) == 3
    assert manifest.digest.startswith("blake3:")


def test_a_flipped_byte_fails_verification(tmp_path: Path) -> None:
    step = dcp_checkpoint(tmp_path)
    manifest = build_manifest(step)
    shard = next(f for f in manifest.files if f.path == "__0_0.distcp")
    assert verify_file(step / shard.path, shard)
    assert verify_tree(step, manifest) == []
    flip_byte(step / shard.path, 200_001)
    assert not verify_file(step / shard.path, shard)
    [problem] = verify_tree(step, manifest)
    assert "__0_0.distcp does not match the manifest" in problem


def test_verify_file_is_false_for_missing_truncated_and_non_regular_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"0123456789")
    _, digest = hash_file(data, HashAlgorithm.BLAKE3)
    entry = ManifestEntry("data", 10, digest)
    assert verify_file(data, entry)
    assert not verify_file(tmp_path / "absent", entry)
    assert not verify_file(tmp_path, entry)
    (tmp_path / "link").symlink_to(data)
    assert not verify_file(tmp_path / "link", entry), "a symlink is not the file the manifest describes"
    data.write_bytes(b"012345678")
    assert not verify_file(data, entry)


def test_verify_tree_reports_missing_extra_and_odd_entries(tmp_path: Path) -> None:
    step = dcp_checkpoint(tmp_path)
    manifest = build_manifest(step)
    (step / "__1_0.distcp").unlink()
    (step / "empty").rmdir()
    (step / "stray.bin").write_bytes(b"?")
    (step / "sneaky").symlink_to("/etc/passwd")
    (step / MANIFEST_NAME).write_text(manifest.to_json())
    problems = "\n".join(verify_tree(step, manifest))
    assert "__1_0.distcp is missing" in problems
    assert "empty is missing" in problems
    assert "stray.bin is not in the manifest" in problems
    assert "sneaky is a symlink" in problems
    assert MANIFEST_NAME not in problems, "the manifest beside the files is expected"
    assert verify_tree(tmp_path / "nowhere", manifest) == [f"{tmp_path / 'nowhere'} is not a directory"]


def test_hashing_in_small_chunks_or_on_all_cores_gives_the_same_digest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    whole = hash_file(data, HashAlgorithm.BLAKE3)
    assert hash_file(data, HashAlgorithm.BLAKE3, chunk_bytes=4096) == whole
    assert hash_file(data, HashAlgorithm.BLAKE3, threads=ALL_CORES) == whole
    assert hash_file(data, HashAlgorithm.SHA256, chunk_bytes=4096) == hash_file(data, HashAlgorithm.SHA256)


def test_the_manifest_file_itself_is_not_in_the_manifest(tmp_path: Path) -> None:
    step = dcp_checkpoint(tmp_path)
    before = build_manifest(step)
    (step / MANIFEST_NAME).write_text(before.to_json())
    assert build_manifest(step) == before


def test_a_symlink_in_a_checkpoint_is_refused_with_advice(tmp_path: Path) -> None:
    step = dcp_checkpoint(tmp_path)
    (step / "latest").symlink_to(step / ".metadata")
    with pytest.raises(ManifestError, match="is a symlink; a checkpoint is tiered as plain files"):
        build_manifest(step)


def test_a_file_name_that_could_not_be_restored_safely_is_refused(tmp_path: Path) -> None:
    step = dcp_checkpoint(tmp_path)
    (step / "a\\b").write_bytes(b"x")
    with pytest.raises(ManifestError, match=r"backslash.*rename the file"):
        build_manifest(step)


def test_a_file_that_changes_while_hashed_fails_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = dcp_checkpoint(tmp_path)
    real_hash_stream = manifests.hash_stream

    def hash_then_append(stream: BinaryIO, *args: object, **kwargs: object) -> tuple[int, str]:
        result = real_hash_stream(stream, *args, **kwargs)  # type: ignore[arg-type]
        with open(f"/proc/self/fd/{stream.fileno()}", "ab") as writer:
            writer.write(b"late write")
        return result

    monkeypatch.setattr(manifests, "hash_stream", hash_then_append)
    with pytest.raises(ManifestError, match="changed while it was hashed"):
        build_manifest(step)


def test_non_utf8_file_names_survive_the_round_trip(tmp_path: Path) -> None:
    odd = os.fsdecode(b"shard-\xff.bin")
    (tmp_path / odd).write_bytes(b"data")
    manifest = build_manifest(tmp_path)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert verify_tree(tmp_path, manifest) == []


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/passwd", "a/../../b", "a\\b", "", "..", ".", "./a", "a/./b", "a//b", "a/", "a\0b"],
)
def test_unsafe_names_are_rejected(name: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(name)


@pytest.mark.parametrize("name", [".metadata", "step_1/__0_0.distcp", "a..b", "...", "d/e f/g-h"])
def test_ordinary_names_are_accepted_unchanged(name: str) -> None:
    assert safe_relative_path(name) == PurePosixPath(name)
    assert str(safe_relative_path(name)) == name


def test_a_manifest_naming_a_path_outside_the_checkpoint_is_refused_on_load(tmp_path: Path) -> None:
    manifest = build_manifest(dcp_checkpoint(tmp_path))
    document = json.loads(manifest.to_json())
    document["files"][0]["path"] = "../../etc/cron.d/evil"
    with pytest.raises(UnsafePathError):
        Manifest.from_json(json.dumps(document))


def test_an_edited_manifest_is_detected_on_load(tmp_path: Path) -> None:
    document = json.loads(build_manifest(dcp_checkpoint(tmp_path)).to_json())
    document["files"][1]["size"] += 1
    with pytest.raises(ManifestError, match="was altered"):
        Manifest.from_json(json.dumps(document))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("version", 2, "upgrade the node agent"),
        ("format", "something-else", "not a Cairn checkpoint manifest"),
        ("algorithm", "md5", "malformed"),
    ],
)
def test_a_foreign_or_future_manifest_is_refused(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    document = json.loads(build_manifest(dcp_checkpoint(tmp_path)).to_json())
    document[field] = value
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(json.dumps(document))


@pytest.mark.parametrize(
    "entry",
    [
        {"path": "a", "size": True, "digest": "blake3:" + "0" * 64},
        {"path": "a", "size": 1.5, "digest": "blake3:" + "0" * 64},
        {"path": "a", "size": -1, "digest": "blake3:" + "0" * 64},
        {"path": "a", "size": 1, "digest": "sha256:" + "0" * 64},
        {"path": "a", "size": 1, "digest": "blake3:xyz"},
        {"path": 7, "size": 1, "digest": "blake3:" + "0" * 64},
    ],
)
def test_malformed_entries_are_refused(entry: dict[str, object]) -> None:
    document = {
        "format": "cairn.dev/checkpoint-manifest",
        "version": 1,
        "algorithm": "blake3",
        "files": [entry],
    }
    with pytest.raises(ManifestError):
        Manifest.from_json(json.dumps(document))


def test_duplicate_entries_are_refused() -> None:
    entry = ManifestEntry("a", 1, "blake3:" + "0" * 64)
    with pytest.raises(ManifestError, match="twice"):
        Manifest(HashAlgorithm.BLAKE3, (entry, entry))


@pytest.mark.parametrize("swap", ["fifo", "symlink-to-dev-zero", "symlink-to-host-file", "replaced"])
def test_a_shard_swapped_between_listing_and_hashing_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    step = dcp_checkpoint(tmp_path)
    host_file = tmp_path / "host-shadow"
    host_file.write_bytes(b"HOST SECRET" * 1000)
    real_list_beneath = manifests.list_beneath
    opened: list[str] = []

    def list_then_swap(*args: object, **kwargs: object) -> object:
        listing = real_list_beneath(*args, **kwargs)  # type: ignore[arg-type]
        shard = step / "__0_0.distcp"
        shard.unlink()
        if swap == "fifo":
            os.mkfifo(shard)
        elif swap == "symlink-to-dev-zero":
            os.symlink("/dev/zero", shard)
        elif swap == "symlink-to-host-file":
            os.symlink(host_file, shard)
        else:
            shard.write_bytes(os.urandom(300_000))  # same size, another inode
        return listing

    real_hash_stream = manifests.hash_stream

    def hash_recording(stream: BinaryIO, *args: object, **kwargs: object) -> tuple[int, str]:
        opened.append(os.readlink(f"/proc/self/fd/{stream.fileno()}"))
        return real_hash_stream(stream, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(manifests, "list_beneath", list_then_swap)
    monkeypatch.setattr(manifests, "hash_stream", hash_recording)
    with pytest.raises(ManifestError, match=r"__0_0\.distcp"):
        build_manifest(step)
    assert str(host_file) not in opened and "/dev/zero" not in opened
