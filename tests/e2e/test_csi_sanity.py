"""csi-sanity, the CSI conformance suite, against Cairn's controller and node agent on the bed.

Run twice, once per access type. The controller works through the real kube-apiserver and the
node agent carves real LVs from loop disks inside its simulated node.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.bed import TestBed
from tests.testbed.components import Driver, running_driver
from tests.testbed.tools import tool_path

GiB = 1024**3
SUMMARY_RE = re.compile(
    r"Ran (\d+) of (\d+) Specs.*?(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped", re.S
)


@pytest.fixture(scope="module")
def driver(bed: TestBed) -> Iterator[Driver]:
    with running_driver(bed, "sanity", disks=2, disk_size=8 * GiB) as running:
        yield running


def run_sanity(driver: Driver, access_type: str) -> tuple[str, Path]:
    out = driver.workdir / access_type
    out.mkdir(parents=True, exist_ok=True)
    params = out / "parameters.yaml"
    # xfs: this sandbox withholds CAP_SYS_RESOURCE, which online ext4 growth (resize2fs on a
    # mounted filesystem) needs; xfs_growfs does not. Production agents have it.
    params.write_text("cairn.dev/pool: nvme\ncsi.storage.k8s.io/fstype: xfs\n")
    report = out / "junit.xml"
    result = subprocess.run(
        [
            str(tool_path("csi-sanity")),
            f"--csi.endpoint=unix://{driver.node_socket}",
            f"--csi.controllerendpoint=unix://{driver.controller_socket}",
            f"--csi.mountdir={out / 'target'}",
            f"--csi.stagingdir={out / 'staging'}",
            f"--csi.testvolumesize={GiB}",
            f"--csi.testvolumeaccesstype={access_type}",
            f"--csi.testvolumeparameters={params}",
            f"--ginkgo.junit-report={report}",
            "--ginkgo.no-color",
            "--ginkgo.timeout=20m",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    return result.stdout + result.stderr, report


def skipped_specs(report: Path) -> list[str]:
    lines = []
    for case in ET.parse(report).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is not None:
            reason = (skipped.get("message") or "").removeprefix("skipped - ").strip()
            lines.append(f"{case.get('name')}: {reason}")
    return lines


@pytest.mark.parametrize("access_type", ["mount", "block"])
def test_csi_sanity_passes(driver: Driver, access_type: str) -> None:
    output, report = run_sanity(driver, access_type)
    match = SUMMARY_RE.search(output)
    tail = "\n".join(output.splitlines()[-60:])
    assert match, f"csi-sanity printed no summary:\n{tail}"
    ran, total, passed, failed, _pending, skipped = map(int, match.groups())
    print(
        f"\ncsi-sanity ({access_type}): Ran {ran} of {total} Specs: {passed} Passed | {failed} Failed | "
        f"{skipped} Skipped"
    )
    for line in skipped_specs(report):
        print(f"  skipped: {line}")
    failures = [line for line in output.splitlines() if line.startswith("[FAIL]")]
    assert failed == 0, "csi-sanity failures:\n" + "\n".join(failures) + f"\n{tail}"
    assert ran >= 50
