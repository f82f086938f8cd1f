"""`make lint` beyond ruff: the import contracts (import-linter) and the type checker (mypy).

Both tools find a package by walking its folder, but the design card keeps `api/`, `csi/`,
`controller/` and `node-agent/` at the top level and pyproject maps them into `cairn.*`. So the
mapped tree is mirrored first under .cache/lint/src, one symlink per source file, and the tools
read it there; paths in their output are mapped back to the real files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MIRROR = REPO_ROOT / ".cache" / "lint" / "src"


def package_dirs() -> dict[str, Path]:
    """Package name to its folder, as pyproject's setuptools section maps them."""
    settings = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = settings["package-dir"]
    dirs = {}
    for package in settings["packages"]:
        parent, _, leaf = package.rpartition(".")
        if package in mapping:
            dirs[package] = REPO_ROOT / mapping[package]
        else:
            dirs[package] = dirs[parent] / leaf
    return dirs


def build_mirror(mirror: Path = MIRROR) -> dict[Path, Path]:
    """Symlink every module into `mirror` at its import path; returns mirror folder to real folder."""
    shutil.rmtree(mirror, ignore_errors=True)
    folders = {}
    for package, folder in package_dirs().items():
        target = mirror.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        folders[target] = folder
        for source in folder.iterdir():
            if source.is_file() and source.suffix in (".py", ".pyi", ".typed"):
                os.symlink(source, target / source.name)
    return folders


def to_real_paths(text: str, folders: dict[Path, Path], mirror: Path = MIRROR) -> str:
    # Longest first, so cairn/node_agent/host is mapped before cairn/node_agent.
    for copy, real in sorted(folders.items(), key=lambda item: -len(str(item[0]))):
        real_folder = str(real.relative_to(REPO_ROOT)) + "/"
        text = text.replace(str(copy) + "/", real_folder)
        text = text.replace(str(copy.relative_to(mirror.parent)) + "/", real_folder)
    return text


def run(command: list[str], folders: dict[Path, Path], mirror: Path) -> subprocess.CompletedProcess[str]:
    # mypy looks for the package on MYPYPATH, import-linter on PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": str(mirror), "MYPYPATH": str(mirror), "COLUMNS": "200"}
    # Not from the repository root: both tools put the working directory on sys.path, where the
    # unmapped `cairn/` folder would shadow the mirror.
    result = subprocess.run(command, cwd=mirror.parent, env=env, capture_output=True, text=True)
    result.stdout = to_real_paths(result.stdout, folders, mirror)
    result.stderr = to_real_paths(result.stderr, folders, mirror)
    return result


def check_contracts(folders: dict[Path, Path], mirror: Path = MIRROR) -> subprocess.CompletedProcess[str]:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    return run([str(lint_imports), str(REPO_ROOT / "pyproject.toml")], folders, mirror)


def check_types(folders: dict[Path, Path], mirror: Path = MIRROR) -> subprocess.CompletedProcess[str]:
    mypy = Path(sys.executable).parent / "mypy"
    config = str(REPO_ROOT / "pyproject.toml")
    return run([str(mypy), "--config-file", config, "-p", "cairn"], folders, mirror)


def main() -> int:
    folders = build_mirror()
    failed = False
    for title, check in (("import contracts (lint-imports)", check_contracts), ("types (mypy)", check_types)):
        print(f"== {title}", flush=True)
        result = check(folders)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        failed |= result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
