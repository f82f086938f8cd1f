"""Long-running child processes of the test bed: logged, tagged and always reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .leaks import process_env


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
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Children that ignored the group signal (or were left behind after a crash) go too.
        self._signal_group(signal.SIGKILL)
        self._log.close()

    def kill(self) -> None:
        """Hard kill, as a crash would: no chance to clean up."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
