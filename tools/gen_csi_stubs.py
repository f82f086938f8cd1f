"""Generate the CSI Python stubs from the official spec module.

The spec is fetched with the Go tool (so the Go module proxy's checksum database vouches
for it) and compiled with grpcio-tools. The proto is laid out under `cairn/csi/proto/`
before compiling so that the generated gRPC module imports its messages by their package
path instead of as a top-level `csi_pb2`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC_MODULE = "github.com/container-storage-interface/spec"
SPEC_VERSION = "v1.12.0"
REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "csi" / "proto"
STAMP = OUT_DIR / ".spec-version"


def spec_proto_path() -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{SPEC_MODULE}@{SPEC_VERSION}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    info = json.loads(out.stdout)
    if info.get("Error"):
        raise SystemExit(f"cannot fetch {SPEC_MODULE}@{SPEC_VERSION}: {info['Error']}")
    return Path(info["Dir"]) / "csi.proto"


def main() -> None:
    if STAMP.exists() and STAMP.read_text() == SPEC_VERSION and (OUT_DIR / "csi_pb2_grpc.py").exists():
        return
    from grpc_tools import protoc  # imported late: only the build needs grpcio-tools

    proto = spec_proto_path()
    with tempfile.TemporaryDirectory() as tmp:
        include = Path(tmp) / "src"
        staged = include / "cairn" / "csi" / "proto"
        staged.mkdir(parents=True)
        shutil.copyfile(proto, staged / "csi.proto")
        gen = Path(tmp) / "gen"
        gen.mkdir()
        well_known = Path(protoc.__file__).parent / "_proto"
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{include}",
                f"-I{well_known}",
                f"--python_out={gen}",
                f"--pyi_out={gen}",
                f"--grpc_python_out={gen}",
                "cairn/csi/proto/csi.proto",
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for produced in (gen / "cairn" / "csi" / "proto").iterdir():
            shutil.copyfile(produced, OUT_DIR / produced.name)
    (OUT_DIR / "__init__.py").write_text(
        f'"""Generated from {SPEC_MODULE} {SPEC_VERSION} by tools/gen_csi_stubs.py; do not edit."""\n'
    )
    STAMP.write_text(SPEC_VERSION)
    print(f"generated CSI stubs from {SPEC_MODULE}@{SPEC_VERSION} into {OUT_DIR.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
