"""The libtorrent adapter against real libtorrent sessions on loopback addresses (127.0.0.x, no root).

Every node listens on its own 127.0.0.x address (Linux routes all of 127/8 to lo), because the IP
filter and bans work per address, as they will between cluster nodes.
"""

from __future__ import annotations

import filecmp
import os
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cairn.node_agent.p2p.session import (
    MAX_PIECE_SIZE,
    MIN_PIECE_SIZE,
    TARGET_PIECES,
    HashFailed,
    PeerBanned,
    PeerBlocked,
    TorrentBuildError,
    TorrentEvent,
    TorrentFinished,
    TorrentMeta,
    TorrentNode,
    TorrentSessionError,
    lan_settings,
    make_torrent,
    piece_size_for,
)

KiB = 1024
MiB = 1024 * KiB
SEEDER, LEECHER, OTHER, ORIGIN = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"

pytestmark = pytest.mark.timeout(60)


def write_dataset(root: Path, files: dict[str, int]) -> None:
    for relative, size in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


NESTED = {
    "weights/shard-0.bin": 3 * MiB + 1234,
    "weights/shard-1.bin": 2 * MiB,
    "tokenizer/vocab/merges.txt": 70 * KiB + 5,
    "README": 17,
    "empty.marker": 0,
}


def same_tree(left: Path, right: Path) -> bool:
    names = sorted(p.relative_to(left) for p in left.rglob("*"))
    if names != sorted(p.relative_to(right) for p in right.rglob("*")):
        return False
    return all(filecmp.cmp(left / n, right / n, shallow=False) for n in names if (left / n).is_file())


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def finished(node: TorrentNode, info_hash: str) -> Callable[[], bool]:
    return lambda: node.status(info_hash).is_seeding


@pytest.fixture
def nodes() -> Iterator[Callable[[str], TorrentNode]]:
    started: list[TorrentNode] = []

    def start(address: str) -> TorrentNode:
        node = TorrentNode(address)
        started.append(node)
        return node

    yield start
    for node in started:
        node.close()


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, TorrentMeta]:
    root = tmp_path / "origin" / "llama-mini"
    write_dataset(root, NESTED)
    return root, make_torrent(root, 64 * KiB)


# -- pure parts ---------------------------------------------------------------------------------


def test_piece_size_grows_with_the_dataset_within_bounds() -> None:
    sizes = [0, 1, 100 * MiB, 512 * MiB, 512 * MiB + 1, 1 << 30, 10 << 30, 32 << 30, 1 << 40, 1 << 50]
    chosen = [piece_size_for(size) for size in sizes]
    assert chosen == sorted(chosen)
    assert all(MIN_PIECE_SIZE <= piece <= MAX_PIECE_SIZE and piece & (piece - 1) == 0 for piece in chosen)
    assert chosen[0] == MIN_PIECE_SIZE and chosen[-1] == MAX_PIECE_SIZE
    assert piece_size_for(2 << 30) == 256 * KiB and piece_size_for(8 << 30) == MiB  # 8192 pieces
    assert (10 << 30) // piece_size_for(10 << 30) <= TARGET_PIECES
    with pytest.raises(ValueError):
        piece_size_for(-1)


def test_lan_settings_are_tcp_only_plaintext_and_bound_to_one_address() -> None:
    settings = lan_settings("10.213.1.7", 6881)
    assert settings["listen_interfaces"] == "10.213.1.7:6881"
    assert settings["outgoing_interfaces"] == "10.213.1.7"
    assert lan_settings("fd00::7", 6881)["listen_interfaces"] == "[fd00::7]:6881"
    for off in ("enable_outgoing_utp", "enable_incoming_utp", "enable_dht", "enable_lsd", "enable_upnp"):
        assert settings[off] is False, off
    assert settings["enable_natpmp"] is False
    assert settings["in_enc_policy"] == settings["out_enc_policy"] == 2  # pe_disabled
    with pytest.raises(ValueError):
        lan_settings("node-1.cluster.local")


def test_same_files_make_the_same_torrent_and_one_changed_byte_another(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root, {"a/x.bin": 300 * KiB, "b.bin": 10})
    first, again = make_torrent(root), make_torrent(root)
    assert first.info_hash == again.info_hash and len(first.info_hash) == 64
    assert (first.total_bytes, first.file_count, first.piece_size) == (300 * KiB + 10, 2, MIN_PIECE_SIZE)
    with (root / "a/x.bin").open("r+b") as stream:
        stream.seek(1000)
        stream.write(b"\0" if stream.read(1) != b"\0" else b"\1")
    assert make_torrent(root).info_hash != first.info_hash


