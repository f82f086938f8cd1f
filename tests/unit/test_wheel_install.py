"""The Dockerfile's install step, without Docker: build the wheel and install it into a fresh venv.

There is no Docker engine here, so this is what proves the image's `pip install /tmp/*.whl` works:
the wheel carries the generated CSI stubs and the console scripts, and its declared dependencies
are enough to start every component.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.testbed.tools import REPO_ROOT

REPO = REPO_ROOT

pytestmark = pytest.mark.timeout(900)


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, timeout=800)
    assert result.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_wheel_installs_into_a_fresh_venv_and_every_component_starts(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # As the Dockerfile's build stage: the stubs are generated (make proto did) before the wheel is built.
    assert (REPO / "csi" / "proto" / "csi_pb2.py").exists(), "run `make proto` first"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, REPO)
    (wheel,) = dist.glob("cairn-*.whl")
    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=True)
    run(fresh / "bin" / "pip", "install", "-q", wheel)
    for script in ("cairn-controller", "cairn-node-agent", "cairn"):
        assert "usage:" in run(fresh / "bin" / script, "--help")
    # The generated stubs and every adapter import from the installed wheel, not from the checkout.
    probe = (
        "import cairn.csi.proto.csi_pb2, cairn.node_agent.main, cairn.controller.main, libtorrent, boto3; "
        "print(cairn.csi.proto.csi_pb2.__file__)"
    )
    location = run(fresh / "bin" / "python", "-c", probe, cwd=tmp_path)
    assert str(fresh) in location
