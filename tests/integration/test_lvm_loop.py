"""The LVM adapter against real lvm2 on loop devices, in loop activation mode.

Each test builds its pool on sparse files in tmp_path attached as loop devices. The adapter gets
exactly those devices as its allow-list, so lvm never scans or opens the host's other disks, and
its own LVM_SYSTEM_DIR so metadata backups stay in tmp_path. Teardown unmounts, detaches every
loop it created (LV loops first, then the disk loops), and removes the VGs, even after failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cairn.api.names import OWNED_TAG
from cairn.node_agent.lvm.adapter import ActivationMode, Lvm, run_command
from cairn.node_agent.lvm.errors import InsufficientSpace, LvInUse, LvNotFound, NotContiguous
from cairn.node_agent.lvm.report import device_filter_config, volume_tag

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices and LVM"),
    pytest.mark.skipif(shutil.which("lvm") is None, reason="needs lvm2"),
    pytest.mark.timeout(120),
]

MiB = 1024 * 1024
EXTENT = 4 * MiB


def _sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def _loops() -> list[dict[str, object]]:
    out = _sh("losetup", "--list", "--json", "--output", "NAME,BACK-FILE,OFFSET,SIZELIMIT")
    return json.loads(out)["loopdevices"] if out.strip() else []


def _loops_backed_by(device: str) -> list[str]:
    return [str(loop["name"]) for loop in _loops() if loop.get("back-file") == device]


def _size(device: str) -> int:
    return int(_sh("blockdev", "--getsize64", device))


@dataclass
class Bed:
    """Loop disks and pools of one test; `cleanup` undoes all of it."""

    tmp: Path
    disks: list[str] = field(default_factory=list)
    vgs: list[str] = field(default_factory=list)
    lvm: Lvm | None = None

    def disk(self, size_bytes: int = 128 * MiB) -> str:
        image = self.tmp / f"disk{len(self.disks)}.img"
        with image.open("xb") as f:
            f.truncate(size_bytes)
        device = _sh("losetup", "--find", "--show", str(image)).strip()
        self.disks.append(device)
        return device

    def adapter(self, devices: list[str]) -> Lvm:
        system_dir = self.tmp / "lvm"
        system_dir.mkdir(exist_ok=True)
        return Lvm(mode=ActivationMode.LOOP, devices=devices, system_dir=system_dir)

    def pool(self, size_bytes: int = 128 * MiB) -> tuple[Lvm, str]:
        """A fresh VG on one new disk, and an adapter that sees only that disk."""
        device = self.disk(size_bytes)
        lvm = self.adapter([device])
        vg = f"cairntest{uuid.uuid4().hex[:8]}"
        self.vgs.append(vg)
        lvm.pvcreate(device)
        lvm.vgcreate(vg, [device], extent_size_bytes=EXTENT)
        self.lvm = lvm
        return lvm, vg

    def mount(self, device: str) -> Path:
        target = self.tmp / f"mnt-{Path(device).name}"
        target.mkdir(exist_ok=True)
        _sh("mount", "-t", "ext4", device, str(target))
        return target

    def cleanup(self) -> None:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for target in reversed(mounts):
            if Path(target).is_relative_to(self.tmp):
                subprocess.run(["umount", target], capture_output=True, check=False)
        # LV loops sit on the disk loops, so they go first; then lvm can drop the VGs.
        for disk in self.disks:
            for lv_loop in _loops_backed_by(disk):
                subprocess.run(["losetup", "--detach", lv_loop], capture_output=True, check=False)
        env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1", "LVM_SYSTEM_DIR": str(self.tmp / "lvm")}
        lvm_args = ["--driverloaded", "n", "--config", device_filter_config(self.disks)]
        for vg in self.vgs:
            with contextlib.suppress(Exception):
                run_command(["lvm", "vgremove", *lvm_args, "--force", "--force", vg], env=env)
        for disk in self.disks:
            with contextlib.suppress(Exception):
                run_command(["lvm", "pvremove", *lvm_args, "--force", "--force", "--yes", disk], env=env)
            subprocess.run(["losetup", "--detach", disk], capture_output=True, check=False)


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    b = Bed(tmp_path)
    try:
        yield b
    finally:
        b.cleanup()
    leftovers = [d for d in b.disks if any(loop["name"] == d for loop in _loops())]
    assert not leftovers, f"loop devices left attached: {leftovers}"


@pytest.fixture
def pool(bed: Bed) -> tuple[Lvm, str]:
    return bed.pool()


def test_volume_lifecycle_keeps_written_bytes_and_leaves_nothing_behind(bed: Bed) -> None:
    lvm, vg = bed.pool()
    assert OWNED_TAG in lvm.get_vg(vg).tags

    info = lvm.lvcreate(vg, "data", 20 * MiB, tags=[volume_tag("pvc-1")])
    assert info.size_bytes == 20 * MiB
    assert info.owned_by_cairn
    assert info.volume_id == "pvc-1"
    assert lvm.device_path(vg, "data") is None

    device = lvm.activate(vg, "data")
    assert lvm.device_path(vg, "data") == device
    assert _size(device) == 20 * MiB
    _sh("mkfs.ext4", "-q", "-F", device)
    payload = os.urandom(3 * MiB + 123)
    mnt = bed.mount(device)
    with (mnt / "blob").open("wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    _sh("umount", str(mnt))

    # A full deactivate/activate cycle proves the data lives in the LV's extents, not the loop.
    lvm.deactivate(vg, "data")
    assert lvm.device_path(vg, "data") is None
    device = lvm.activate(vg, "data")
    mnt = bed.mount(device)
    assert (mnt / "blob").read_bytes() == payload
    _sh("umount", str(mnt))

    lvm.deactivate(vg, "data")
    lvm.lvremove(vg, "data")
    assert lvm.list_lvs(vg) == []
    assert _loops_backed_by(bed.disks[0]) == []
    assert lvm.get_vg(vg).free_bytes == lvm.get_vg(vg).size_bytes


def test_mounted_volume_is_neither_deactivated_nor_removed(bed: Bed) -> None:
    lvm, vg = bed.pool()
    lvm.lvcreate(vg, "busy", 8 * MiB)
    device = lvm.activate(vg, "busy")
    _sh("mkfs.ext4", "-q", "-F", device)
    mnt = bed.mount(device)

    with pytest.raises(LvInUse, match="unmount"):
        lvm.deactivate(vg, "busy")
    with pytest.raises(LvInUse):
        lvm.lvremove(vg, "busy")
    assert lvm.device_path(vg, "busy") == device
    assert lvm.get_lv(vg, "busy").size_bytes == 8 * MiB

    _sh("umount", str(mnt))
    lvm.lvremove(vg, "busy")
    assert _loops_backed_by(bed.disks[0]) == []


def test_activation_is_idempotent_and_survives_an_agent_restart(bed: Bed) -> None:
    lvm, vg = bed.pool()
    lvm.lvcreate(vg, "vol", 8 * MiB)
    first = lvm.activate(vg, "vol")
    assert lvm.activate(vg, "vol") == first
    # A new adapter has no memory of the first: it must rediscover the loop, not attach another.
    restarted = bed.adapter(bed.disks)
    assert restarted.activate(vg, "vol") == first
    assert restarted.device_path(vg, "vol") == first
    assert _loops_backed_by(bed.disks[0]) == [first]
    restarted.deactivate(vg, "vol")
    restarted.deactivate(vg, "vol")  # deactivating an inactive volume is fine too
    assert _loops_backed_by(bed.disks[0]) == []


def test_extension_with_free_space_behind_grows_the_active_device_online(bed: Bed) -> None:
    lvm, vg = bed.pool()
    lvm.lvcreate(vg, "grow", 8 * MiB)
    device = lvm.activate(vg, "grow")

    grown = lvm.lvextend(vg, "grow", 18 * MiB)

    assert grown.size_bytes == 20 * MiB  # rounded up to whole 4 MiB extents
    assert len(grown.segments) == 1
    assert _size(device) == 20 * MiB
    assert lvm.activate(vg, "grow") == device
    assert lvm.lvextend(vg, "grow", 12 * MiB).size_bytes == 20 * MiB  # never shrinks


def test_extension_blocked_by_a_neighbour_explains_loop_mode(bed: Bed) -> None:
    lvm, vg = bed.pool()
    lvm.lvcreate(vg, "a", 8 * MiB)
    lvm.lvcreate(vg, "b", 8 * MiB)

    with pytest.raises(NotContiguous) as excinfo:
        lvm.lvextend(vg, "a", 16 * MiB)

    message = str(excinfo.value)
    assert "loop activation mode" in message
    assert "contiguous" in message
    assert f"{vg}/a" in message
    assert lvm.get_lv(vg, "a").size_bytes == 8 * MiB


def test_volume_larger_than_free_space_is_refused_with_sizes(pool: tuple[Lvm, str]) -> None:
    lvm, vg = pool
    with pytest.raises(InsufficientSpace) as excinfo:
        lvm.lvcreate(vg, "huge", 1024 * MiB)
    err = excinfo.value
    assert err.vg == vg
    assert err.needed_bytes == 1024 * MiB
    assert err.free_bytes == lvm.get_vg(vg).free_bytes
    assert f"pool VG {vg} has 124 MiB free, volume huge needs 1 GiB" in str(err)
    assert lvm.list_lvs(vg) == []


def test_get_lv_of_missing_volume_raises_lv_not_found(pool: tuple[Lvm, str]) -> None:
    lvm, vg = pool
    with pytest.raises(LvNotFound, match=f"volume {vg}/ghost does not exist"):
        lvm.get_lv(vg, "ghost")
    with pytest.raises(LvNotFound):
        lvm.lvremove(vg, "ghost")


def test_concurrent_creates_never_overcommit_the_pool(pool: tuple[Lvm, str]) -> None:
    lvm, vg = pool
    before = lvm.get_vg(vg)
    assert before.free_extents == 31
    # 8 volumes of 6 extents ask for 48 of 31 extents: exactly 5 fit.
    results: dict[str, BaseException | None] = {}
    start = threading.Barrier(8)

    def create(name: str) -> None:
        start.wait()
        try:
            lvm.lvcreate(vg, name, 6 * EXTENT)
            results[name] = None
        except BaseException as exc:
            results[name] = exc

    threads = [threading.Thread(target=create, args=(f"c{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    failures = [exc for exc in results.values() if exc is not None]
    assert all(isinstance(exc, InsufficientSpace) for exc in failures), failures
    assert len(failures) == 3
    lvs = lvm.list_lvs(vg)
    assert sorted(lv.name for lv in lvs) == sorted(n for n, exc in results.items() if exc is None)
    assert sum(lv.size_bytes for lv in lvs) <= before.size_bytes
    assert lvm.get_vg(vg).free_extents == 1


def test_new_volume_never_shows_a_previous_volumes_filesystem(pool: tuple[Lvm, str]) -> None:
    lvm, vg = pool
    lvm.lvcreate(vg, "old", 8 * MiB)
    device = lvm.activate(vg, "old")
    _sh("mkfs.ext4", "-q", "-F", device)
    lvm.lvremove(vg, "old")

    lvm.lvcreate(vg, "new", 8 * MiB)  # contiguous allocation reuses the same extents
    device = lvm.activate(vg, "new")
    probe = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True)
    assert "TYPE=" not in probe.stdout
    lvm.deactivate(vg, "new")


def test_listing_tells_cairn_volumes_from_foreign_ones(bed: Bed) -> None:
    lvm, vg = bed.pool()
    lvm.lvcreate(vg, "ours", 4 * MiB, tags=[volume_tag("pvc-9")])
    # Someone else's LV in the same VG, made without the adapter.
    env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1", "LVM_SYSTEM_DIR": str(bed.tmp / "lvm")}
    config = device_filter_config(bed.disks)
    foreign = ["--driverloaded", "n", "--config", config, "-an", "-Zn", "--extents", "1", "--name", "theirs"]
    run_command(["lvm", "lvcreate", *foreign, vg], env=env)
    by_name = {lv.name: lv for lv in lvm.list_lvs(vg)}
    assert by_name["ours"].owned_by_cairn
    assert by_name["ours"].volume_id == "pvc-9"
    assert not by_name["theirs"].owned_by_cairn
    assert by_name["theirs"].volume_id is None


def test_adapter_sees_only_its_allow_listed_devices(bed: Bed) -> None:
    lvm, vg = bed.pool()
    other_lvm, other_vg = bed.pool(64 * MiB)
    assert [v.name for v in lvm.list_vgs()] == [vg]
    assert [v.name for v in other_lvm.list_vgs()] == [other_vg]
    assert [pv.name for pv in lvm.pvs()] == [bed.disks[0]]


def test_vg_growth_adds_capacity(bed: Bed) -> None:
    first = bed.disk(64 * MiB)
    second = bed.disk(64 * MiB)
    lvm = bed.adapter([first, second])
    vg = f"cairntest{uuid.uuid4().hex[:8]}"
    bed.vgs.append(vg)
    lvm.vgcreate(vg, [first])
    before = lvm.get_vg(vg)
    after = lvm.vgextend(vg, [second])
    assert after.pv_count == 2
    assert after.free_bytes > before.free_bytes
    assert {pv.name for pv in lvm.pvs(vg=vg)} == {first, second}
