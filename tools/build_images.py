"""Build Cairn's container images on a machine without a registry, and cache them like the Go tools.

Every image becomes a docker-archive under `.cache/images/` (git-ignored; `CAIRN_IMAGES_CACHE`
moves it) that `ctr -n k8s.io images import` accepts under its own name, with a stamp recording
what it was built from, and `.cache/images/index.json` maps every image reference to its archive.

- `cairn` is the project's Dockerfile, built with buildah (chroot isolation, `--layers`, its own
  storage under `.cache/images/containers/`). No base image can be pulled here, so the two bases
  are made from Debian packages with mmdebstrap, from this machine's apt sources, and passed in as
  the Dockerfile's `BUILD_IMAGE` and `RUNTIME_IMAGE` build arguments. Its tag is a digest of the
  build context, so any source change gives a new tag and a rebuild.
- The test bed's sidecars and pause image hold one static Go binary each (built by
  tools/build_tools.py), packed by hand: one deterministic layer tar, a config and a manifest.
- busybox is Debian's busybox-static with a symlink per applet, tagged also with the name
  Kubernetes' e2e suite uses at the pinned version, so its pods find it locally.

A warm run reads the stamps and hashes the build context: about a second. Cold, the bases and
the cairn image take several minutes (mmdebstrap and the Dockerfile's apt and pip steps).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 tools/build_images.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import build_tools

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("CAIRN_IMAGES_CACHE", REPO_ROOT / ".cache" / "images"))
INDEX_FILE = CACHE_DIR / "index.json"
# Bump when the way an image is made changes, so every stamp goes stale once.
RECIPE = 1
SUITE = "bookworm"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Hand-packed layers are reproducible: every entry has this mtime, owner 0:0 and no user names.
EPOCH = 0
HEARTBEAT_SECONDS = 30


class ImageBuildError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    cmd: list[str],
    label: str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    progress: Callable[[list[str]], str] | None = None,
) -> str:
    """Run a command, printing a heartbeat every 30 s (with `progress` of its output so far)."""
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+", errors="replace") as output:
        proc = subprocess.Popen(
            [str(c) for c in cmd], cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True
        )
        while True:
            try:
                code = proc.wait(timeout=HEARTBEAT_SECONDS)
                break
            except subprocess.TimeoutExpired:
                output.seek(0)
                where = progress(output.read().splitlines()) if progress else ""
                log(
                    f"{label}: still running ({time.monotonic() - started:.0f}s)"
                    + (f", {where}" if where else "")
                )
        output.seek(0)
        text = output.read()
    if code != 0:
        sys.stdout.write("\n".join(text.splitlines()[-60:]) + "\n")
        raise ImageBuildError(f"{label}: {Path(str(cmd[0])).name} failed with exit code {code}")
    return text


def last_line(pattern: str) -> Callable[[list[str]], str]:
    """A heartbeat progress reader: the last output line matching `pattern`, shortened."""
    regex = re.compile(pattern)

    def read(lines: list[str]) -> str:
        for line in reversed(lines):
            if regex.match(line):
                return line if len(line) <= 100 else line[:97] + "..."
        return ""

    return read


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cached_sha256(path: Path) -> str:
    """sha256 of a file, remembered by size and mtime so a warm run does not re-read large binaries."""
    cache_file = CACHE_DIR / "digests.json"
    try:
        cache: dict[str, list[Any]] = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    st = path.stat()
    key = [st.st_size, st.st_mtime_ns]
    entry = cache.get(str(path))
    if entry and entry[:2] == key:
        return str(entry[2])
    digest = sha256_file(path)
    cache[str(path)] = [*key, digest]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    write_atomic(cache_file, json.dumps(cache, indent=1, sort_keys=True))
    return digest


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Packing images by hand: a layer tar, a config and a docker-archive manifest.


@dataclass(frozen=True)
class Entry:
    """One entry of a hand-packed layer: a file (from a path or bytes), a directory or a symlink."""

    kind: str
    mode: int = 0o755
    source: Path | None = None
    data: bytes = b""
    target: str = ""


def file_entry(content: Path | bytes, mode: int = 0o644) -> Entry:
    if isinstance(content, Path):
        return Entry("file", mode, source=content)
    return Entry("file", mode, data=content)


def dir_entry(mode: int = 0o755) -> Entry:
    return Entry("dir", mode)


def symlink_entry(target: str) -> Entry:
    return Entry("symlink", 0o777, target=target)


def _member_name(path: str) -> str:
    name = os.path.normpath(path.lstrip("/"))
    if name in (".", "") or name.startswith(".."):
        raise ValueError(f"not a path inside an image: {path!r}")
    return name


def write_layer(files: dict[str, Entry], out: Path) -> str:
    """Write a deterministic layer tar (sorted, parents first, fixed mtime, 0:0); return its sha256."""
    entries = {_member_name(p): e for p, e in files.items()}
    for name in list(entries):
        parent = os.path.dirname(name)
        while parent and parent not in entries:
            entries[parent] = dir_entry()
            parent = os.path.dirname(parent)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            entry = entries[name]
            info = tarfile.TarInfo(name)
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = entry.mode
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            elif entry.source is not None:
                info.size = entry.source.stat().st_size
                with entry.source.open("rb") as f:
                    tar.addfile(info, f)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return sha256_file(out)


def go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = EPOCH
    info.mode = 0o644
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_docker_archive(refs: list[str], layers: list[Path], config: dict[str, Any], out: Path) -> None:
    """A docker-archive (`docker save` layout) of uncompressed layer tars under the names `refs`.

    `config` is the container config (Entrypoint, Env, ...); the image config around it names the
    layers by the sha256 of their tars (their diff IDs, as they are not compressed).
    """
    digests = [sha256_file(layer) for layer in layers]
    image_config = {
        "architecture": go_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in digests]},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": "tools/build_images.py"} for _ in layers
        ],
    }
    config_bytes = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = [
        {"Config": config_name, "RepoTags": list(refs), "Layers": [f"{d}/layer.tar" for d in digests]}
    ]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for digest, layer in zip(digests, layers, strict=True):
            info = tarfile.TarInfo(f"{digest}/layer.tar")
            info.mtime = EPOCH
            info.mode = 0o644
            info.size = layer.stat().st_size
            with layer.open("rb") as f:
                tar.addfile(info, f)
        _add_bytes(tar, config_name, config_bytes)
        _add_bytes(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
    tmp.replace(out)


def pack_image(
    ref_names: list[str], files: dict[str, Entry], config: dict[str, Any], out: Path | None = None
) -> Path:
    """Pack `files` into a one-layer image named `ref_names` with container `config`; return the archive."""
    if out is None:
        out = CACHE_DIR / f"{ref_names[0].rsplit('/', 1)[-1].replace(':', '_')}.tar"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pack-", dir=out.parent) as tmp:
        layer = Path(tmp) / "layer.tar"
        write_layer(files, layer)
        write_docker_archive(ref_names, [layer], config, out)
    return out


def base_files(shell: str = "/sbin/nologin") -> dict[str, Entry]:
    """What every hand-packed image holds besides its binaries: users root and nobody, and /tmp."""
    return {
        "/etc/passwd": file_entry(
            f"root:x:0:0:root:/root:{shell}\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n".encode()
        ),
        "/etc/group": file_entry(b"root:x:0:\nnobody:x:65534:\n"),
        "/tmp": dir_entry(0o1777),
    }


def busybox_files(busybox: Path) -> dict[str, Entry]:
    """/bin/busybox and a symlink to it for every applet it lists (`busybox --list-full`)."""
    listed = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    files = base_files(shell="/bin/sh")
    for applet in sorted({line.strip().strip("/") for line in listed.splitlines() if line.strip()}):
        if applet != "bin/busybox":
            files[f"/{applet}"] = symlink_entry("/bin/busybox")
    files["/bin/busybox"] = file_entry(busybox, 0o755)
    return files


# ---------------------------------------------------------------------------------------------
# The build context of the Dockerfile: what `git ls-files` lists, minus .dockerignore.


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif c == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) per line of a .dockerignore; comments and blanks skipped."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    if not path.exists():
        return rules
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, _glob_regex(pattern)))
    return rules


def is_ignored(name: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: a pattern matching a path or any of its parent folders excludes it; the last wins."""
    parts = name.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def context_files(root: Path = REPO_ROOT) -> list[str]:
    """The Dockerfile's build context: tracked and untracked-but-not-ignored files, minus .dockerignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True, capture_output=True
    ).stdout.decode()
    rules = dockerignore_rules(root / ".dockerignore")
    names = {n for n in listed.split("\0") if n and os.path.lexists(root / n) and not is_ignored(n, rules)}
    if (root / "Dockerfile").exists():
        names.add("Dockerfile")
    return sorted(names)


def context_digest(root: Path = REPO_ROOT) -> str:
    """sha256 over the context's paths, executable bits, contents and symlink targets."""
    digest = hashlib.sha256()
    for name in context_files(root):
        path = root / name
        if path.is_symlink():
            digest.update(f"L {name}\0{os.readlink(path)}\0".encode())
        elif path.is_file():
            executable = "x" if os.access(path, os.X_OK) else "-"
            digest.update(f"F{executable} {name}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()


def stage_context(root: Path, dest: Path) -> None:
    """Copy exactly the hashed files into `dest`, so what is built is what the tag names."""
    for name in context_files(root):
        source, target = root / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)


