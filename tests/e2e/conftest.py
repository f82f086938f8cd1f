"""The e2e test bed: a real control plane, S3 server and simulated nodes for the whole session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.testbed.bed import TestBed
from tests.testbed.user_cluster import UserCluster, start_user_cluster


@pytest.fixture(scope="session")
def bed(run_id: str, leak_check: None) -> Iterator[TestBed]:
    bed = TestBed(run_id).start()
    print(
        "\ntest bed up in "
        + ", ".join(f"{what} {seconds:.1f}s" for what, seconds in bed.timings.items())
        + f" (total {sum(bed.timings.values()):.1f}s)"
    )
    try:
        yield bed
    finally:
        bed.stop()


@pytest.fixture
def bucket(bed: TestBed) -> Iterator[str]:
    assert bed.s3 is not None
    name = f"test-{uuid.uuid4().hex[:12]}"
    bed.s3.create_bucket(name)
    yield name
    client = bed.s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def user_cluster(run_id: str, leak_check: None) -> Iterator[UserCluster]:
    """Two kubelet nodes with two 2 GiB loop disks each, and the chart installed with helm."""
    cluster = start_user_cluster(run_id, nodes=2, disks=2, disk_size=2 * 1024 * 1024 * 1024)
    print(
        "\nkubelet bed up in "
        + ", ".join(f"{what} {seconds:.1f}s" for what, seconds in cluster.bed.timings.items())
    )
    try:
        yield cluster
    finally:
        cluster.stop()
