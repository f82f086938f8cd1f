"""Where the test bed finds the tools that tools/build_tools.py built."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("CAIRN_TOOLS_CACHE", REPO_ROOT / ".cache" / "tools")) / "bin"


def tool_path(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make tools` (python tools/build_tools.py) first")
    return path
