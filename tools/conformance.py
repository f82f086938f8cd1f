"""`make conformance`: Kubernetes' own external storage e2e suite against Cairn on kubelet nodes.

It brings up the user-path bed (kubelet nodes, the chart installed with helm), then runs the
`External Storage` specs of `e2e.test` (k8s.io/kubernetes v1.36.3) with Cairn's driver file,
`tests/conformance/testdriver.yaml`, through the Ginkgo CLI in parallel processes, and prints the
summary: specs run, passed, failed, and skipped (at run time, with the reasons grouped).

Specs are chosen in two steps, as Kubernetes' own CSI jobs do: the parallel run skips [Serial]
and [Disruptive]; the [Serial] specs run afterwards in one process, and with them the expansion
specs: in loop activation mode (no device-mapper) a volume grows only into the extents right after
it, which volumes made by specs running beside it may hold. `--focus`/`--skip` narrow it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.testbed import leaks  # noqa: E402
from tests.testbed.tools import tool_path  # noqa: E402
from tests.testbed.user_cluster import UserCluster, start_user_cluster  # noqa: E402

DRIVER = "lvm.cairn.dev"
DRIVER_FILE = REPO / "tests" / "conformance" / "testdriver.yaml"
FOCUS = r"External.Storage.*lvm\.cairn\.dev"
# Why each is skipped is in README.md ("Kubernetes' storage suite"):
NOT_HERE = (
    # Kubelet restarts over SSH and systemctl; the bed's nodes have neither (test_user_path
    # restarts kubelets for real instead).
    r"\[Disruptive\]",
    # Features Cairn does not offer: snapshots need device-mapper, which the bed's kernel lacks.
    r"\[Feature:(VolumeSnapshotDataSource|SELinux|VolumeAttributesClass|volumegroupsnapshot|snapshotmetadata|Windows)\]",
    # Deploys a populator from registry images, which no registry here can serve.
    r"any.volume.data.source",
)
# Run alone, after the others: [Serial] specs, and the expansion specs (see the module docstring).
ONE_AT_A_TIME = (r"\[Serial\]", r"volume-expand", r"support.expansion")
GiB = 1024**3


@dataclass
class Summary:
    ran: int = 0
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0

    def add_report(self, report: Path) -> None:
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            name = case.get("name", "")
            # Suite set-up nodes and every other driver's or area's specs are not Cairn's.
            if not name.startswith("[It]") or f"[Driver: {DRIVER}]" not in name:
                continue
            skipped = case.find("skipped")
            if skipped is not None:
                message = skipped.get("message", "")
                # A bare "skipped" is a spec the focus and skip expressions filtered out.
                if message != "skipped":
                    self.skipped[_reason(message.removeprefix("skipped - "))] += 1
                continue
            self.ran += 1
            if case.find("failure") is not None or case.find("error") is not None:
                self.failed.append(name)
            else:
                self.passed += 1

    def render(self) -> str:
        lines = [
            f"External Storage on {DRIVER}: ran {self.ran}, passed {self.passed}, "
            f"failed {len(self.failed)}, skipped {sum(self.skipped.values())}"
            + (f" ({self.seconds / 60:.1f} min)" if self.seconds else "")
        ]
        lines += [f"  FAILED {name}" for name in self.failed]
        if self.skipped:
            lines.append("skipped at run time, by reason:")
            lines += [f"  {count:4d}  {reason}" for reason, count in self.skipped.most_common()]
        return "\n".join(lines)


def _reason(message: str) -> str:
    """One line per kind of skip: the suite's messages carry pattern names and sizes."""
    first = message.strip().splitlines()[0] if message.strip() else "(no message)"
    return re.sub(r"\s+", " ", first)[:160]


