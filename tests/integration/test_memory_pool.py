"""The memory pool against real tmpfs mounts: limits hold, accounting outlives the agent, and a
volume still mounted elsewhere is never freed."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from cairn.node_agent.lvm.errors import InsufficientSpace, LvAlreadyExists, LvInUse, LvNotFound
from cairn.node_agent.memory.pool import TmpfsPool
from tests.integration.memory_pool import VG, MiB

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount tmpfs"),
    pytest.mark.timeout(60),
]


def fill(directory: Path, size: int) -> None:
    with open(directory / "blob", "wb") as file:
        file.write(b"\0" * size)


def test_a_volume_is_a_tmpfs_of_its_size_and_writes_past_it_fail_with_enospc(pool: TmpfsPool) -> None:
    info = pool.lvcreate(VG, "lv-a", 8 * MiB, tags=("cairn.owned",))
    directory = Path(info.path)
    assert os.path.ismount(directory) and info.size_bytes == 8 * MiB and info.tags == ("cairn.owned",)
    stats = os.statvfs(directory)
    assert stats.f_blocks * stats.f_frsize == 8 * MiB
    with pytest.raises(OSError) as full:
        fill(directory, 9 * MiB)
    assert full.value.errno == errno.ENOSPC
    pool.lvextend(VG, "lv-a", 16 * MiB)
    fill(directory, 12 * MiB)
    assert pool.get_lv(VG, "lv-a").size_bytes == 16 * MiB
    with pytest.raises(LvAlreadyExists):
        pool.lvcreate(VG, "lv-a", MiB)


def test_an_exhausted_pool_refuses_with_numbers_and_its_accounting_outlives_the_agent(
    pool: TmpfsPool,
) -> None:
    pool.lvcreate(VG, "lv-a", 40 * MiB)
    with pytest.raises(InsufficientSpace) as full:
        pool.lvcreate(VG, "lv-b", 30 * MiB)
    assert (full.value.free_bytes, full.value.needed_bytes) == (24 * MiB, 30 * MiB)
    assert not (pool.root / "lv-b").exists()
    restarted = TmpfsPool(pool.root, 64 * MiB, VG)
    assert restarted.usage().reserved_bytes == 40 * MiB and restarted.volumes() == ["lv-a"]
    assert restarted.activate(VG, "lv-a") == str(pool.root / "lv-a") and not restarted.lost


def test_a_volume_mounted_elsewhere_is_not_freed_and_a_vanished_mount_comes_back_empty(
    pool: TmpfsPool, tmp_path: Path
) -> None:
    directory = Path(pool.lvcreate(VG, "lv-a", 8 * MiB).path)
    fill(directory, MiB)
    staged = tmp_path / "staged"
    staged.mkdir()
    subprocess.run(["mount", "--bind", str(directory), str(staged)], check=True)
    with pytest.raises(LvInUse, match=str(staged)):
        pool.lvremove(VG, "lv-a")
    assert (directory / "blob").exists()
    subprocess.run(["umount", str(staged)], check=True)

    subprocess.run(["umount", str(directory)], check=True)  # as a host reboot leaves it
    assert pool.device_path(VG, "lv-a") is None
    assert pool.activate(VG, "lv-a") == str(directory)
    assert pool.lost == {"lv-a"} and not (directory / "blob").exists()

    pool.lvremove(VG, "lv-a")
    assert not directory.exists() and pool.usage().reserved_bytes == 0
    with pytest.raises(LvNotFound):
        pool.get_lv(VG, "lv-a")
