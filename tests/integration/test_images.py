"""tools/build_images.py: hand-packed archives, their cache, and the cairn build context's digest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tools import build_images, build_tools
from tools.build_images import PATH_ENV, base_files, busybox_files, file_entry, pack_image


def read_archive(
    archive: Path,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, tarfile.TarInfo], dict[str, bytes]]:
    """Check the docker-archive's digests against its files; return manifest, config and layer members."""
    with tarfile.open(archive) as outer:
        blobs = {m.name: outer.extractfile(m).read() for m in outer.getmembers() if m.isfile()}  # type: ignore[union-attr]
    (manifest,) = json.loads(blobs["manifest.json"])
    config_bytes = blobs[manifest["Config"]]
    assert manifest["Config"] == f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    config = json.loads(config_bytes)
    diff_ids = []
    for name in manifest["Layers"]:
        digest = hashlib.sha256(blobs[name]).hexdigest()
        assert name == f"{digest}/layer.tar"
        diff_ids.append(f"sha256:{digest}")
    assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
    assert config["os"] == "linux" and config["architecture"]
    (layer_name,) = manifest["Layers"]
    with tarfile.open(fileobj=io.BytesIO(blobs[layer_name])) as layer:
        members = {m.name: m for m in layer.getmembers()}
        contents = {m.name: layer.extractfile(m).read() for m in members.values() if m.isfile()}  # type: ignore[union-attr]
    return manifest, config, members, contents


def fake_binary(path: Path, text: str = "#!/bin/sh\necho fake\n") -> Path:
    path.write_text(text)
    path.chmod(0o700)  # the image's mode must not depend on the file's
    return path


def test_packed_image_has_digests_names_and_a_sane_root(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path / "testbed-pause")
    refs = ["localhost/cairn-testbed/pause:abc123"]
    files = {**base_files(), "/testbed-pause": file_entry(binary, 0o755)}
    archive = pack_image(
        refs, files, {"Entrypoint": ["/testbed-pause"], "Env": [PATH_ENV]}, tmp_path / "p.tar"
    )

    manifest, config, members, layer = read_archive(archive)
    assert manifest["RepoTags"] == refs
    assert config["config"]["Entrypoint"] == ["/testbed-pause"]
    assert set(members) == {"etc", "etc/passwd", "etc/group", "tmp", "testbed-pause"}
    binary_member = members["testbed-pause"]
    assert binary_member.isfile() and binary_member.mode == 0o755
    assert layer["testbed-pause"] == binary.read_bytes()
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 and not m.uname for m in members.values())
    passwd, group = layer["etc/passwd"].decode(), layer["etc/group"].decode()
    assert [line.split(":")[2] for line in passwd.splitlines()] == ["0", "65534"]
    assert [line.split(":")[2] for line in group.splitlines()] == ["0", "65534"]


def test_packing_is_reproducible(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path / "bin")
    files = {**base_files(), "/usr/local/bin/x": file_entry(binary, 0o755)}
    first = pack_image(["localhost/x:1"], files, {"Entrypoint": ["/usr/local/bin/x"]}, tmp_path / "a.tar")
    os.utime(binary, (1, 1))
    second = pack_image(["localhost/x:1"], files, {"Entrypoint": ["/usr/local/bin/x"]}, tmp_path / "b.tar")
    assert first.read_bytes() == second.read_bytes()
    _, _, members, _ = read_archive(first)
    assert {"usr", "usr/local", "usr/local/bin"} <= set(members)  # parents are made


