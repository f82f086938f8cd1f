"""The test bed works: every real part answers, and Cairn's identities are what RBAC says."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from tests.testbed.bed import TestBed
from tests.testbed.controlplane import CAIRN_NAMESPACE

MiB = 1024 * 1024


def test_crd_printer_columns_show_in_kubectl_get(bed: TestBed) -> None:
    cp = bed.control_plane
    disk = {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "LocalDisk",
        "metadata": {"name": "smoke-disk"},
        "spec": {"nodeName": "smoke-node", "diskId": "wwn-0x5000c500a1b2c3d4"},
    }
    cp.kubectl("apply", "-f", "-", input_text=json.dumps(disk))
    try:
        status = {
            "status": {
                "device": "/dev/nvme0n1",
                "class": "nvme",
                "capacity": "3.5Ti",
                "state": "Unavailable",
                "reason": "HasPartitionTable",
            }
        }
        cp.kubectl(
            "patch",
            "localdisk",
            "smoke-disk",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
        )
        header, row = cp.kubectl("get", "localdisks", "smoke-disk").stdout.splitlines()
        assert header.split() == ["NAME", "NODE", "DEVICE", "CLASS", "CAPACITY", "STATE", "REASON", "AGE"]
        assert row.split()[:7] == [
            "smoke-disk",
            "smoke-node",
            "/dev/nvme0n1",
            "nvme",
            "3.5Ti",
            "Unavailable",
            "HasPartitionTable",
        ]
        # The short name from the model works too.
        assert "smoke-disk" in cp.kubectl("get", "ld").stdout
    finally:
        cp.kubectl("delete", "localdisk", "smoke-disk", "--wait=true")


def test_schema_from_the_models_rejects_bad_objects(bed: TestBed) -> None:
    bad = {
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "LocalVolume",
        "metadata": {"name": "smoke-bad"},
        "spec": {"csiName": "v", "nodeName": "n", "pool": "floppy", "sizeBytes": 1},
    }
    result = bed.control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "spec.pool" in result.stderr and "floppy" in result.stderr


def test_component_identity_is_denied_what_rbac_does_not_allow(bed: TestBed) -> None:
    cp = bed.control_plane
    # A positive control first, so a denial below cannot be a broken token.
    allowed = cp.kubectl("get", "localvolumes", identity="cairn-node-agent", check=False)
    assert allowed.returncode == 0, allowed.stderr
    whoami = cp.kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", identity="cairn-node-agent"
    )
    assert whoami.stdout == f"system:serviceaccount:{CAIRN_NAMESPACE}:cairn-node-agent"

    secrets = cp.kubectl("get", "secrets", "-A", identity="cairn-node-agent", check=False)
    assert secrets.returncode != 0
    assert "Forbidden" in secrets.stderr and 'cannot list resource "secrets"' in secrets.stderr

    # S3 credentials: `get` by name in the namespaces the chart grants, nothing more.
    def node_agent_can(*what: str) -> str:
        asked = cp.kubectl("auth", "can-i", *what, identity="cairn-node-agent", check=False)
        return asked.stdout.strip()

    assert node_agent_can("get", "secrets", "-n", "default") == "yes"
    assert node_agent_can("list", "secrets", "-n", "default") == "no"
    assert node_agent_can("get", "secrets", "-n", "kube-system") == "no"

    # The controller creates LocalVolumes but never touches what node agents report about disks.
    denied = cp.kubectl(
        "auth", "can-i", "delete", "localdisks.cairn.dev", identity="cairn-controller", check=False
    )
    assert denied.stdout.strip() == "no"


def test_s3_server_completes_a_multipart_upload_with_the_same_bytes(bed: TestBed, bucket: str) -> None:
    assert bed.s3 is not None
    client = bed.s3.client()
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1 * MiB + 17)]
    upload = client.create_multipart_upload(Bucket=bucket, Key="smoke/object.bin")
    parts = []
    for number, data in enumerate(parts_data, start=1):
        response = client.upload_part(
            Bucket=bucket, Key="smoke/object.bin", PartNumber=number, UploadId=upload["UploadId"], Body=data
        )
        parts.append({"PartNumber": number, "ETag": response["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key="smoke/object.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )

    head = client.head_object(Bucket=bucket, Key="smoke/object.bin")
    # A multipart object's ETag ends in -<part count>; a plain PUT's never does.
    assert head["ETag"].strip('"').endswith("-3")
    body = client.get_object(Bucket=bucket, Key="smoke/object.bin")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(b"".join(parts_data)).hexdigest()


_RECEIVER = """
import hashlib, socket, sys
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], 7070)); server.listen(1)
print("listening", flush=True)
conn, _ = server.accept(); digest = hashlib.sha256(); total = 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk); total += len(chunk)
print(total, digest.hexdigest(), flush=True)
"""

_SENDER = """
import socket, sys
data = sys.stdin.buffer.read()
with socket.create_connection((sys.argv[1], 7070), timeout=20) as conn:
    conn.sendall(data)
"""


def test_two_simulated_nodes_exchange_data_over_their_veth_addresses(bed: TestBed) -> None:
    sender, receiver = bed.add_nodes(2, disks=1, disk_size=32 * MiB)
    try:
        # The receiver's address comes from its Node object, as a Cairn agent would look it up.
        node = bed.core_v1().read_node(receiver.name)
        address = next(a.address for a in node.status.addresses if a.type == "InternalIP")
        assert node.metadata.labels["topology.cairn.dev/node"] == receiver.name
        assert address == receiver.ip != sender.ip

        listener = receiver.popen(
            [sys.executable, "-c", _RECEIVER, address], stdout=subprocess.PIPE, text=True
        )
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        payload = os.urandom(4 * MiB)
        sender.run([sys.executable, "-c", _SENDER, address], input=payload, timeout=30)
        total, digest = listener.stdout.readline().split()
        listener.wait(timeout=10)
        assert int(total) == len(payload)
        assert digest == hashlib.sha256(payload).hexdigest()
        # Each node's disk is a real block device of the requested size, seen from inside its namespace.
        size = receiver.run(["blockdev", "--getsize64", receiver.disks[0].path], text=True).stdout
        assert int(size) == 32 * MiB
    finally:
        bed.remove_nodes([sender, receiver])
