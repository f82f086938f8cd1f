"""Tenant files are reached through directory descriptors that follow no link, on either kernel path.

Each test runs twice: with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), and with the O_NOFOLLOW
walk that kernels before 5.6 get.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path, PurePosixPath

import pytest

from cairn.node_agent.host import files
from cairn.node_agent.host.files import (
    FileChangedError,
    FileIdentity,
    NotRegularFileError,
    TenantDirectory,
    atomic_write_beneath,
    list_beneath,
    open_beneath,
    remove_tree_beneath,
)


@pytest.fixture(params=["openat2", "walk"], autouse=True)
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "walk":
        monkeypatch.setattr(files, "_openat2_works", False)
    return str(request.param)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    root = tmp_path / "volume"
    (root / "ckpt" / "step_1").mkdir(parents=True)
    (root / "ckpt" / "step_1" / "shard").write_bytes(b"tenant data")
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "shadow").write_bytes(b"HOST SECRET")
    return root


def test_a_regular_file_beneath_the_root_opens(volume: Path) -> None:
    with open_beneath(TenantDirectory(volume, PurePosixPath("ckpt")), "step_1/shard") as stream:
        assert stream.read() == b"tenant data"


@pytest.mark.parametrize("link", ["shard", "parent"])
def test_no_link_is_followed_on_the_way_or_at_the_end(volume: Path, link: str) -> None:
    step = volume / "ckpt" / "step_1"
    if link == "shard":
        (step / "shard").unlink()
        os.symlink(volume.parent / "host" / "shadow", step / "shard")
    else:
        os.rename(step, volume / "ckpt" / "moved")
        os.symlink(volume.parent / "host", step)
        os.symlink("shadow", volume.parent / "host" / "shard")
    with pytest.raises(OSError):
        open_beneath(volume, "ckpt/step_1/shard").close()


def test_a_fifo_is_refused_without_blocking(volume: Path) -> None:
    fifo = volume / "ckpt" / "step_1" / "shard"
    fifo.unlink()
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            open_beneath(volume, "ckpt/step_1/shard")
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        with open(fifo, "wb"):  # release the blocked open so the thread can end
            pass
        pytest.fail("opening a FIFO blocked")
    assert isinstance(outcome[0], NotRegularFileError)


def test_a_file_replaced_since_its_listing_is_refused(volume: Path) -> None:
    listing = list_beneath(volume, "ckpt")
    ((path, listed),) = listing.files
    assert path == "step_1/shard" and listed.size == len(b"tenant data")
    replacement = volume / "ckpt" / "step_1" / "new"
    replacement.write_bytes(b"other bytes")
    os.replace(replacement, volume / "ckpt" / "step_1" / "shard")
    with pytest.raises(FileChangedError, match="inode"):
        open_beneath(volume, "ckpt/step_1/shard", expect=listed)
    same = FileIdentity.of(os.stat(volume / "ckpt" / "step_1" / "shard"))
    open_beneath(volume, "ckpt/step_1/shard", expect=same).close()


def test_a_listing_reports_links_and_fifos_and_never_enters_them(volume: Path) -> None:
    step = volume / "ckpt" / "step_1"
    os.symlink(volume.parent / "host", step / "linked-dir")
    os.mkfifo(step / "pipe")
    listing = list_beneath(volume, "ckpt")
    assert [path for path, _ in listing.files] == ["step_1/shard"]
    assert sorted(listing.others) == [
        ("step_1/linked-dir", "a symlink"),
        ("step_1/pipe", "not a regular file"),
    ]


def test_removing_a_tree_whose_parent_became_a_link_touches_nothing_outside(volume: Path) -> None:
    host = volume.parent / "host"
    (host / "step_1").mkdir()
    (host / "step_1" / "keep").write_bytes(b"host file")
    os.rename(volume / "ckpt", volume / "ckpt-moved")
    os.symlink(host, volume / "ckpt")
    with pytest.raises(NotADirectoryError):
        remove_tree_beneath(volume, "ckpt/step_1")
    assert (host / "step_1" / "keep").read_bytes() == b"host file"
    with pytest.raises(NotADirectoryError):
        remove_tree_beneath(volume, "ckpt")  # the link itself is not a directory to remove
    assert (volume / "ckpt").is_symlink() and (host / "shadow").exists()


def test_removing_a_tree_deletes_links_inside_it_not_their_targets(volume: Path) -> None:
    os.symlink(volume.parent / "host", volume / "ckpt" / "step_1" / "out")
    remove_tree_beneath(TenantDirectory(volume, PurePosixPath("ckpt/step_1")))
    assert not (volume / "ckpt" / "step_1").exists()
    assert (volume.parent / "host" / "shadow").read_bytes() == b"HOST SECRET"
    remove_tree_beneath(volume, "ckpt/step_1")  # already gone: nothing to do


def test_writing_beside_a_checkpoint_refuses_a_linked_directory(volume: Path) -> None:
    atomic_write_beneath(volume, "ckpt/step_1/manifest.json", "{}")
    assert (volume / "ckpt" / "step_1" / "manifest.json").read_text() == "{}"
    os.rename(volume / "ckpt" / "step_1", volume / "ckpt" / "moved")
    os.symlink(volume.parent / "host", volume / "ckpt" / "step_1")
    with pytest.raises(NotADirectoryError):
        atomic_write_beneath(volume, "ckpt/step_1/manifest.json", "{}")
    assert sorted(os.listdir(volume.parent / "host")) == ["shadow"]
