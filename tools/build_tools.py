"""Build the test bed's Go tools from pinned module versions and cache the binaries.

Every tool is built from the Go module proxy, never downloaded as a binary. Modules
whose go.mod carries replace directives (kubernetes, external-provisioner) cannot be
`go install`ed, so they are built from a throwaway wrapper module that re-states those
replaces. Binaries land in `.cache/tools/bin` (git-ignored); a stamp file per tool records
the pin it was built from, so a warm run costs one stat per tool.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("CAIRN_TOOLS_CACHE", REPO_ROOT / ".cache" / "tools"))
BIN_DIR = CACHE_DIR / "bin"

KUBERNETES_VERSION = "v1.36.3"
STAGING_VERSION = "v0.36.3"


@dataclass(frozen=True)
class GoTool:
    name: str
    module: str
    version: str
    package: str
    # Wrapper builds copy replace directives from the module's go.mod; "install" uses go install.
    method: str = "install"
    ldflags: str = ""
    extra_binaries: dict[str, str] = field(default_factory=dict)
    # The package is a Go test package: build its test binary (`go test -c`), as e2e.test is built.
    test_binary: bool = False

    @property
    def pin(self) -> str:
        if self.method == "local":
            return f"{self.module} {source_digest(REPO_ROOT / self.package)} {self.ldflags}"
        return f"{self.module}@{self.version} {self.package} {self.ldflags}"


def source_digest(directory: Path) -> str:
    """Digest of a local module's files, so an edit rebuilds it and nothing else does."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


_K8S_LDFLAGS = (
    f"-s -w -X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}"
    " -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36"
)

TOOLS: dict[str, GoTool] = {
    tool.name: tool
    for tool in [
        GoTool(
            name="kube-apiserver",
            module="k8s.io/kubernetes",
            version=KUBERNETES_VERSION,
            package="k8s.io/kubernetes/cmd/kube-apiserver",
            method="wrapper",
            ldflags=_K8S_LDFLAGS,
            # The PV binder and the scheduler's volume binding are real Kubernetes code too; they
            # come from the same module graph, so they cost only link time here.
            extra_binaries={
                "kubectl": "k8s.io/kubernetes/cmd/kubectl",
                "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
                "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
                # The bed's kubelet nodes: a real kubelet each, and kube-proxy for Service IPs
                # (pods reach the apiserver through the `kubernetes` Service, as in any cluster).
                "kubelet": "k8s.io/kubernetes/cmd/kubelet",
                "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
            },
        ),
        # Kubernetes' own e2e suite, for its External Storage specs (`make conformance`).
        GoTool(
            name="e2e.test",
            module="k8s.io/kubernetes",
            version=KUBERNETES_VERSION,
            package="k8s.io/kubernetes/test/e2e",
            method="wrapper",
            ldflags=_K8S_LDFLAGS,
            test_binary=True,
        ),
        # The Ginkgo CLI at the version e2e.test links, to run its specs in parallel processes.
        GoTool(
            name="ginkgo",
            module="github.com/onsi/ginkgo/v2",
            version="v2.28.1",
            package="github.com/onsi/ginkgo/v2/ginkgo",
            ldflags="-s -w",
        ),
        # One containerd per kubelet node. Static (no cgo): the bed copies nothing but the binaries.
        GoTool(
            name="containerd",
            module="github.com/containerd/containerd/v2",
            version="v2.2.9",
            package="github.com/containerd/containerd/v2/cmd/containerd",
            ldflags="-s -w",
            extra_binaries={
                "ctr": "github.com/containerd/containerd/v2/cmd/ctr",
                "containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
            },
        ),
        # Stand-ins for node-driver-registrar and livenessprobe, which the module proxy does not
        # serve at any version; tests/testbed/sidecars/README.md says what they do.
        GoTool(
            name="testbed-registrar",
            module="cairn.dev/testbed-sidecars",
            version="local",
            package="tests/testbed/sidecars",
            method="local",
            ldflags="-s -w",
            extra_binaries={
                "testbed-livenessprobe": "./cmd/testbed-livenessprobe",
                "testbed-pause": "./cmd/testbed-pause",
                "testbed-agnhost": "./cmd/testbed-agnhost",
            },
        ),
        # The controller's second sidecar; v2.2.0 is the release built against Kubernetes 1.36.
        GoTool(
            name="csi-resizer",
            module="github.com/kubernetes-csi/external-resizer/v2",
            version="v2.2.0",
            package="github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer",
            ldflags="-s -w",
        ),
        GoTool(
            name="etcd",
            module="go.etcd.io/etcd/server/v3",
            version="v3.6.16",
            package="go.etcd.io/etcd/server/v3",
            method="wrapper",
            ldflags="-s -w",
        ),
        GoTool(
            name="csi-sanity",
            module="github.com/kubernetes-csi/csi-test/v5",
            version="v5.6.0",
            package="github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity",
            ldflags="-s -w",
        ),
        GoTool(
            name="csi-provisioner",
            module="github.com/kubernetes-csi/external-provisioner/v6",
            version="v6.3.0",
            package="github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner",
            method="wrapper",
            ldflags="-s -w",
        ),
        # The scale bench's fake nodes: kwok keeps Node objects Ready with leases and runs their
        # pods without kubelets (bench/scale). Its go.mod has no replace directives.
        GoTool(
            name="kwok",
            module="sigs.k8s.io/kwok",
            version="v0.8.0",
            package="sigs.k8s.io/kwok/cmd/kwok",
            ldflags="-s -w",
        ),
        GoTool(
            name="helm",
            module="helm.sh/helm/v3",
            version="v3.21.4",
            package="helm.sh/helm/v3/cmd/helm",
            ldflags="-s -w",
        ),
        GoTool(
            name="minio",
            module="github.com/minio/minio",
            version="v0.0.0-20260212201848-7aac2a2c5b7c",
            package="github.com/minio/minio",
            ldflags="-s -w",
        ),
    ]
}