def test_links_and_bad_listings_are_refused_before_hashing(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root, {"real.bin": 100})
    with pytest.raises(TorrentBuildError, match="missing"):
        make_torrent(root, files=[("real.bin", 100), ("gone.bin", 5)])
    with pytest.raises(TorrentBuildError, match="listing says"):
        make_torrent(root, files=[("real.bin", 99)])
    with pytest.raises(TorrentBuildError, match="plain relative path"):
        make_torrent(root, files=[("../real.bin", 100)])
    (root / "link.bin").symlink_to(root / "real.bin")
    with pytest.raises(TorrentBuildError, match="not a regular file"):
        make_torrent(root)
    only_real = make_torrent(root, files=[("real.bin", 100)])
    assert only_real.file_count == 1


# -- real sessions ------------------------------------------------------------------------------


def test_a_node_refuses_to_start_on_a_taken_port_or_a_foreign_address(
    nodes: Callable[[str], TorrentNode],
) -> None:
    first = nodes(SEEDER)
    with pytest.raises(TorrentSessionError, match="could not listen"):
        TorrentNode(SEEDER, first.port)
    with pytest.raises(TorrentSessionError, match="could not listen"):
        TorrentNode("192.0.2.1")  # TEST-NET-1: on no interface of this machine


def test_leecher_gets_a_nested_dataset_byte_identical_from_a_seed_mode_seeder(
    tmp_path: Path, nodes: Callable[[str], TorrentNode], dataset: tuple[Path, TorrentMeta]
) -> None:
    origin, meta = dataset
    seeder, leecher = nodes(SEEDER), nodes(LEECHER)
    info_hash = seeder.seed(meta.torrent, origin, already_verified=True)
    assert seeder.status(info_hash).is_seeding  # no hash check first: seed_mode
    target = tmp_path / "node-b" / "volume"
    leecher.download(meta.torrent, target)
    leecher.add_peers(info_hash, [(SEEDER, seeder.port)])

    wait_for(finished(leecher, info_hash), 20, "the leecher finishing")
    leecher.flush(info_hash)
    status = leecher.status(info_hash)
    assert status.total_done == status.total_wanted == meta.total_bytes
    assert status.total_payload_download >= meta.total_bytes
    assert status.total_failed_bytes == 0 and status.errors == ()
    # The files sit at the root of the target, whatever the seeder's directory was called.
    assert same_tree(origin, target)
    assert TorrentFinished(info_hash) in leecher.poll_alerts()


def test_a_one_file_dataset_also_lands_at_the_root_of_the_target(
    tmp_path: Path, nodes: Callable[[str], TorrentNode]
) -> None:
    origin = tmp_path / "origin" / "single"
    write_dataset(origin, {"model.safetensors": 700 * KiB})
    meta = make_torrent(origin)
    seeder, leecher = nodes(SEEDER), nodes(LEECHER)
    info_hash = seeder.seed(meta.torrent, origin, already_verified=True)
    target = tmp_path / "volume"
    leecher.download(meta.torrent, target)
    leecher.add_peers(info_hash, [(SEEDER, seeder.port)])
    wait_for(finished(leecher, info_hash), 20, "the leecher finishing")
    leecher.flush(info_hash)
    assert same_tree(origin, target)


def test_a_seeder_that_must_verify_does_not_serve_damaged_data_as_complete(
    tmp_path: Path, nodes: Callable[[str], TorrentNode], dataset: tuple[Path, TorrentMeta]
) -> None:
    origin, meta = dataset
    with (origin / "weights/shard-1.bin").open("r+b") as stream:
        stream.seek(MiB)
        byte = stream.read(1)
        stream.seek(MiB)
        stream.write(bytes([byte[0] ^ 0xFF]))
    seeder = nodes(SEEDER)
    info_hash = seeder.seed(meta.torrent, origin, already_verified=False)
    checked = {"downloading", "finished", "seeding"}  # not queued or checking_resume_data either
    wait_for(lambda: seeder.status(info_hash).state in checked, 10, "the hash check ending")
    status = seeder.status(info_hash)
    assert not status.is_seeding
    # Exactly one 64 KiB piece is bad; everything else checked out.
    assert status.total_done == meta.total_bytes - 64 * KiB


def test_the_ip_filter_keeps_an_unlisted_peer_out_in_both_directions(
    tmp_path: Path, nodes: Callable[[str], TorrentNode], dataset: tuple[Path, TorrentMeta]
) -> None:
    origin, meta = dataset
    stranger, leecher = nodes(OTHER), nodes(LEECHER)
    info_hash = stranger.seed(meta.torrent, origin, already_verified=True)
    leecher.set_allowed_peers([SEEDER])  # not OTHER; and loopback is not special
    leecher.download(meta.torrent, tmp_path / "volume")
    leecher.add_peers(info_hash, [(OTHER, stranger.port)])
    stranger.add_peers(info_hash, [(LEECHER, leecher.port)])

    events: list[TorrentEvent] = []
    deadline = time.monotonic() + 3  # libtorrent tries to connect once a second
    while time.monotonic() < deadline:
        events += leecher.poll_alerts(0.1)
    assert leecher.status(info_hash).total_payload_download == 0
    assert stranger.status(info_hash).total_payload_upload == 0
    assert PeerBlocked(OTHER, "ip_filter") in events

    # Control: the same two sessions do transfer once the address is listed.
    leecher.set_allowed_peers([SEEDER, OTHER])
    leecher.add_peers(info_hash, [(OTHER, stranger.port)])
    wait_for(finished(leecher, info_hash), 20, "the leecher finishing once allowed")


