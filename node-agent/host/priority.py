"""Background work yields to the trainer: the calling thread gets nice 19 and the idle I/O class.

And libtorrent's own threads can be told to yield as a whole (`unnamed_native_threads`,
`set_niceness`), while the only datasets moving are seeded in the background.

Tiering shares the node with a training job whose checkpoint writes are the thing Cairn exists to
speed up. On a busy node the scheduler should give the CPU and the disk to the job first and to the
upload with what is left. Linux applies both settings per thread, so only the upload's threads are
slowed, not the agent's CSI calls.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading
from pathlib import Path

log = logging.getLogger("cairn.node.priority")
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}
_applied = threading.local()
YIELDING_NICENESS = 19


def run_in_background() -> None:
    """Lower the calling thread's CPU and I/O priority, once; harmless where it is not allowed."""
    if getattr(_applied, "done", False):
        return
    _applied.done = True
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, YIELDING_NICENESS)
    except OSError as error:
        log.debug("could not lower the CPU priority of thread %d: %s", thread, error)
    number = _SYS_IOPRIO_SET.get(platform.machine())
    if number is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, _IOPRIO_WHO_PROCESS, thread, _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT) != 0:
        log.debug("could not set idle I/O priority on thread %d: errno %d", thread, ctypes.get_errno())


def unnamed_native_threads() -> list[int]:
    """This process's threads that Python did not start and that no library gave a name.

    libtorrent's network, disk and hashing threads are such threads; gRPC and the AWS CRT name
    theirs. Threads a library creates later inherit the niceness of the thread that made them.
    """
    python_threads = {t.native_id for t in threading.enumerate()}
    task = Path("/proc/self/task")
    default_name = (Path("/proc/self/comm").read_text()).strip()
    found = []
    for entry in task.iterdir():
        thread = int(entry.name)
        if thread in python_threads or thread == os.getpid():
            continue
        try:
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue  # it ended while we looked
        if name == default_name:
            found.append(thread)
    return found


def set_niceness(threads: list[int], niceness: int) -> None:
    """Give each thread `niceness` (raising it back needs CAP_SYS_NICE; the agent runs as root)."""
    for thread in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, thread, niceness)
        except OSError as error:
            log.debug("could not set niceness %d on thread %d: %s", niceness, thread, error)