def log(message: str) -> None:
    print(f"[tools {time.strftime('%H:%M:%S')}] {message}", flush=True)


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOFLAGS", "-mod=mod")
    env["CGO_ENABLED"] = "0"
    return env


def run_go(args: list[str], cwd: Path, label: str, quiet: bool = False) -> None:
    """Run a go command, printing a heartbeat every 30 s so a cold build never looks hung."""
    started = time.monotonic()
    if not quiet:
        log(f"{label}: go {' '.join(args)}")
    with tempfile.TemporaryFile(mode="w+") as output:
        proc = subprocess.Popen(["go", *args], cwd=cwd, env=go_env(), stdout=output, stderr=subprocess.STDOUT)
        while True:
            try:
                code = proc.wait(timeout=30)
                break
            except subprocess.TimeoutExpired:
                output.seek(0)
                downloads = sum(1 for line in output if line.startswith("go: downloading"))
                log(
                    f"{label}: still running ({time.monotonic() - started:.0f}s, {downloads} modules fetched)"
                )
        if code != 0:
            output.seek(0)
            sys.stdout.write("".join(output.readlines()[-60:]))
            raise SystemExit(f"{label}: go {args[0]} failed with exit code {code}")
    if not quiet:
        log(f"{label}: done in {time.monotonic() - started:.0f}s")


def module_gomod(module: str, version: str, cwd: Path) -> str:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=cwd,
        env=go_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    info = json.loads(out.stdout)
    if info.get("Error"):
        raise SystemExit(f"{module}@{version}: {info['Error']}")
    return Path(info["GoMod"]).read_text()


_REPLACE_RE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+(\S+))?\s+=>\s+(\S+)(?:\s+(\S+))?\s*$")


def wrapper_replaces(gomod: str) -> list[str]:
    """Translate a module's replace directives into ones valid outside its repository.

    Local-path targets (kubernetes' `./staging/src/k8s.io/api`) become the published staging
    module at the matching version; module-version targets are kept as they are.
    """
    replaces: list[str] = []
    in_block = False
    for raw in gomod.splitlines():
        line = raw.split("//")[0].rstrip()
        if line.startswith("replace ("):
            in_block = True
            continue
        if in_block and line.strip() == ")":
            in_block = False
            continue
        if not (in_block or line.startswith("replace ")):
            continue
        match = _REPLACE_RE.match(line)
        if not match:
            continue
        old, _old_version, new, new_version = match.groups()
        if new.startswith("./") or new.startswith("../"):
            if new.startswith("./staging/src/k8s.io/"):
                replaces.append(f"{old}={old}@{STAGING_VERSION}")
            # Other local paths (etcd's sibling modules) resolve by version without a replace.
            continue
        replaces.append(f"{old}={new}@{new_version}")
    return replaces


