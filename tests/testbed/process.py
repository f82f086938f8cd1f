"""Long-running child processes of the test bed: logged, tagged and always reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .leaks import process_env, processes_of_run


def _group_alive(pgid: int, run_id: str) -> bool:
    """Whether a process of this run is still in group `pgid`."""
    for pid, _ in processes_of_run(run_id):
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pgid:
                return True
    return False


def stop_process(proc: subprocess.Popen[Any], run_id: str, grace: float = 5.0) -> None:
    """SIGTERM the process's whole group, then SIGKILL it if anything is left after `grace`.

    Every process is started with start_new_session=True, so its pid is also its group id and the
    group holds everything it forked (unless a child made its own session; the leak check finds those).
    """
    # Once the leader has been reaped its pid may belong to a stranger, so only signal the group if
    # one of our own tagged processes still holds that group id (which keeps the id from being reused).
    if proc.poll() is None or _group_alive(proc.pid, run_id):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        # Give the leader and everything it forked the grace period to exit cleanly.
        deadline = time.monotonic() + grace
        while (proc.poll() is None or _group_alive(proc.pid, run_id)) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


class ManagedProcess:
    """A server process whose output goes to a log file and whose whole group is stopped."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        run_id: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.run_id = run_id
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=process_env(run_id, env),
            cwd=cwd,
            start_new_session=True,  # its own process group, so stop() reaches grandchildren too
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready` until it holds; fail with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc.returncode} before {what}:\n{self.log_tail()}"
                )
            try:
                if ready():
                    return
            except Exception:  # not ready yet: any failure means "poll again"
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not {what} after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> None:
        stop_process(self.proc, self.run_id, grace)
        self._log.close()
