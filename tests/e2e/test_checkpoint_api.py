"""The checkpoint resources as users meet them through kubectl."""

from __future__ import annotations

import json

from tests.testbed.bed import TestBed


def policy(target: dict) -> dict:
    return {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "CheckpointPolicy",
        "metadata": {"name": "hourly", "namespace": "default"},
        "spec": {
            "target": target,
            "retention": {"keepLocal": 2, "keepRemoteLast": 5, "keepRemoteEvery": 1000},
        },
    }


TARGET = {
    "endpoint": "http://s3.example:9000",
    "bucket": "ckpt",
    "credentialsSecretRef": {"name": "s3-creds"},
}


def test_a_policy_references_its_credentials_and_reads_well(bed: TestBed) -> None:
    cp = bed.control_plane
    cp.kubectl("apply", "-f", "-", input_text=json.dumps(policy(TARGET)))
    try:
        header, row = cp.kubectl("get", "ckptpolicy", "hourly").stdout.splitlines()
        assert header.split() == ["NAME", "BUCKET", "KEEP-LOCAL", "KEEP-REMOTE", "AGE"]
        assert row.split()[:4] == ["hourly", "ckpt", "2", "5"]
        stored = json.loads(cp.kubectl("get", "ckptpolicy", "hourly", "-o", "json").stdout)["spec"]
        # Defaults from the models are applied by the API server, so every reader sees the same policy.
        assert stored["commit"]["rules"] == ["dcp", "marker", "orbax"]
        assert stored["hashAlgorithm"] in ("blake3", "sha256")
    finally:
        cp.kubectl("delete", "ckptpolicy", "hourly")


def test_credentials_written_into_a_policy_are_refused(bed: TestBed) -> None:
    leaky = dict(TARGET, secretAccessKey="hunter2")
    result = bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(policy(leaky)), check=False)
    assert result.returncode != 0
    assert "secretAccessKey" in result.stderr
    assert bed.control_plane.kubectl("get", "ckptpolicy", "hourly", check=False).returncode != 0


def test_a_policy_that_would_let_one_upload_hold_unbounded_memory_is_refused(bed: TestBed) -> None:
    greedy = policy(TARGET)
    greedy["spec"]["upload"] = {"concurrency": 8, "partSizeBytes": 256 * 1024 * 1024}
    result = bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(greedy), check=False)
    assert result.returncode != 0
    assert "the memory an upload holds, may be at most 1 GiB" in result.stderr
    greedy["spec"]["upload"] = {"concurrency": 64}
    result = bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(greedy), check=False)
    assert result.returncode != 0 and "should be less than or equal to 16" in result.stderr
    long_pattern = policy(TARGET)
    long_pattern["spec"]["commit"] = {"stepPattern": "(" + "a" * 300 + r"\d+)"}
    result = bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(long_pattern), check=False)
    assert result.returncode != 0 and "stepPattern" in result.stderr
    assert bed.control_plane.kubectl("get", "ckptpolicy", "hourly", check=False).returncode != 0


def test_what_a_volume_is_filled_from_cannot_be_changed_once_it_exists(bed: TestBed) -> None:
    """The peer server lets a node read a checkpoint it restores into its own LocalVolume; were
    populateFrom mutable, an agent could point its volume at any checkpoint and read that."""
    cp = bed.control_plane
    volume = {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "LocalVolume",
        "metadata": {"name": "pvc-immutable-source"},
        "spec": {
            "csiName": "pvc-immutable-source",
            "nodeName": "node-a",
            "sizeBytes": 1 << 30,
            "populateFrom": {"kind": "Checkpoint", "namespace": "team-a", "name": "step-100"},
        },
    }
    cp.kubectl("apply", "-f", "-", input_text=json.dumps(volume))
    try:
        for patch in (
            {"spec": {"populateFrom": {"namespace": "team-b", "name": "their-step"}}},
            {"spec": {"populateFrom": None}},
        ):
            result = cp.kubectl(
                "patch", "lvol", "pvc-immutable-source", "--type=merge", "-p", json.dumps(patch), check=False
            )
            assert result.returncode != 0 and "populateFrom is immutable" in result.stderr, result.stderr
        stored = json.loads(cp.kubectl("get", "lvol", "pvc-immutable-source", "-o", "json").stdout)
        assert stored["spec"]["populateFrom"]["namespace"] == "team-a"
        assert (
            cp.kubectl(
                "patch",
                "lvol",
                "pvc-immutable-source",
                "--type=merge",
                "-p",
                '{"spec":{"sizeBytes":2147483648}}',
            ).returncode
            == 0
        )
    finally:
        cp.kubectl("delete", "lvol", "pvc-immutable-source", "--wait=false")