def test_a_restarted_leecher_resumes_without_fetching_again_what_it_had(
    tmp_path: Path, nodes: Callable[[str], TorrentNode]
) -> None:
    origin = tmp_path / "origin" / "ds"
    write_dataset(origin, {"a.bin": 6 * MiB, "deep/b.bin": 2 * MiB})
    meta = make_torrent(origin, 64 * KiB)
    seeder = nodes(SEEDER)
    info_hash = seeder.seed(meta.torrent, origin, already_verified=True)
    target = tmp_path / "volume"

    first = TorrentNode(LEECHER)
    # As in the agent, a poller thread drains alerts while resume data is asked for.
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            first.poll_alerts(0.05)

    poller = threading.Thread(target=poll)
    try:
        first.download(meta.torrent, target)
        first.limit(info_hash, download=4 * MiB)  # slow enough to stop it half way
        first.add_peers(info_hash, [(SEEDER, seeder.port)])
        poller.start()
        wait_for(lambda: first.status(info_hash).progress >= 0.4, 20, "the first run getting 40%")
        from_seeder = first.peer_bytes(info_hash)[SEEDER]
        assert from_seeder.downloaded > 0 and not from_seeder.web_seed
        resume = first.save_resume(info_hash)
        had = first.status(info_hash).total_done  # at least what the resume data names
    finally:
        stop.set()
        if poller.is_alive():
            poller.join()
        first.close()
    assert 0.4 * meta.total_bytes <= had < meta.total_bytes

    second = nodes(LEECHER)
    second.download(meta.torrent, target, resume_data=resume)
    wait_for(lambda: second.status(info_hash).state == "downloading", 10, "the resumed torrent starting")
    resumed = second.status(info_hash)
    assert resumed.total_payload_download == 0
    assert resumed.total_done >= 0.9 * had  # known from resume data alone, before any peer
    second.add_peers(info_hash, [(SEEDER, seeder.port)])
    wait_for(finished(second, info_hash), 20, "the second run finishing")
    second.flush(info_hash)
    fetched_again = second.status(info_hash).total_payload_download - (meta.total_bytes - had)
    assert fetched_again <= 0.1 * had, f"re-fetched {fetched_again} of the {had} bytes it had"
    assert same_tree(origin, target)


def test_resume_data_of_another_torrent_is_refused(
    tmp_path: Path, nodes: Callable[[str], TorrentNode], dataset: tuple[Path, TorrentMeta]
) -> None:
    origin, meta = dataset
    node = nodes(LEECHER)
    info_hash = node.seed(meta.torrent, origin, already_verified=True)
    resume = node.save_resume(info_hash)
    other_root = tmp_path / "other"
    write_dataset(other_root, {"x.bin": 1000})
    other = make_torrent(other_root)
    with pytest.raises(TorrentSessionError, match="resume data is for torrent"):
        node.download(other.torrent, tmp_path / "volume", resume_data=resume)


def test_a_peer_serving_corrupt_data_is_banned_and_the_download_completes_from_the_good_one(
    tmp_path: Path, nodes: Callable[[str], TorrentNode], dataset: tuple[Path, TorrentMeta]
) -> None:
    origin, meta = dataset
    corrupt = tmp_path / "corrupt-copy"
    _corrupt_copy(origin, corrupt)
    good, bad, leecher = nodes(SEEDER), nodes(OTHER), nodes(LEECHER)
    info_hash = good.seed(meta.torrent, origin, already_verified=True)
    # seed_mode with every piece marked verified: the bad seeder never notices its own damage.
    bad.seed(meta.torrent, corrupt, already_verified=True)
    good.limit(info_hash, upload=2 * MiB)  # so the fast bad peer gets to serve some blocks
    target = tmp_path / "volume"
    leecher.download(meta.torrent, target)
    leecher.add_peers(info_hash, [(OTHER, bad.port), (SEEDER, good.port)])

    events: list[TorrentEvent] = []
    deadline = time.monotonic() + 30
    while not leecher.status(info_hash).is_seeding:
        assert time.monotonic() < deadline, f"no completion; events so far {events[:10]}"
        events += leecher.poll_alerts(0.05)
    leecher.flush(info_hash)
    events += leecher.poll_alerts()

    assert any(isinstance(event, HashFailed) for event in events)
    banned = {event.ip for event in events if isinstance(event, PeerBanned)}
    assert banned == {OTHER}
    assert leecher.status(info_hash).total_failed_bytes > 0
    assert same_tree(origin, target)


