"""Pools: one Cairn-tagged VG per disk class, built from devices proven blank.

Until disk discovery lands, the devices of each pool come from the agent's configuration
(`--pool nvme=/dev/nvme1n1,/dev/nvme2n1`). Even so, a device is only ever claimed when a
probe of the device itself finds no partition table, filesystem, RAID or LVM signature.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence

from cairn.api.volume import PoolClass

from .lvm import Lvm
from .lvm_errors import VgNotFound
from .volume_reconciler import pool_vg

log = logging.getLogger("cairn.node.pools")


class UnsafeDevice(Exception):
    pass


def device_signatures(device: str) -> list[str]:
    """Signatures found by probing the device (wipefs reads the disk; lsblk's udev cache can lie)."""
    result = subprocess.run(
        ["wipefs", "--no-act", "--noheadings", "--output", "TYPE", device], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise UnsafeDevice(f"cannot probe {device}: {result.stderr.strip()}")
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def parse_pool_spec(specs: Sequence[str]) -> dict[PoolClass, list[str]]:
    """`nvme=/dev/a,/dev/b` flags into {pool: devices}."""
    pools: dict[PoolClass, list[str]] = {}
    for spec in specs:
        name, _, devices = spec.partition("=")
        try:
            pool = PoolClass(name.strip())
        except ValueError:
            raise ValueError(f"--pool {spec!r}: pool must be one of nvme, ssd, hdd") from None
        listed = [d.strip() for d in devices.split(",") if d.strip()]
        if not listed:
            raise ValueError(f"--pool {spec!r} names no devices")
        pools.setdefault(pool, []).extend(listed)
    return pools


def ensure_pools(lvm: Lvm, pools: Mapping[PoolClass, Sequence[str]]) -> None:
    """Create or extend each pool's VG with its configured devices; never touch a dirty device."""
    for pool, devices in pools.items():
        vg = pool_vg(pool.value)
        members = {pv.name for pv in lvm.pvs(vg=vg)} if _vg_exists(lvm, vg) else set()
        fresh: list[str] = []
        for device in devices:
            if device in members:
                continue
            signatures = device_signatures(device)
            if signatures:
                log.error(
                    "not claiming %s for pool %s: it carries %s", device, pool.value, ", ".join(signatures)
                )
                continue
            fresh.append(device)
        if not fresh:
            continue
        for device in fresh:
            lvm.pvcreate(device)
        if members:
            lvm.vgextend(vg, fresh)
        else:
            lvm.vgcreate(vg, fresh)
        log.info("pool %s (VG %s) now includes %s", pool.value, vg, ", ".join(fresh))


def _vg_exists(lvm: Lvm, vg: str) -> bool:
    try:
        lvm.get_vg(vg)
    except VgNotFound:
        return False
    return True
