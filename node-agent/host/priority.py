"""Background work yields to the trainer: the calling thread gets nice 19 and the idle I/O class.

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

log = logging.getLogger("cairn.node.priority")
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}
_applied = threading.local()


def run_in_background() -> None:
    """Lower the calling thread's CPU and I/O priority, once; harmless where it is not allowed."""
    if getattr(_applied, "done", False):
        return
    _applied.done = True
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, 19)
    except OSError as error:
        log.debug("could not lower the CPU priority of thread %d: %s", thread, error)
    number = _SYS_IOPRIO_SET.get(platform.machine())
    if number is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, _IOPRIO_WHO_PROCESS, thread, _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT) != 0:
        log.debug("could not set idle I/O priority on thread %d: errno %d", thread, ctypes.get_errno())