# ---------------------------------------------------------------------------------------------
# buildah, with its own storage, and the Debian base images.

STORAGE_DIR = CACHE_DIR / "containers"
# vfs copies each layer in full (slower, more disk) but never mounts anything on the host. overlay
# works on this ext4 too, but it keeps its storage home and every working container mounted on the
# host until they are removed, so a build that fails or is killed leaves mounts behind (the test
# bed's leak check counts mounts). CAIRN_IMAGES_STORAGE_DRIVER=overlay picks it anyway.
STORAGE_DRIVER = os.environ.get("CAIRN_IMAGES_STORAGE_DRIVER", "vfs")


def buildah(*args: str) -> list[str]:
    return [
        "buildah",
        "--root",
        str(STORAGE_DIR / "root"),
        "--runroot",
        str(STORAGE_DIR / "runroot"),
        "--storage-driver",
        STORAGE_DRIVER,
        *args,
    ]


def signature_policy() -> Path:
    """Images here come from this machine only: accept them without signatures, whatever /etc says."""
    policy = STORAGE_DIR / "policy.json"
    if not policy.exists():
        STORAGE_DIR.mkdir(parents=True, exist_ok=True)
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return policy


def storage_has(ref: str) -> bool:
    return (
        subprocess.run(
            buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref), capture_output=True
        ).returncode
        == 0
    )


