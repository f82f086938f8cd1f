"""Leak detection for the test bed.

Every process the bed starts carries `CAIRN_TESTBED_RUN=<run id>` in its environment, so
a process that outlives its parent (reparented to init) is still found. Mounts, loop
devices and network namespaces are compared against a snapshot taken before the run:
anything new at the end that belongs to this run is a leak. Network links in the host namespace are
compared the same way, so a leaked bridge or host-side veth is reported too. Kubelet nodes add two
more: the cgroup roots named after the run (pods' processes carry no run tag, but live there), and the
host sysctls a kubelet changes, which must be back to their values from before the run.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

RUN_ENV = "CAIRN_TESTBED_RUN"

# What a kubelet sets on the host kernel at start-up (its "kernel tunables"), whatever its flags say.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    # Per network namespace, but the host's own must stay as it was: nodes get no route out otherwise.
    "net/ipv4/ip_forward",
)


def read_sysctl(key: str) -> str:
    return Path("/proc/sys", key).read_text().strip()


def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup hierarchy: the v1 controllers and the unified (v2) one."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _device, mount_point, fs_type, *_ = line.split()
        if fs_type in ("cgroup", "cgroup2"):
            found.append(Path(mount_point))
    return found


def cgroups_of_run(run_id: str) -> list[Path]:
    """Top-level cgroups named after this run: the cgroup roots of its kubelet nodes."""
    prefix = f"cairn-{run_tag(run_id)}-"
    return sorted(
        child
        for hierarchy in cgroup_hierarchies()
        if hierarchy.is_dir()
        for child in hierarchy.iterdir()
        if child.is_dir() and child.name.startswith(prefix)
    )


def new_run_id() -> str:
    return f"cairn-{uuid.uuid4().hex[:10]}"


def process_env(run_id: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process of the bed, tagged so the leak check can find it."""
    env = dict(os.environ if base is None else base)
    env[RUN_ENV] = run_id
    return env


def processes_of_run(run_id: str) -> list[tuple[int, str]]:
    marker = f"{RUN_ENV}={run_id}".encode()
    found: list[tuple[int, str]] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if marker not in environ.split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state == "Z":  # a zombie holds no resources; its parent merely has not reaped it yet
            continue
        found.append((int(entry.name), cmdline.strip()))
    return found


# iproute2 bind-mounts the netns directory onto itself (shared propagation) the first time any
# namespace is added, and deliberately never undoes it. It is machine setup, not a resource of a run.
_PERSISTENT_MOUNTS = frozenset({"/run/netns", "/var/run/netns"})


def mount_points() -> set[str]:
    return {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()}


def loop_devices() -> dict[str, str]:
    """Map of attached loop device to its backing file."""
    out = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    devices: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if parts:
            devices[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return devices


_LOOP_DEVICE = re.compile(r"^(?:/dev)?/(loop\d+)$")


def stacked_on(backing: str) -> str | None:
    """The loop device a loop's backing path names, if it is one (an LV activated in loop mode).

    A node agent in a container attaches with its own /dev (a bind of the host's), which the kernel
    reports relative to that mount: "/loop3", not "/dev/loop3".
    """
    match = _LOOP_DEVICE.match(backing)
    return f"/dev/{match.group(1)}" if match else None


def network_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def network_links() -> set[str]:
    """Link names in the host (this process's) network namespace."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names: set[str] = set()
    for line in out.splitlines():
        # "7: cv1a2b3c4d000@if2: <BROADCAST,...>": drop the index and the "@peer" suffix of veths.
        parts = line.split(": ", 2)
        if len(parts) >= 2:
            names.add(parts[1].split("@", 1)[0])
    return names


@dataclass(frozen=True)
class SystemSnapshot:
    mounts: frozenset[str]
    loops: frozenset[str]
    netns: frozenset[str]
    links: frozenset[str] = frozenset()
    sysctls: tuple[tuple[str, str], ...] = ()

    @classmethod
    def take(cls) -> SystemSnapshot:
        return cls(
            frozenset(mount_points()),
            frozenset(loop_devices()),
            frozenset(network_namespaces()),
            frozenset(network_links()),
            tuple((key, read_sysctl(key)) for key in KUBELET_SYSCTLS),
        )


def run_tag(run_id: str) -> str:
    """Short tag for names capped at 15 bytes (network links), derived from the run id."""
    return hashlib.sha1(run_id.encode()).hexdigest()[:8]


def find_leaks(run_id: str, before: SystemSnapshot, owned_dirs: Sequence[Path] = ()) -> list[str]:
    """Describe everything this run created and did not remove; empty when clean.

    Only what can be traced to this run counts: processes tagged with its id, links and
    namespaces named after it, loops and mounts under its directories (paths containing the run
    id, or `owned_dirs`). Another job on the machine creating its own is not this run's leak.
    """
    after = SystemSnapshot.take()
    tag = run_tag(run_id)

    def owned(path: str) -> bool:
        return run_id in path or any(Path(path).is_relative_to(d) for d in owned_dirs)

    backing = loop_devices()
    new_loops = sorted(after.loops - before.loops)
    ours = {d for d in new_loops if owned(backing.get(d, ""))}
    # Loops stacked on our loops (LVs activated in loop mode) are ours too.
    while stacked := {d for d in new_loops if d not in ours and stacked_on(backing.get(d, "")) in ours}:
        ours |= stacked
    leaks = [f"process {pid}: {cmd}" for pid, cmd in processes_of_run(run_id)]
    leaks += [f"mount {m}" for m in sorted(after.mounts - before.mounts - _PERSISTENT_MOUNTS) if owned(m)]
    leaks += [f"loop device {d} -> {backing.get(d, '?')}" for d in sorted(ours)]
    leaks += [f"network namespace {n}" for n in sorted(after.netns - before.netns) if run_id in n]
    leaks += [f"network link {n}" for n in sorted(after.links - before.links) if tag in n]
    leaks += [f"cgroup {c}" for c in cgroups_of_run(run_id)]
    was = dict(before.sysctls)
    leaks += [
        f"sysctl {key.replace('/', '.')} = {value} (was {was[key]})"
        for key, value in after.sysctls
        if key in was and was[key] != value
    ]
    return leaks