def _corrupt_copy(origin: Path, copy_root: Path) -> None:
    for path in origin.rglob("*"):
        if path.is_file():
            copy = copy_root / path.relative_to(origin)
            copy.parent.mkdir(parents=True, exist_ok=True)
            data = bytearray(path.read_bytes())
            for offset in range(100, len(data), 16 * KiB):  # one flipped byte in every block
                data[offset] ^= 0xFF
            copy.write_bytes(bytes(data))


def test_a_banned_address_is_forgiven_and_the_download_completes_from_it(
    tmp_path: Path, nodes: Callable[[str], TorrentNode], dataset: tuple[Path, TorrentMeta]
) -> None:
    """libtorrent sometimes bans a good peer beside a corrupt one; a ban must not strand a download.

    Made deterministic here: the only peer serves corrupt data and is banned, then a good seeder
    takes its address, as a wrongly banned good peer would be.
    """
    origin, meta = dataset
    corrupt = tmp_path / "corrupt-copy"
    _corrupt_copy(origin, corrupt)
    bad, leecher = nodes(OTHER), nodes(LEECHER)
    info_hash = bad.seed(meta.torrent, corrupt, already_verified=True)
    leecher.download(meta.torrent, tmp_path / "volume")
    leecher.limit(info_hash, download=8 * MiB)  # the limit must outlive the rejoin
    leecher.add_peers(info_hash, [(OTHER, bad.port)])
    events: list[TorrentEvent] = []
    wait_for(
        lambda: bool(
            events.extend(leecher.poll_alerts(0.05)) or any(isinstance(e, PeerBanned) for e in events)
        ),
        30,
        "a ban",
    )
    bad.close()
    # A few blocks the corrupt copy left intact (the tails of small files) may have been kept.
    held = leecher.status(info_hash).total_done
    good = nodes(OTHER)
    good.seed(meta.torrent, origin, already_verified=True)
    leecher.add_peers(info_hash, [(OTHER, good.port)])
    time.sleep(3)
    assert leecher.status(info_hash).total_done == held, "a banned address was let back in"

    leecher.forgive_peers(info_hash)
    leecher.add_peers(info_hash, [(OTHER, good.port)])

    wait_for(finished(leecher, info_hash), 30, "the download from the forgiven address")
    leecher.flush(info_hash)
    assert same_tree(origin, tmp_path / "volume")
    assert leecher._handle(info_hash).download_limit() == 8 * MiB


class _RangeServer(BaseHTTPRequestHandler):
    """A static origin that honours Range, as S3 and any web server a web seed points at do."""

    root: Path
    asked: list[str]

    def do_GET(self) -> None:
        self.asked.append(self.path)
        path = (self.root / self.path.lstrip("/")).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        data = path.read_bytes()
        first, last = 0, len(data) - 1
        if ranged := self.headers.get("Range"):
            start, _, end = ranged.removeprefix("bytes=").partition("-")
            first, last = int(start), int(end) if end else len(data) - 1
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        else:
            self.send_response(HTTPStatus.OK)
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        self.wfile.write(data[first : last + 1])

    def log_message(self, *_: object) -> None:
        pass


@pytest.mark.parametrize("files", [NESTED, {"only.bin": 900 * KiB}], ids=["several-files", "one-file"])
def test_an_http_web_seed_alone_fills_the_target_from_the_original_paths(
    tmp_path: Path, nodes: Callable[[str], TorrentNode], files: dict[str, int]
) -> None:
    served = tmp_path / "www"
    origin = served / "datasets" / "mini"
    write_dataset(origin, files)
    asked: list[str] = []
    handler = type("Handler", (_RangeServer,), {"root": served.resolve(), "asked": asked})
    server = ThreadingHTTPServer((ORIGIN, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://{ORIGIN}:{server.server_port}/datasets/"
        meta = make_torrent(origin, web_seeds=[base if len(files) > 1 else base + "mini/"])
        leecher = nodes(LEECHER)
        info_hash = leecher.download(meta.torrent, tmp_path / "volume")
        wait_for(finished(leecher, info_hash), 20, "the download from the web seed")
        leecher.flush(info_hash)
    finally:
        server.shutdown()
        server.server_close()
    assert same_tree(origin, tmp_path / "volume")
    # The local rename to the target's root did not change what was asked of the origin.
    assert set(asked) == {f"/datasets/mini/{name}" for name in files if files[name]}