def apt_sources() -> list[Path]:
    """This machine's apt sources (one-line and deb822 files), the mirror the bases are made from."""
    etc = Path("/etc/apt")
    found = [etc / "sources.list"] if (etc / "sources.list").exists() else []
    found += sorted(p for p in (etc / "sources.list.d").glob("*") if p.suffix in (".list", ".sources"))
    found = [p for p in found if any(ln.strip() and not ln.lstrip().startswith("#") for ln in p.open())]
    if not found:
        raise ImageBuildError("no apt sources in /etc/apt: the base images are made from them")
    return found


# Like debian:bookworm-slim, the bases carry no manuals, docs (copyright files stay) or translations.
DPKG_EXCLUDES = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
]
# And, as there, apt keeps no .debs or package caches: a Dockerfile's apt-get install step would
# otherwise carry them in its layer (about 90 MB for the runtime stage's lvm2 and friends).
APT_SLIM_CONF = """// Written by tools/build_images.py: no package caches in image layers.
APT::Keep-Downloaded-Packages "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""
SLIM_HOOKS = [
    "upload {apt_conf} /etc/apt/apt.conf.d/90cairn-slim",
    # mmdebstrap's own cleanup finds the package caches by that config, so they go here.
    'rm -f "$1"/var/cache/apt/*.bin',
    # mmdebstrap leaves this machine's name and resolver in; container runtimes provide both.
    'rm -f "$1"/etc/hostname "$1"/etc/resolv.conf',
]


def debian_rootfs(packages: tuple[str, ...], out: Path, label: str) -> None:
    """A Debian minbase root file system with `packages`, as a tar, made with mmdebstrap from this
    machine's apt sources. The .debs are kept in one cache that every build shares, so a changed
    package list fetches only what is new."""
    debs = CACHE_DIR / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".rootfs-", dir=CACHE_DIR) as tmp:
        apt_conf = Path(tmp) / "apt.conf"
        apt_conf.write_text(APT_SLIM_CONF)
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                *([f"--include={','.join(packages)}"] if packages else []),
                # Device nodes are the runtime's business; the cached .debs stay for the next build.
                "--skip=output/dev",
                "--skip=download/empty",
                "--skip=essential/unlink",
                *(f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES),
                '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
                f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
                f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
                *(f"--customize-hook={hook.format(apt_conf=apt_conf)}" for hook in SLIM_HOOKS),
                SUITE,
                str(out),
                *map(str, apt_sources()),
            ],
            label,
            progress=last_line(r"I: "),
        )


@dataclass(frozen=True)
class BaseImage:
    """A base image made of Debian packages with mmdebstrap, kept in buildah's storage only."""

    name: str
    packages: tuple[str, ...]
    cmd: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"localhost/cairn-bed/{self.name}:{SUITE}"

    @property
    def stamp(self) -> Path:
        return CACHE_DIR / "bases" / f"{self.name}.stamp"

    def digest(self) -> str:
        recipe = {
            "recipe": RECIPE,
            "suite": SUITE,
            "packages": sorted(self.packages),
            "excludes": DPKG_EXCLUDES,
            "apt": APT_SLIM_CONF,
            "hooks": SLIM_HOOKS,
            "cmd": self.cmd,
            "sources": [p.read_text() for p in apt_sources()],
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    def ensure(self) -> None:
        digest = self.digest()
        if self.stamp.exists() and self.stamp.read_text() == digest and storage_has(self.ref):
            return
        started = time.monotonic()
        log(f"base {self.ref}: mmdebstrap {SUITE} with {', '.join(self.packages)}")
        with tempfile.TemporaryDirectory(prefix=".base-", dir=CACHE_DIR) as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            debian_rootfs(self.packages, rootfs, f"base {self.name}")
            archive = Path(tmp) / "base.tar"
            config = {"Env": [PATH_ENV, "LANG=C.UTF-8"], "Cmd": list(self.cmd)}
            write_docker_archive([self.ref], [rootfs], config, archive)
            rootfs.unlink()
            run(
                buildah("pull", "--signature-policy", str(signature_policy()), f"docker-archive:{archive}"),
                f"base {self.name}: import",
            )
        self.stamp.parent.mkdir(parents=True, exist_ok=True)
        self.stamp.write_text(digest)
        log(f"base {self.ref}: done in {time.monotonic() - started:.0f}s")


# Stage 1 of the Dockerfile (the golang image there): python3 for the wheel, Go for `go mod download`
# of the CSI spec in tools/gen_csi_stubs.py. Debian's Go 1.19 downloads it fine through the module
# proxy (the spec's `go 1.23.0` line does not matter to a download, and no git is needed), so the
# host's toolchain is not copied in.
BUILD_BASE = BaseImage(
    "debian-build", ("python3", "python3-venv", "python3-pip", "golang-go", "ca-certificates"), ("bash",)
)
# Stage 2 (the python slim image there): Debian's python3 is 3.11 too, so the same cp311 wheels
# install; passwd for the Dockerfile's useradd (minbase leaves it out, the slim image has it).
RUNTIME_BASE = BaseImage(
    "debian-python", ("python3", "python3-venv", "ca-certificates", "passwd"), ("python3",)
)


# ---------------------------------------------------------------------------------------------
# The images.


class Image:
    name: str

    @property
    def archive(self) -> Path:
        return CACHE_DIR / f"{self.name}.tar"

    @property
    def stamp(self) -> Path:
        return CACHE_DIR / f"{self.name}.stamp"

    def inputs(self) -> dict[str, Any]:
        """What the image is made from, cheaply computed: a stamp that matches means no work."""
        raise NotImplementedError

    def ref(self, inputs: dict[str, Any]) -> str:
        """The image's main reference."""
        raise NotImplementedError

    def build(self, inputs: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
        """Write the archive to `out`; return its references and details for the stamp."""
        raise NotImplementedError


@dataclass(frozen=True)
class CairnImage(Image):
    name: str = "cairn"
    repository: str = "localhost/cairn"

    def inputs(self) -> dict[str, Any]:
        return {
            "recipe": RECIPE,
            "context": context_digest(),
            "bases": {b.ref: b.digest() for b in (BUILD_BASE, RUNTIME_BASE)},
        }

    def ref(self, inputs: dict[str, Any]) -> str:
        return f"{self.repository}:{inputs['context'][:12]}"

    def build(self, inputs: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
        for base in (BUILD_BASE, RUNTIME_BASE):
            base.ensure()
        ref = self.ref(inputs)
        policy = str(signature_policy())
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=".context-", dir=CACHE_DIR) as tmp:
            context = Path(tmp)
            stage_context(REPO_ROOT, context)
            args = [
                "build",
                "--isolation",
                "chroot",
                "--layers",
                # A failed step's working container would keep a full copy of its rootfs (vfs).
                "--force-rm",
                "--pull=never",
                "--format",
                "docker",
                "--signature-policy",
                policy,
                "--build-arg",
                f"BUILD_IMAGE={BUILD_BASE.ref}",
                "--build-arg",
                f"RUNTIME_IMAGE={RUNTIME_BASE.ref}",
                "--tag",
                ref,
                "--file",
                str(context / "Dockerfile"),
            ]
            # The RUN steps fetch from PyPI and the Go module proxy over TLS: trust what this machine
            # trusts (a TLS-intercepting proxy's CA included). A bind mount, so no layer keeps it.
            bundle = Path("/etc/ssl/certs/ca-certificates.crt")
            if bundle.exists():
                args += ["--volume", f"{bundle}:{bundle}:ro"]
            log(f"cairn: buildah build {ref} ({STORAGE_DRIVER} storage in {STORAGE_DIR})")
            run(
                buildah(*args, str(context)),
                "cairn: buildah build",
                progress=last_line(r"(\[\d+/\d+\] )?STEP \d+/\d+: "),
            )
        log(f"cairn: built in {time.monotonic() - started:.0f}s; exporting")
        tmp_out = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp_out.unlink(missing_ok=True)
        run(
            buildah("push", "--signature-policy", policy, ref, f"docker-archive:{tmp_out}:{ref}"),
            "cairn: export",
        )
        tmp_out.replace(out)
        self._drop_old_builds(ref)
        return [ref], {"storage_driver": STORAGE_DRIVER}

    def _drop_old_builds(self, keep: str) -> None:
        """Remove earlier builds from buildah's storage, where vfs keeps every layer in full.

        What stays: the bases and the current image's chain of layers, so its runtime stage's apt
        layer is reused next time. Stage 1's layers end in no image and go (its apt step is a no-op
        over the build base, and every later step depends on the sources anyway).
        """
        listed = subprocess.run(
            buildah("images", "--format", "{{.Name}}:{{.Tag}}", "--filter", f"reference={self.repository}"),
            capture_output=True,
            text=True,
        ).stdout.split()
        old = [r for r in listed if r != keep and r.startswith(f"{self.repository}:")]
        if old:
            subprocess.run(buildah("rmi", *old), capture_output=True)
        # Each pass removes only images without children, so a chain goes one layer per pass.
        for _ in range(30):
            before = subprocess.run(buildah("images", "-aq"), capture_output=True, text=True).stdout
            subprocess.run(buildah("rmi", "--prune"), capture_output=True)
            if subprocess.run(buildah("images", "-aq"), capture_output=True, text=True).stdout == before:
                break


@dataclass(frozen=True)
class BinaryImage(Image):
    """One static binary from tools/build_tools.py at the image's root, as the entrypoint."""

    name: str
    repository: str
    binary: str
    tool: str
    tag: str = ""  # empty: a digest of the binary

    @property
    def path(self) -> Path:
        return build_tools.BIN_DIR / self.binary

    def inputs(self) -> dict[str, Any]:
        tool = build_tools.TOOLS[self.tool]
        if not build_tools.is_cached(tool) or not self.path.exists():
            log(f"{self.name}: {self.binary} is missing or stale; building it with tools/build_tools.py")
            build_tools.ensure([self.tool])
        return {"recipe": RECIPE, "binary": self.binary, "sha256": cached_sha256(self.path)}

    def ref(self, inputs: dict[str, Any]) -> str:
        return f"{self.repository}:{self.tag or inputs['sha256'][:12]}"

    def build(self, inputs: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
        ref = self.ref(inputs)
        files = {**base_files(), f"/{self.binary}": file_entry(self.path, 0o755)}
        pack_image([ref], files, {"Entrypoint": [f"/{self.binary}"], "Env": [PATH_ENV]}, out)
        return [ref], {"tool": build_tools.TOOLS[self.tool].pin}


def e2e_image(image_id: str) -> str:
    """The reference Kubernetes' e2e suite uses for `image_id` (its test/utils/image/manifest.go).

    Read from the kubernetes module at the version the test bed builds, so it follows that pin.
    """
    info = json.loads(
        run(
            ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{build_tools.KUBERNETES_VERSION}"],
            "kubernetes module",
            cwd=Path(tempfile.gettempdir()),
            env=build_tools.go_env(),
        )
    )
    manifest = (Path(info["Dir"]) / "test" / "utils" / "image" / "manifest.go").read_text()
    config = re.search(
        rf'configs\[{image_id}\]\s*=\s*Config\{{list\.(\w+),\s*"([^"]+)",\s*"([^"]+)"\}}', manifest
    )
    if config is None:
        raise ImageBuildError(
            f"no {image_id} image in kubernetes {build_tools.KUBERNETES_VERSION}'s manifest.go"
        )
    field_name, image, version = config.groups()
    registry = re.search(rf'\b{field_name}:\s*"([^"]+)"', manifest)
    if registry is None:
        raise ImageBuildError(f"no {field_name} in kubernetes {build_tools.KUBERNETES_VERSION}'s manifest.go")
    return f"{registry.group(1)}/{image}:{version}"


BUSYBOX_PACKAGE = "busybox-static"


def debian_busybox(work: Path) -> tuple[Path, str]:
    """Debian's static busybox, downloaded and unpacked in `work`: (binary, package version)."""
    try:
        run(["apt-get", "download", BUSYBOX_PACKAGE], "busybox: apt-get download", cwd=work)
    except ImageBuildError:
        run(["apt-get", "update", "-qq"], "busybox: apt-get update")
        run(["apt-get", "download", BUSYBOX_PACKAGE], "busybox: apt-get download", cwd=work)
    deb = next(work.glob(f"{BUSYBOX_PACKAGE}_*.deb"))
    version = run(["dpkg-deb", "-f", str(deb), "Version"], "busybox: dpkg-deb").strip()
    run(["dpkg-deb", "-x", str(deb), str(work / "x")], "busybox: dpkg-deb")
    extracted = work / "x"
    binary = next(p for p in (extracted / "bin/busybox", extracted / "usr/bin/busybox") if p.exists())
    return binary, f"{BUSYBOX_PACKAGE} {version}"


@dataclass(frozen=True)
class BusyboxImage(Image):
    """Debian's busybox-static, its applets as symlinks; also under the e2e suite's names.

    Kubernetes' storage specs run their shell commands in its busybox image, and one spec
    (`volumes should allow exec of files on the volume`) runs `/bin/sh -ec` in its nginx image,
    for the shell only: busybox answers both.
    """

    name: str = "busybox"
    repository: str = "localhost/cairn-testbed/busybox"
    tag: str = "1.35"
    e2e_ids: tuple[str, ...] = ("BusyBox", "Nginx")

    def inputs(self) -> dict[str, Any]:
        return {
            "recipe": RECIPE,
            "package": BUSYBOX_PACKAGE,
            "kubernetes": build_tools.KUBERNETES_VERSION,
            "e2e": list(self.e2e_ids),
        }

    def ref(self, inputs: dict[str, Any]) -> str:
        return f"{self.repository}:{self.tag}"

    def build(self, inputs: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
        refs = [self.ref(inputs), *(e2e_image(i) for i in self.e2e_ids)]
        with tempfile.TemporaryDirectory(prefix=".busybox-", dir=CACHE_DIR) as tmp:
            binary, version = debian_busybox(Path(tmp))
            pack_image(refs, busybox_files(binary), {"Cmd": ["sh"], "Env": [PATH_ENV]}, out)
        return refs, {"deb": version}


@dataclass(frozen=True)
class AgnhostImage(Image):
    """testbed-agnhost as /agnhost, beside busybox, under the e2e suite's agnhost name.

    The storage specs run only `agnhost mounttest ...` and `agnhost pause` (tests/testbed/sidecars);
    their host-exec pods also need `sh` and `nsenter`, which busybox has.
    """

    name: str = "agnhost"
    repository: str = "localhost/cairn-testbed/agnhost"
    binary: str = "testbed-agnhost"
    tool: str = "testbed-registrar"

    @property
    def path(self) -> Path:
        return build_tools.BIN_DIR / self.binary

    def inputs(self) -> dict[str, Any]:
        if not build_tools.is_cached(build_tools.TOOLS[self.tool]) or not self.path.exists():
            build_tools.ensure([self.tool])
        return {
            "recipe": RECIPE,
            "sha256": cached_sha256(self.path),
            "package": BUSYBOX_PACKAGE,
            "kubernetes": build_tools.KUBERNETES_VERSION,
        }

    def ref(self, inputs: dict[str, Any]) -> str:
        return f"{self.repository}:{inputs['sha256'][:12]}"

    def build(self, inputs: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
        refs = [self.ref(inputs), e2e_image("Agnhost")]
        with tempfile.TemporaryDirectory(prefix=".agnhost-", dir=CACHE_DIR) as tmp:
            busybox, version = debian_busybox(Path(tmp))
            files = {**busybox_files(busybox), "/agnhost": file_entry(self.path, 0o755)}
            config = {"Entrypoint": ["/agnhost"], "Cmd": ["pause"], "Env": [PATH_ENV]}
            pack_image(refs, files, config, out)
        return refs, {"deb": version}


@dataclass(frozen=True)
class DebianToolsImage(Image):
    """A Debian minbase root (GNU coreutils, util-linux, bash), under the e2e suite's name for its
    glibc-dns-testing image: the multi-volume specs need GNU dd (`iflag=direct`) and `blockdev`."""

    name: str = "debian-tools"
    repository: str = "localhost/cairn-testbed/debian-tools"

    def inputs(self) -> dict[str, Any]:
        return {
            "recipe": RECIPE,
            "suite": SUITE,
            "excludes": DPKG_EXCLUDES,
            "sources": [p.read_text() for p in apt_sources()],
            "kubernetes": build_tools.KUBERNETES_VERSION,
        }

    def ref(self, inputs: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        return f"{self.repository}:{SUITE}-{digest[:8]}"

    def build(self, inputs: dict[str, Any], out: Path) -> tuple[list[str], dict[str, Any]]:
        refs = [self.ref(inputs), e2e_image("GlibcDnsTesting")]
        with tempfile.TemporaryDirectory(prefix=".debian-tools-", dir=CACHE_DIR) as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            debian_rootfs((), rootfs, self.name)
            write_docker_archive(refs, [rootfs], {"Env": [PATH_ENV, "LANG=C.UTF-8"], "Cmd": ["bash"]}, out)
        return refs, {"suite": SUITE}


_TESTBED = "localhost/cairn-testbed"
IMAGES: dict[str, Image] = {
    image.name: image
    for image in [
        CairnImage(),
        BinaryImage(
            "csi-provisioner", f"{_TESTBED}/csi-provisioner", "csi-provisioner", "csi-provisioner", "v6.3.0"
        ),
        BinaryImage("csi-resizer", f"{_TESTBED}/csi-resizer", "csi-resizer", "csi-resizer", "v2.2.0"),
        # The stand-ins of tests/testbed/sidecars, all three built by the `testbed-registrar` tool.
        BinaryImage("registrar", f"{_TESTBED}/registrar", "testbed-registrar", "testbed-registrar"),
        BinaryImage(
            "livenessprobe", f"{_TESTBED}/livenessprobe", "testbed-livenessprobe", "testbed-registrar"
        ),
        # The kubelet nodes' sandbox image (containerd's pinned `sandbox` image).
        BinaryImage("pause", f"{_TESTBED}/pause", "testbed-pause", "testbed-registrar"),
        BusyboxImage(),
        # Lookalikes of the images Kubernetes' storage e2e specs run (make conformance).
        AgnhostImage(),
        DebianToolsImage(),
    ]
}


def image_ref(name: str) -> str:
    """The main reference of image `name`, e.g. `localhost/cairn:3f2a1b0c9d8e`.

    No image is built, but a sidecar's binary is (tools/build_tools.py) if it is missing or stale:
    its tag is the binary's digest.
    """
    return IMAGES[name].ref(IMAGES[name].inputs())


def _read_stamp(image: Image) -> dict[str, Any]:
    try:
        return dict(json.loads(image.stamp.read_text()))
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _locked(what: str) -> Iterator[None]:
    """One builder at a time per image and for the index (the test bed and a developer may both run)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / f".{what}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ensure_one(image: Image) -> list[str]:
    with _locked(image.name):
        inputs = image.inputs()
        stamp = _read_stamp(image)
        if stamp.get("inputs") == inputs and image.archive.exists():
            return list(stamp["refs"])
        log(f"{image.name}: building {image.ref(inputs)}")
        started = time.monotonic()
        refs, details = image.build(inputs, image.archive)
        seconds = time.monotonic() - started
        stamp = {"inputs": inputs, "refs": refs, "built_from": details, "seconds": round(seconds, 1)}
        write_atomic(image.stamp, json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        size = image.archive.stat().st_size
        log(f"{image.name}: {', '.join(refs)} in {seconds:.0f}s, {size / 2**20:.1f} MiB")
        return refs


def ensure(names: list[str] | None = None) -> dict[str, Path]:
    """Build what is missing or stale; return every reference of `names` (default: all) -> archive."""
    return {ref: IMAGES[name].archive for name, refs in ensure_named(names).items() for ref in refs}


def ensure_named(names: list[str] | None = None) -> dict[str, list[str]]:
    """Build what is missing or stale; return each image's references, its main one first.

    Use these rather than image_ref() after a build: the references are those of the archives just
    made, even if a source file changed meanwhile.
    """
    names = list(IMAGES) if names is None else names
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise ValueError(f"unknown image(s) {unknown}; known: {', '.join(IMAGES)}")
    started = time.monotonic()
    built = {name: _ensure_one(IMAGES[name]) for name in names}
    archives = {ref: IMAGES[name].archive for name, refs in built.items() for ref in refs}
    with _locked("index"):
        try:
            index = {k: Path(v) for k, v in json.loads(INDEX_FILE.read_text()).items()}
        except (OSError, ValueError):
            index = {}
        rebuilt = set(archives.values())
        index = {ref: path for ref, path in index.items() if path not in rebuilt and path.exists()}
        index.update(archives)
        write_atomic(INDEX_FILE, json.dumps({k: str(v) for k, v in sorted(index.items())}, indent=2) + "\n")
    log(f"{len(names)} images ready in {CACHE_DIR} ({time.monotonic() - started:.1f}s)")
    return built


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", help=f"images to build (default: all of {', '.join(IMAGES)})")
    parser.add_argument("--list", action="store_true", help="print every reference and its archive")
    args = parser.parse_args()
    try:
        archives = ensure(args.images or None)
    except (ImageBuildError, ValueError) as error:
        raise SystemExit(str(error)) from None
    if args.list:
        for ref, archive in archives.items():
            print(f"{ref}\t{archive}")


if __name__ == "__main__":
    main()
