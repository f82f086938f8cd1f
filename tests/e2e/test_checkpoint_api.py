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