def build_tool(tool: GoTool) -> None:
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    binaries = {tool.name: tool.package, **tool.extra_binaries}
    with tempfile.TemporaryDirectory(prefix=f"cairn-build-{tool.name}-") as tmp:
        work = Path(tmp)
        if tool.method == "local":
            source = REPO_ROOT / tool.package
            local = {tool.name: f"./cmd/{tool.name}", **tool.extra_binaries}
            for binary, package in local.items():
                run_go(
                    ["build", "-trimpath", f"-ldflags={tool.ldflags}", "-o", str(BIN_DIR / binary), package],
                    source,
                    binary,
                )
        elif tool.method == "install":
            env_bin = work / "bin"
            env_bin.mkdir()
            os.environ["GOBIN"] = str(env_bin)
            try:
                for binary, package in binaries.items():
                    run_go(
                        ["install", "-trimpath", f"-ldflags={tool.ldflags}", f"{package}@{tool.version}"],
                        work,
                        binary,
                    )
                    built = env_bin / Path(package).name
                    if package.endswith("/v3") and not built.exists():
                        built = env_bin / "v3"
                    shutil.move(str(built), BIN_DIR / binary)
            finally:
                os.environ.pop("GOBIN", None)
        else:
            run_go(["mod", "init", "cairn.dev/toolwrapper"], work, tool.name, quiet=True)
            replaces = wrapper_replaces(module_gomod(tool.module, tool.version, work))
            if replaces:
                log(f"{tool.name}: restating {len(replaces)} replace directives of {tool.module}")
                run_go(["mod", "edit", *(f"-replace={r}" for r in replaces)], work, tool.name, quiet=True)
            run_go(["get", f"{tool.module}@{tool.version}"], work, tool.name)
            for binary, package in binaries.items():
                verb = ["test", "-c"] if tool.test_binary else ["build"]
                run_go(
                    [*verb, "-trimpath", f"-ldflags={tool.ldflags}", "-o", str(BIN_DIR / binary), package],
                    work,
                    f"{tool.name}/{binary}",
                )
    (CACHE_DIR / f"{tool.name}.stamp").write_text(tool.pin)


def is_cached(tool: GoTool) -> bool:
    stamp = CACHE_DIR / f"{tool.name}.stamp"
    binaries = [tool.name, *tool.extra_binaries]
    return stamp.exists() and stamp.read_text() == tool.pin and all((BIN_DIR / b).exists() for b in binaries)


def ensure(names: list[str]) -> None:
    started = time.monotonic()
    missing = [TOOLS[n] for n in names if not is_cached(TOOLS[n])]
    if missing:
        log(
            f"building {', '.join(t.name for t in missing)} from source; with no Go caches at all this"
            " took 33 minutes on 2 cores (all 11 tools before kwok), with Go's caches warm a few"
            " minutes, and with .cache/tools warm under a second"
        )
    for index, tool in enumerate(missing, 1):
        log(f"[{index}/{len(missing)}] {tool.name} {tool.version}")
        build_tool(tool)
    log(f"{len(names)} tools ready in {BIN_DIR} ({time.monotonic() - started:.1f}s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tools", nargs="*", help=f"tools to build (default: all of {', '.join(TOOLS)})")
    parser.add_argument("--list", action="store_true", help="print name, module and version of every tool")
    args = parser.parse_args()
    if args.list:
        for tool in TOOLS.values():
            print(f"{tool.name}\t{tool.module}\t{tool.version}\t{'cached' if is_cached(tool) else 'missing'}")
        return
    unknown = [n for n in args.tools if n not in TOOLS]
    if unknown:
        raise SystemExit(f"unknown tool(s) {unknown}; known: {', '.join(TOOLS)}")
    ensure(args.tools or list(TOOLS))


if __name__ == "__main__":
    main()