def test_busybox_layer_has_every_applet_as_a_symlink(tmp_path: Path) -> None:
    applets = ["/bin/sh", "/bin/busybox", "/usr/bin/awk", "/sbin/ifconfig", "/bin/sh"]
    busybox = fake_binary(
        tmp_path / "busybox", "#!/bin/sh\nprintf '%s\\n' " + " ".join(a[1:] for a in applets)
    )
    refs = ["localhost/cairn-testbed/busybox:1.35", "example.test/e2e-test-images/busybox:1.37.0-1"]
    archive = pack_image(
        refs, busybox_files(busybox), {"Cmd": ["sh"], "Env": [PATH_ENV]}, tmp_path / "bb.tar"
    )

    manifest, _, members, _ = read_archive(archive)
    assert manifest["RepoTags"] == refs
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode == 0o755
    for applet in ("bin/sh", "usr/bin/awk", "sbin/ifconfig"):
        assert members[applet].issym() and members[applet].linkname == "/bin/busybox"
    assert members["tmp"].mode == 0o1777 and "etc/passwd" in members


@pytest.fixture
def image_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private image cache and tools bin dir, with every Go tool taken as built."""
    cache, bin_dir = tmp_path / "images", tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setattr(build_images, "CACHE_DIR", cache)
    monkeypatch.setattr(build_images, "INDEX_FILE", cache / "index.json")
    monkeypatch.setattr(build_tools, "BIN_DIR", bin_dir)
    monkeypatch.setattr(build_tools, "is_cached", lambda tool: True)
    return bin_dir


def test_binary_images_are_tagged_by_digest_cached_and_indexed(image_cache: Path) -> None:
    binary = fake_binary(image_cache / "testbed-pause")
    ref = f"localhost/cairn-testbed/pause:{hashlib.sha256(binary.read_bytes()).hexdigest()[:12]}"
    assert build_images.image_ref("pause") == ref

    archives = build_images.ensure(["pause"])
    assert list(archives) == [ref]
    archive = archives[ref]
    built = archive.stat().st_mtime_ns
    index = json.loads(build_images.INDEX_FILE.read_text())
    assert index == {ref: str(archive)}
    assert build_images.ensure(["pause"]) == archives
    assert archive.stat().st_mtime_ns == built  # warm: nothing repacked

    fake_binary(binary, "#!/bin/sh\necho changed\n")
    (new_ref,) = build_images.ensure(["pause"])
    assert new_ref != ref
    assert json.loads(build_images.INDEX_FILE.read_text()) == {new_ref: str(archive)}
    stamp = json.loads(build_images.IMAGES["pause"].stamp.read_text())
    assert (
        stamp["refs"] == [new_ref]
        and stamp["inputs"]["sha256"] == hashlib.sha256(binary.read_bytes()).hexdigest()
    )


def test_fixed_tags_stay_when_the_binary_changes(image_cache: Path) -> None:
    fake_binary(image_cache / "csi-provisioner")
    assert build_images.image_ref("csi-provisioner") == "localhost/cairn-testbed/csi-provisioner:v6.3.0"
    first = build_images.ensure(["csi-provisioner"])
    fake_binary(image_cache / "csi-provisioner", "#!/bin/sh\necho v2\n")
    second = build_images.ensure(["csi-provisioner"])
    assert list(first) == list(second) == ["localhost/cairn-testbed/csi-provisioner:v6.3.0"]
    _, _, _, layer = read_archive(second["localhost/cairn-testbed/csi-provisioner:v6.3.0"])
    assert layer["csi-provisioner"] == b"#!/bin/sh\necho v2\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_build_context_digest_follows_sources_not_ignored_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "Dockerfile").write_text("FROM scratch\n")
    (repo / ".gitignore").write_text(".cache/\n")
    (repo / ".dockerignore").write_text(".cache\ncsi/proto\n**/__pycache__\n")
    (repo / "src" / "a.py").write_text("A = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    (repo / "src" / "untracked.py").write_text("B = 2\n")  # not ignored: part of the context
    digest = build_images.context_digest(repo)
    assert build_images.context_files(repo) == [
        ".dockerignore",
        ".gitignore",
        "Dockerfile",
        "src/a.py",
        "src/untracked.py",
    ]

    (repo / ".cache" / "images").mkdir(parents=True)
    (repo / ".cache" / "images" / "cairn.tar").write_text("git-ignored")
    (repo / "src" / "__pycache__").mkdir()
    (repo / "src" / "__pycache__" / "a.pyc").write_text("docker-ignored")
    (repo / "csi" / "proto").mkdir(parents=True)
    (repo / "csi" / "proto" / "csi_pb2.py").write_text("generated")
    assert build_images.context_digest(repo) == digest

    (repo / "src" / "a.py").write_text("A = 2\n")
    changed = build_images.context_digest(repo)
    assert changed != digest
    (repo / "src" / "a.py").chmod(0o755)
    assert build_images.context_digest(repo) != changed
    (repo / "Dockerfile").write_text("FROM scratch\nENV X=1\n")
    assert build_images.context_digest(repo) not in (digest, changed)


def test_the_staged_context_is_exactly_the_hashed_files(tmp_path: Path) -> None:
    repo, staged = tmp_path / "repo", tmp_path / "staged"
    (repo / "deploy" / "crds").mkdir(parents=True)
    (repo / "deploy" / "crds" / "a.yaml").write_text("kind: CustomResourceDefinition\n")
    (repo / "chart").symlink_to("deploy/crds")
    (repo / ".dockerignore").write_text("bench/results\n")
    (repo / "bench" / "results").mkdir(parents=True)
    (repo / "bench" / "results" / "run.json").write_text("{}")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    staged.mkdir()
    build_images.stage_context(repo, staged)
    copied = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file() or p.is_symlink())
    assert copied == build_images.context_files(repo) == [".dockerignore", "chart", "deploy/crds/a.yaml"]
    assert (staged / "chart").is_symlink() and os.readlink(staged / "chart") == "deploy/crds"


def test_dockerignore_rules_follow_docker(tmp_path: Path) -> None:
    ignore = tmp_path / ".dockerignore"
    patterns = ["# comment", ".git", ".cache", "csi/proto", "**/__pycache__", "*.egg-info", "tools"]
    ignore.write_text("\n".join([*patterns, "!tools/gen_csi_stubs.py", "/docs/*.md", ""]))
    rules = build_images.dockerignore_rules(ignore)
    ignored = [
        ".cache/images/cairn.tar",
        "csi/proto/csi_pb2.py",
        "node-agent/__pycache__/x.pyc",
        "__pycache__/y",
    ]
    ignored += [".git", "cairn.egg-info/PKG-INFO", "tools/build_images.py", "docs/a.md"]
    for name in ignored:
        assert build_images.is_ignored(name, rules), name
    kept = [
        "tools/gen_csi_stubs.py",
        "Dockerfile",
        "csi/server.py",
        "api/x.egg-info/y",
        "docs/sub/b.md",
        "mytools",
    ]
    for name in kept:
        assert not build_images.is_ignored(name, rules), name


@pytest.mark.root
def test_buildah_imports_a_packed_archive_under_its_names(tmp_path: Path) -> None:
    """c/image (buildah's docker-archive reader, like containerd's) takes the archive and its RepoTags."""
    if shutil.which("buildah") is None:
        pytest.fail("buildah is missing: run tools/install_system_deps.sh")
    binary = fake_binary(tmp_path / "tool")
    refs = ["localhost/cairn-testbed/tool:t1", "localhost/cairn-testbed/tool-alias:t2"]
    files = {**base_files(), "/tool": file_entry(binary, 0o755)}
    archive = pack_image(refs, files, {"Entrypoint": ["/tool"], "Env": [PATH_ENV]}, tmp_path / "tool.tar")
    storage = [
        "--root",
        str(tmp_path / "root"),
        "--runroot",
        str(tmp_path / "run"),
        "--storage-driver",
        "vfs",
    ]
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    subprocess.run(
        ["buildah", *storage, "pull", "--signature-policy", str(policy), f"docker-archive:{archive}"],
        check=True,
        capture_output=True,
    )
    listed = subprocess.run(
        ["buildah", *storage, "images", "--format", "{{.Name}}:{{.Tag}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert sorted(listed) == sorted(refs)
    inspected = subprocess.run(
        ["buildah", *storage, "inspect", "--type", "image", refs[0]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(inspected)["Docker"]["config"]["Entrypoint"] == ["/tool"]
