"""Disk hot-plug: kernel uevents for block devices trigger a rescan.

Kernel uevents reach netlink listeners without udevd, so hot-plug works in containers and
on this test bed too. Nothing depends on them alone: the periodic rescan catches whatever a
dropped event would have told us.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pyudev

log = logging.getLogger("cairn.node.disks")


def watch_block_events(on_event: Callable[[], None], stop: threading.Event) -> None:
    """Start a thread that calls `on_event` for every block device add/remove/change."""
    try:
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        monitor.filter_by("block")
        monitor.start()
    except Exception:  # without uevents the periodic rescan still finds every change
        log.warning("cannot listen for kernel uevents; relying on periodic rescans", exc_info=True)
        return

    def loop() -> None:
        while not stop.is_set():
            device = monitor.poll(timeout=1.0)
            if device is not None and device.action in ("add", "remove", "change"):
                log.info("uevent %s %s", device.action, device.sys_name)
                on_event()

    threading.Thread(target=loop, name="uevents", daemon=True).start()