def run_suite(
    cluster: UserCluster, out: Path, *, focus: str, skip: str, procs: int, serial: bool
) -> subprocess.CompletedProcess[str]:
    kubeconfig = cluster.bed.control_plane.kubeconfigs["admin"]
    # Relative: Ginkgo puts reports under --output-dir, an absolute path included.
    report = "junit-serial.xml" if serial else "junit-parallel.xml"
    argv = [
        str(tool_path("ginkgo")),
        *([] if serial else ["-p", f"--procs={procs}"]),
        f"--focus={focus}",
        f"--skip={skip}",
        "--timeout=6h",
        "--no-color",
        "--poll-progress-after=120s",
        f"--junit-report={report}",
        f"--output-dir={out}",
        str(tool_path("e2e.test")),
        "--",
        f"--kubeconfig={kubeconfig}",
        f"--kubectl-path={tool_path('kubectl')}",
        "--provider=local",
        f"--storage.testdriver={DRIVER_FILE}",
        f"--repo-root={REPO}",
        "--disable-log-dump",
        "--allowed-not-ready-nodes=0",
        "--minStartupPods=0",
        "--node-schedulable-timeout=5m",
    ]
    env = leaks.process_env(cluster.bed.run_id)
    # The suite must not find an SSH key: its kubelet-restart specs would then try SSH and fail.
    env.pop("KUBE_SSH_KEY_PATH", None)
    env["HOME"] = str(out)
    print(f"$ {' '.join(argv)}", flush=True)
    log_path = out / ("ginkgo-serial.log" if serial else "ginkgo-parallel.log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        assert proc.stdout is not None
        # Ginkgo prints one • per passed spec and a [FAIL] block per failure.
        started = last = time.monotonic()
        passed = failed = 0
        while chunk := proc.stdout.read1(65536):
            log.write(chunk)
            text = chunk.decode(errors="replace")
            passed += text.count("•")
            failed += text.count("[FAIL]")
            if time.monotonic() - last > 60:
                last = time.monotonic()
                print(
                    f"  {(last - started) / 60:.0f} min: {passed} passed, {failed} failed so far "
                    f"({log_path.name})",
                    flush=True,
                )
        proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, "", "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--focus", default=FOCUS, help=f"spec regex (default {FOCUS})")
    parser.add_argument("--skip", default="", help="a further skip regex, added to the standing ones")
    parser.add_argument("--procs", type=int, default=3, help="parallel Ginkgo processes (default 3)")
    parser.add_argument("--nodes", type=int, default=2, help="kubelet nodes (default 2)")
    parser.add_argument("--no-serial", action="store_true", help="leave out the [Serial] specs")
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "conformance", help="reports and logs")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    run_id = leaks.new_run_id()
    before = leaks.SystemSnapshot.take()
    skips = [*NOT_HERE, *([args.skip] if args.skip else [])]
    summary = Summary()
    started = time.monotonic()
    cluster = start_user_cluster(run_id, nodes=args.nodes, disks=2, disk_size=4 * GiB)
    print("kubelet bed up: " + ", ".join(f"{k} {v:.1f}s" for k, v in cluster.bed.timings.items()), flush=True)
    failed_runs = 0
    try:
        runs = [(False, "|".join([*ONE_AT_A_TIME, *skips]))]
        if not args.no_serial:
            runs.append((True, "|".join(skips)))
        for serial, skip in runs:
            focus = args.focus + (f".*({'|'.join(ONE_AT_A_TIME)})" if serial else "")
            result = run_suite(cluster, args.out, focus=focus, skip=skip, procs=args.procs, serial=serial)
            report = args.out / ("junit-serial.xml" if serial else "junit-parallel.xml")
            if report.exists():
                summary.add_report(report)
            failed_runs += result.returncode != 0
    finally:
        cluster.stop()
        summary.seconds = time.monotonic() - started
    left = leaks.find_leaks(run_id, before)
    print("\n" + summary.render())
    if left:
        print("the run leaked:\n  " + "\n  ".join(left))
    if summary.failed or left or (failed_runs and not summary.ran):
        raise SystemExit(1)


if __name__ == "__main__":
    os.umask(0o022)
    main()
