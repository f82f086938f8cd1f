"""The node agent's libtorrent adapter: the only module that imports libtorrent.

Datasets move between nodes as BitTorrent v2 torrents (SHA-256 Merkle trees, BEP 52). This module
builds the metadata (`make_torrent`), chooses its piece size (`piece_size_for`), holds the session
settings for a cluster LAN (`lan_settings`) and wraps one session bound to one address
(`TorrentNode`). Everything Kubernetes-facing sits above it and sees only plain data: bytes,
hex info-hashes, (ip, port) pairs and the small dataclasses below.

Measured here (2-core VM shared with other jobs, so ±15% run to run): one file over loopback between
two sessions in one process, page-cached source, clock from the first payload byte to the fsync;
`python -m bench.p2p_loopback` and interleaved A/B runs of it, medians.
  - libtorrent defaults (DHT/LSD/UPnP off): 33 MB/s for 200 MB;
  - `lan_settings` (high_performance_seed, TCP only, plaintext): 590 MB/s for 200 MB, 660-820 MB/s for
    500 MB; `cp` of the same file 1600-2100 MB/s.
  - Seeder in seed_mode but re-hashing each piece on first request: 348 MB/s, twice the CPU; hence
    `seed(already_verified=True)` marks every piece verified.
  - No other knob moved the median past the noise: aio_threads 2/4/8, hashing_threads 0/1/2/4,
    max_queued_disk_bytes 7/32/64/100 MB, send_buffer_watermark 3/8/16 MB, 4 MB socket buffers,
    disk_write_mode pwrite/mmap/auto, network_threads 2, low_prio_disk off, allow_partial_disk_writes
    off, max_out_request_queue 500, request_queue_time 10 (all 640-800 MB/s against a 660-740 base).
    Worse: disk_io_write_mode write_through (400-460) and disable_os_cache (420): they write through
    to the device piece by piece instead of once at the end.
  - The transfer is CPU-bound: ~1.85 CPU-s per GB across both sessions, 38% of it SHA-256 (SHA-NI)
    on the downloader, which checks every byte; `cp` needs ~0.3 CPU-s per GB.
  - Piece size: 256 KiB-1 MiB 570-700 MB/s; 2, 4 and 16 MiB 300-570 MB/s and erratic (see
    `piece_size_for`).
The figures above are plaintext. The agent's sessions run `tls=True`: every dataset torrent is an SSL
torrent (`make_torrent(root_certificate=)`), each peer presenting a certificate its dataset's CA signed.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import libtorrent as lt

from cairn.node_agent.host.priority import YIELDING_NICENESS, set_niceness, unnamed_native_threads
from cairn.units import KiB, MiB

MIN_PIECE_SIZE = 256 * KiB
MAX_PIECE_SIZE = 16 * MiB
TARGET_PIECES = 8192
"""Most pieces a dataset gets below the 16 MiB cap; see `piece_size_for`."""

SettingValue = str | int | bool

FFDHE2048 = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""
"""RFC 7919's ffdhe2048 group: libtorrent insists on DH parameters for an SSL torrent's context
(and fails the torrent without them), though TLS 1.3 peers agree keys with ECDHE."""


def lan_settings(listen_address: str, port: int = 0, *, tls: bool = False) -> dict[str, SettingValue]:
    """Session settings for peers on one cluster LAN that trust each other's network, not their data.

    `port` 0 lets the kernel choose (read it back from `TorrentNode.port`). With `tls` the one listen
    socket is libtorrent's SSL one, for SSL torrents only. Pure: no session needed.
    """
    address = ipaddress.ip_address(listen_address)
    host = f"[{address}]" if address.version == 6 else str(address)
    # libtorrent's stubs type a settings_pack's values as object; they are str, int or bool.
    settings: dict[str, SettingValue] = dict(lt.high_performance_seed())  # type: ignore[arg-type]
    settings.update(
        {
            # One interface for listening and for connecting out: peers filter by the StorageNode
            # address, so a connection leaving from another interface (a pod network, a second NIC)
            # would be refused by them.
            "listen_interfaces": f"{host}:{port}{'s' if tls else ''}",
            "outgoing_interfaces": str(address),
            # uTP yields to any queueing delay (LEDBAT) and runs its congestion control in user space,
            # packet by packet; the defaults, uTP included, moved 10-33 MB/s here. Inside a cluster
            # the kernel's TCP is both faster and the fair neighbour.
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "enable_outgoing_tcp": True,
            "enable_incoming_tcp": True,
            # Peers come from the StorageNode/Dataset directory, never from the outside world.
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            # RC4 obfuscation costs CPU and hides nothing on a LAN; the data is verified by hash.
            "out_enc_policy": int(lt.enc_policy.disabled),
            "in_enc_policy": int(lt.enc_policy.disabled),
            "allowed_enc_level": 1,  # plaintext
            "alert_mask": int(
                lt.alert_category.error
                | lt.alert_category.status  # hash failures, torrent finished/checked
                | lt.alert_category.storage  # resume data, file errors
                | lt.alert_category.peer  # peer bans and disconnects
                | lt.alert_category.ip_block  # connections the IP filter refused
            ),
            # A node runs few datasets at once and every one of them must move: no queueing.
            "active_downloads": -1,
            "active_seeds": -1,
            "active_limit": -1,
            # A seeder that answers every leecher's request sends the same piece several times over
            # its one uplink. Short request queues and no piece suggestions make leechers spread
            # out and trade among themselves: in bench.p2p_seed (8 nodes, shaped links) the
            # swarm phase fell from 35-42 s to 29 s and the seeder's upload from 1.5-1.9x to 1.27x.
            "request_queue_time": 1,
            "suggest_mode": 0,
            # A dataset swarm is at most a few hundred nodes: one connection to each is plenty.
            "connections_limit": 1000,
            "unchoke_slots_limit": -1,
            # Nobody here is a stranger: no anti-leech choking, seed whoever asks fastest.
            "choking_algorithm": 0,  # fixed slots (all, since unlimited)
            "seed_choking_algorithm": 1,  # fastest upload
            # Seconds-long timeouts are for the internet; a silent LAN peer is dead or overloaded.
            "peer_connect_timeout": 3,
            "min_reconnect_time": 1,
            # A dropped connection to a restarted node must be retried, not written off.
            "max_failcount": 10,
            # Room for a burst of hash failures and bans between two polls: a dropped alert is a
            # ban nobody hears of.
            "alert_queue_size": 10000,
        }
    )
    return settings


DISK_IO_BACKENDS = ("default", "mmap", "pread", "posix")
"""libtorrent's disk back ends (the bindings fall back to the default for any other name)."""
DISK_IO = "default"


def setting_names() -> frozenset[str]:
    """Every session setting libtorrent knows, for checking an override before a session starts."""
    return frozenset(lt.default_settings())


def piece_size_for(total_bytes: int) -> int:
    """The v2 piece size for a dataset of `total_bytes`: at most 8192 pieces, 256 KiB to 16 MiB.

    Policy: the smallest power of two p >= 256 KiB with total_bytes / p <= 8192, capped at 16 MiB.
    Up to 2 GiB that is 256 KiB, 8 GiB gets 1 MiB, 32 GiB 4 MiB, 128 GiB and more 16 MiB.

    Why: small pieces moved fastest here (256 KiB-1 MiB 570-700 MB/s on loopback; 2-16 MiB 300-570
    and erratic: a piece is checked and flushed only when all of it has arrived), so pieces stay
    small until the metadata would grow past ~256 KiB: it carries one 32-byte SHA-256 per piece
    (the piece layers) and every agent must fetch it. Past 128 GiB the cap lets it grow instead
    (1 TiB: 2 MiB of hashes), because bigger pieces also stretch what a restarted peer may fetch
    again for a half-written piece and the wait for the last one. The 256 KiB floor keeps per-piece
    work (one disk job, one hash-tree check, one HAVE to every peer) from dominating. A bad block
    costs little at any size: v2 checks 16 KiB blocks against the Merkle tree, so only the blocks
    of the peer that sent it are fetched again.
    """
    if total_bytes < 0:
        raise ValueError(f"a dataset cannot be {total_bytes} bytes")
    size = MIN_PIECE_SIZE
    while size < MAX_PIECE_SIZE and size * TARGET_PIECES < total_bytes:
        size *= 2
    return size


@dataclass(frozen=True)
class TorrentMeta:
    """A built torrent. On every node its files live at `<data_dir>/<relative path>`."""

    torrent: bytes
    """Bencoded .torrent, piece layers included, so a node can verify every piece without asking."""
    info_hash: str
    """v2 info-hash: SHA-256 of the info dictionary, 64 hex digits."""
    name: str
    total_bytes: int
    file_count: int
    piece_size: int


class TorrentBuildError(ValueError):
    """The directory cannot become a torrent as it is (the message says what to change)."""


def make_torrent(
    root: Path,
    piece_size: int | None = None,
    *,
    files: Sequence[tuple[str, int]] | None = None,
    web_seeds: Iterable[str] = (),
    root_certificate: str | None = None,
) -> TorrentMeta:
    """Hash the files under `root` once and return a v2-only torrent named after `root`.

    `files` lists (relative POSIX path, size) to include, e.g. what the origin listed and the caller
    already checked; the default is every regular file under `root`, walked without following
    links. Each listed file must exist with that size. `piece_size` defaults to `piece_size_for`.

    `web_seeds` are BEP 19 base URLs ending in '/'. libtorrent asks for `<url><name>/<path>` when
    the torrent has several files but `<url><file name>` when it has one (a one-file torrent has no
    directory), so pass the URL of `root`'s parent for a directory of several files and the URL of
    `root` itself for a single file.

    `root_certificate` (a CA's PEM) makes it an SSL torrent: its peers talk only over TLS, each
    presenting a certificate that CA signed (`TorrentNode.set_certificate`). It is part of the
    info dictionary, so of the info-hash.

    v2-only, not hybrid: v2 gives each file its own Merkle root (a file is identified by its
    content, and a bad 16 KiB block is pinned on the peer that sent it) and starts every file on a
    piece boundary without listing BEP 47 pad files. Hybrid would add SHA-1 piece hashes and pad
    entries for the sake of v1-only clients, and none ever joins a Cairn swarm.
    """
    root = Path(root)
    if not root.is_dir():
        raise TorrentBuildError(f"{root} is not a directory; a dataset torrent is built from one")
    entries = _checked_files(root, files) if files is not None else _walk_files(root)
    if not entries:
        raise TorrentBuildError(f"{root} holds no files; a torrent needs at least one")
    total = sum(size for _, size in entries)
    piece_size = piece_size or piece_size_for(total)
    if piece_size < 16 * KiB or piece_size & (piece_size - 1):
        raise TorrentBuildError(f"piece size {piece_size} is not a power of two of at least 16 KiB")
    # Sorted paths: the v2 file tree is a dictionary, so this is the order it has on the wire anyway,
    # and the same directory always yields the same bytes and info-hash.
    listing = [lt.create_file_entry(f"{root.name}/{path}", size) for path, size in sorted(entries)]
    creator = lt.create_torrent(listing, piece_size, lt.create_torrent.v2_only)
    # Private: no peer exchange. Nodes learn peers only from the agent (StorageNode addresses), so
    # which node talks to which for each part stays the agent's choice (see datasets/parts.py).
    creator.set_priv(True)
    if root_certificate is not None:
        creator.set_root_cert(root_certificate)
    for url in web_seeds:
        creator.add_url_seed(url)
    lt.set_piece_hashes(creator, str(root.parent))
    torrent = lt.bencode(creator.generate())
    info = lt.torrent_info(torrent)
    return TorrentMeta(
        torrent=torrent,
        info_hash=str(info.info_hashes().v2),
        name=info.name(),
        total_bytes=total,
        file_count=len(entries),
        piece_size=piece_size,
    )


def _walk_files(root: Path) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for directory, subdirectories, names in os.walk(root, followlinks=False):
        for name in (*names, *subdirectories):
            path = Path(directory, name)
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise TorrentBuildError(
                    f"{path} is not a regular file (links and devices cannot be part of a dataset); "
                    "remove it or list the files to include"
                )
            found.append((path.relative_to(root).as_posix(), path.lstat().st_size))
    return found


def _checked_files(root: Path, files: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    checked: list[tuple[str, int]] = []
    for relative, size in files:
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts or str(pure) != relative:
            raise TorrentBuildError(f"{relative!r} is not a plain relative path inside the dataset")
        path = root / pure
        try:
            info = path.lstat()
        except FileNotFoundError:
            raise TorrentBuildError(f"{path} is listed but missing; write it before hashing") from None
        if not stat.S_ISREG(info.st_mode):
            raise TorrentBuildError(f"{path} is not a regular file; links and devices cannot be hashed")
        if info.st_size != size:
            raise TorrentBuildError(f"{path} has {info.st_size} bytes, the listing says {size}")
        checked.append((relative, size))
    return checked


@dataclass(frozen=True)
class TransferStatus:
    progress: float
    """0..1 of the wanted bytes held and verified."""
    total_done: int
    total_wanted: int
    download_rate: int
    """Payload bytes per second, averaged by libtorrent over the last few seconds."""
    upload_rate: int
    num_peers: int
    state: str
    """libtorrent's state name: checking_files, downloading, finished, seeding, ..."""
    is_seeding: bool
    total_payload_download: int
    """Payload bytes received since the torrent was added to this session (not across restarts)."""
    total_payload_upload: int
    total_failed_bytes: int
    """Bytes received that failed their hash check."""
    total_redundant_bytes: int
    """Bytes received more than once (the same block from two peers, as at the end of a download)."""
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class PeerBytes:
    downloaded: int
    """Payload bytes received from this address over its live connections."""
    uploaded: int
    web_seed: bool
    """The address is an HTTP web seed (the origin), not a Cairn peer."""


@dataclass(frozen=True)
class HashFailed:
    info_hash: str
    piece: int


@dataclass(frozen=True)
class PeerBanned:
    info_hash: str
    ip: str
    port: int


@dataclass(frozen=True)
class PeerBlocked:
    """The IP filter (or another local rule) refused a connection to or from `ip`."""

    ip: str
    reason: str


@dataclass(frozen=True)
class TorrentFailed:
    info_hash: str
    message: str


@dataclass(frozen=True)
class FileFailed:
    info_hash: str
    path: str
    operation: str
    message: str


@dataclass(frozen=True)
class TorrentFinished:
    info_hash: str


TorrentEvent = HashFailed | PeerBanned | PeerBlocked | TorrentFailed | FileFailed | TorrentFinished


class TorrentSessionError(RuntimeError):
    pass


@dataclass(eq=False)  # each wait is its own; found and removed by identity
class _Wait:
    """One caller waiting for libtorrent's answer (an alert) about one torrent."""

    data: bytes | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class TorrentNode:
    """One libtorrent session bound to one address, holding any number of dataset torrents.

    Torrents are keyed by their v2 info-hash (hex). Safe for one alert poller thread plus callers:
    a lock serialises the session, because popping alerts invalidates the previous batch, and
    `flush`/`save_resume` must see their own alerts even while a poller drains the queue.
    """

    def __init__(
        self,
        listen_address: str,
        port: int = 0,
        *,
        tls: bool = False,
        overrides: Mapping[str, SettingValue] | None = None,
        disk_io: str = DISK_IO,
    ) -> None:
        settings = lan_settings(listen_address, port, tls=tls)
        settings.update(overrides or {})
        self.address = listen_address
        self.tls = tls
        self._lock = threading.RLock()
        if disk_io not in DISK_IO_BACKENDS:
            raise ValueError(f"disk I/O {disk_io!r} is not one of {', '.join(DISK_IO_BACKENDS)}")
        # The bindings take a plain dict of settings; the stubs know only settings_pack.
        params: Any = lt.session_params(settings)  # type: ignore[call-overload]
        params.disk_io_constructor = f"{disk_io}_disk_io_constructor"
        self._session: Any = lt.session(params)
        self._handles: dict[str, Any] = {}
        # Kept beside the handles: a torrent re-added to rejoin its swarm must present them again.
        self._certificates: dict[str, tuple[str, str]] = {}
        self._yielding = False
        self._events: list[TorrentEvent] = []
        self._waits: dict[tuple[str, str], list[_Wait]] = {}
        # libtorrent moves on to the next free port when the asked one is taken; peers would then be
        # told a port nobody listens on.
        if not self._session.is_listening() or port not in (0, self._listen_port()):
            self._session = None
            raise TorrentSessionError(
                f"libtorrent could not listen on {listen_address}:{port}; check that the address is "
                "configured on this node and the port is free"
            )

    def yield_cpu(self, yielding: bool) -> None:
        """Run libtorrent's threads at nice 19 (`yielding`) or 0.

        Per torrent libtorrent limits only rates; the CPU those bytes cost (TLS, hashing, the
        kernel's TCP work done in its network thread) is the session's. So while every torrent
        that moves belongs to a Background Dataset, the session's threads yield to a job training
        on the node, and are raised again as soon as a Normal one moves.
        """
        if not yielding and not self._yielding:
            return
        self._yielding = yielding
        # Looked up on every call while yielding: libtorrent starts disk threads as work arrives.
        set_niceness(unnamed_native_threads(), YIELDING_NICENESS if yielding else 0)

    def _listen_port(self) -> int:
        return int(self._session.ssl_listen_port() if self.tls else self._session.listen_port())

    @property
    def port(self) -> int:
        with self._lock:
            self._check_open()
            return self._listen_port()

    def set_certificate(self, info_hash: str, certificate_pem: str, key_pem: str) -> None:
        """What this session presents to an SSL torrent's peers: a certificate its CA signed, and the key."""
        with self._lock:
            self._handle(info_hash).set_ssl_certificate_buffer(certificate_pem, key_pem, FFDHE2048)
            self._certificates[info_hash] = (certificate_pem, key_pem)

    def __enter__(self) -> TorrentNode:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- torrents ---------------------------------------------------------------------------------

    def seed(self, torrent: bytes, data_dir: Path, *, already_verified: bool) -> str:
        """Serve the dataset whose files are under `data_dir`; returns the info-hash.

        `already_verified`: this node wrote and hashed the data itself (make_torrent, or a download
        it finished and flushed), so it is served without being read twice. Otherwise libtorrent
        hashes every piece first and then fetches whatever does not match from peers.
        """
        params = self._params(torrent, data_dir)
        if already_verified:
            # seed_mode alone still hashes each piece the first time a peer asks for it; marking
            # every piece verified makes the seeder serve straight from disk.
            params.flags |= lt.torrent_flags.seed_mode
            params.verified_pieces = [True] * params.ti.num_pieces()
        return self._add(params)

    def download(self, torrent: bytes, data_dir: Path, resume_data: bytes | None = None) -> str:
        """Fetch the dataset into `data_dir`; with `resume_data` (from `save_resume`), keep what was had.

        Every piece is checked against the torrent's SHA-256 Merkle tree as it arrives. Without
        resume data, files already in `data_dir` are hashed and the pieces that match are kept.
        """
        return self._add(self._params(torrent, data_dir, resume_data))

    def _params(self, torrent: bytes, data_dir: Path, resume_data: bytes | None = None) -> Any:
        info = lt.torrent_info(torrent)
        if resume_data:
            params = lt.read_resume_data(resume_data)
            resumed, expected = str(params.info_hashes.v2), str(info.info_hashes().v2)
            if resumed != expected:
                raise TorrentSessionError(
                    f"resume data is for torrent {resumed}, not {expected}; drop it and download afresh"
                )
            # Resume data remembers rate limits; they are the caller's to set for this run.
            params.download_limit = -1
            params.upload_limit = -1
        else:
            params = lt.add_torrent_params()
        return self._params_from(params, info, data_dir)

    @staticmethod
    def _params_from(params: Any, info: Any, data_dir: Path) -> Any:
        params.ti = info
        params.save_path = str(data_dir)
        params.renamed_files = _unrooted(info)
        # Not auto-managed: the session's queue would otherwise decide which datasets may move.
        params.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
        return params

    def _add(self, params: Any) -> str:
        info_hash = str(params.ti.info_hashes().v2)
        with self._lock:
            self._check_open()
            if info_hash in self._handles:
                raise TorrentSessionError(f"torrent {info_hash} is already in this session; remove it first")
            self._handles[info_hash] = self._session.add_torrent(params)
        return info_hash

    def forgive_peers(self, info_hash: str, timeout: float = 60.0) -> None:
        """Rejoin the torrent's swarm with no peer known and none banned, keeping every verified piece.

        libtorrent blames every peer that sent blocks of a piece that failed, and now and then bans
        a good one beside the corrupt one (two of three good seeders, in one of five 64 MiB downloads
        on loopback with one corrupt seeder); once every holder is banned, a download waits forever.
        Peers must be told again afterwards.
        """
        resume = lt.read_resume_data(self.save_resume(info_hash, timeout))
        with self._lock:
            handle = self._handle(info_hash)
            download, upload = handle.download_limit(), handle.upload_limit()
            info, data_dir = handle.torrent_file(), Path(handle.status().save_path)
            self._session.remove_torrent(self._handles.pop(info_hash))
            params = self._params_from(resume, info, data_dir)
            params.banned_peers = []
            params.peers = []
            params.download_limit, params.upload_limit = download, upload
            self._add(params)
            if info_hash in self._certificates:
                certificate_pem, key_pem = self._certificates[info_hash]
                self._handle(info_hash).set_ssl_certificate_buffer(certificate_pem, key_pem, FFDHE2048)

    def limit(self, info_hash: str, *, download: int = 0, upload: int = 0) -> None:
        """Cap the torrent's payload rates in bytes/s (0: no cap), e.g. to leave a training job its NIC.

        Per torrent, so it binds LAN peers too (the session-wide limits exempt private addresses).
        """
        with self._lock:
            handle = self._handle(info_hash)
            handle.set_download_limit(download or -1)
            handle.set_upload_limit(upload or -1)

    def remove(self, info_hash: str) -> None:
        """Stop sharing the torrent; its files stay on disk."""
        with self._lock:
            handle = self._handles.pop(info_hash, None)
            self._certificates.pop(info_hash, None)
            if handle is not None and self._session is not None:
                self._session.remove_torrent(handle)

    # -- peers ------------------------------------------------------------------------------------

    def add_peers(self, info_hash: str, peers: Iterable[tuple[str, int]]) -> None:
        """Connect to these (ip, port) peers; libtorrent keeps them and reconnects as it sees fit."""
        with self._lock:
            handle = self._handle(info_hash)
            for ip, port in peers:
                handle.connect_peer((str(ipaddress.ip_address(ip)), int(port)))

    def set_allowed_peers(self, addresses: Iterable[str]) -> None:
        """Admit connections to and from exactly these addresses; loopback too only if listed.

        Applies to every torrent of the session and drops live connections to anyone else.
        """
        rules = lt.ip_filter()
        rules.add_rule("0.0.0.0", "255.255.255.255", _BLOCKED)
        rules.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", _BLOCKED)
        for text in addresses:
            address = str(ipaddress.ip_address(text))
            rules.add_rule(address, address, _ALLOWED)
        with self._lock:
            self._check_open()
            self._session.set_ip_filter(rules)

    # -- state ------------------------------------------------------------------------------------

    def status(self, info_hash: str) -> TransferStatus:
        with self._lock:
            found = self._handle(info_hash).status()
        return TransferStatus(
            progress=float(found.progress),
            total_done=int(found.total_wanted_done),
            total_wanted=int(found.total_wanted),
            download_rate=int(found.download_payload_rate),
            upload_rate=int(found.upload_payload_rate),
            num_peers=int(found.num_peers),
            state=str(found.state),
            is_seeding=bool(found.is_seeding),
            total_payload_download=int(found.total_payload_download),
            total_payload_upload=int(found.total_payload_upload),
            total_failed_bytes=int(found.total_failed_bytes),
            total_redundant_bytes=int(found.total_redundant_bytes),
            errors=(found.errc.message(),) if found.errc.value() else (),
        )

    def peer_bytes(self, info_hash: str) -> dict[str, PeerBytes]:
        """Payload bytes per remote address over the torrent's live connections.

        Counters vanish when a connection closes (a finished leecher drops its links to other
        seeds), so a caller keeping totals (origin vs peers) must sample and add up increases.
        """
        with self._lock:
            peers = self._handle(info_hash).get_peer_info()
        totals: dict[str, PeerBytes] = {}
        for peer in peers:
            ip = str(peer.ip[0])
            web = peer.connection_type != lt.peer_info.standard_bittorrent
            before = totals.get(ip, PeerBytes(0, 0, web))
            totals[ip] = PeerBytes(
                before.downloaded + int(peer.total_download),
                before.uploaded + int(peer.total_upload),
                before.web_seed or web,
            )
        return totals

    def flush(self, info_hash: str, timeout: float = 60.0) -> None:
        """Return once every verified piece is written to its file.

        A torrent reports itself seeding before libtorrent's write buffer reaches the files: compare
        or hand out the files only after this.
        """
        self._request("flushed", info_hash, lambda handle: handle.flush_cache(), timeout)

    def save_resume(self, info_hash: str, timeout: float = 60.0) -> bytes:
        """Fast-resume data (bencoded) naming every piece that is verified and on disk."""
        # libtorrent 2.1.1 builds resume data from what its last flush wrote: with only the
        # flush_disk_cache flag, the first save after a start listed no pieces and later ones were
        # one save behind. Flushing first and waiting for it gives the pieces held now.
        self.flush(info_hash, timeout)
        data = self._request("resume", info_hash, lambda handle: handle.save_resume_data(0), timeout)
        assert data is not None
        return data

    def _request(
        self, kind: str, info_hash: str, ask: Callable[[Any], object], timeout: float
    ) -> bytes | None:
        wait = _Wait()
        with self._lock:
            handle = self._handle(info_hash)
            # libtorrent answers requests about one torrent in order, so the first waiter gets the
            # first answer.
            self._waits.setdefault((kind, info_hash), []).append(wait)
            ask(handle)
        deadline = time.monotonic() + timeout
        while not wait.done.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                with self._lock:
                    waiting = self._waits.get((kind, info_hash), [])
                    if wait in waiting:
                        waiting.remove(wait)
                raise TorrentSessionError(
                    f"libtorrent sent no {kind} answer for {info_hash} in {timeout:.0f} s; is its disk stuck?"
                )
            self._pump()
            wait.done.wait(min(left, _POLL_SECONDS))
        if wait.error is not None:
            raise TorrentSessionError(f"{kind} for torrent {info_hash} failed: {wait.error}")
        return wait.data

    def poll_alerts(self, timeout: float = 0.0) -> list[TorrentEvent]:
        """Events since the last call, waiting up to `timeout` seconds for the first one."""
        deadline = time.monotonic() + timeout
        while True:
            self._pump()
            with self._lock:
                events, self._events = self._events, []
            if events or time.monotonic() >= deadline:
                return events
            time.sleep(_POLL_SECONDS)

    def _pump(self) -> None:
        # Alerts are popped only here, under the lock: a popped batch stays valid only until the
        # next pop. libtorrent's wait_for_alert is not used, because it hands back an alert that a
        # pop on another thread may already have freed.
        with self._lock:
            if self._session is None:
                return
            for alert in self._session.pop_alerts():
                self._dispatch(alert)

    def _dispatch(self, alert: Any) -> None:
        if isinstance(alert, lt.cache_flushed_alert):
            self._answer(("flushed", _hash_of(alert)), None, None)
        elif isinstance(alert, lt.save_resume_data_alert):
            self._answer(("resume", _hash_of(alert)), bytes(lt.write_resume_data_buf(alert.params)), None)
        elif isinstance(alert, lt.save_resume_data_failed_alert):
            self._answer(("resume", _hash_of(alert)), None, alert.error.message())
        elif (event := _translate(alert)) is not None:
            self._events.append(event)

    def _answer(self, key: tuple[str, str], data: bytes | None, error: str | None) -> None:
        waiting = self._waits.get(key)
        if not waiting:
            return
        wait = waiting.pop(0)
        if not waiting:
            del self._waits[key]
        wait.data, wait.error = data, error
        wait.done.set()

    def _handle(self, info_hash: str) -> Any:
        self._check_open()
        try:
            return self._handles[info_hash]
        except KeyError:
            raise TorrentSessionError(f"torrent {info_hash} is not in this session") from None

    def _check_open(self) -> None:
        if self._session is None:
            raise TorrentSessionError("this torrent session is closed")

    def close(self) -> None:
        """Close every connection and release the port; blocks until libtorrent has shut down."""
        with self._lock:
            session, self._session = self._session, None
            self._handles.clear()
            for waiting in self._waits.values():
                for wait in waiting:
                    wait.error = "the session was closed"
                    wait.done.set()
            self._waits.clear()
        # Dropping the last reference runs the destructor, which aborts the session and joins its
        # threads (flushing the write buffer) before returning.
        del session


_POLL_SECONDS = 0.005
_BLOCKED = 1  # lt.ip_filter access flags
_ALLOWED = 0


def _unrooted(info: Any) -> dict[int, str]:
    """Renames that put a multi-file torrent's files directly under the save path.

    libtorrent stores a multi-file torrent under `<save_path>/<name>/` but a one-file torrent at
    `<save_path>/<file>`; a dataset's files belong at the root of its directory (or volume) either
    way, whatever the seeder's directory was called. Renaming changes only where files live here:
    the info-hash and the paths asked of web seeds stay the torrent's own (seen in the web seed test).
    """
    layout = info.layout()
    prefix = layout.name() + "/"
    renames: dict[int, str] = {}
    for index in range(layout.num_files()):
        path = layout.file_path(index).replace(os.sep, "/")
        if layout.file_flags(index) & lt.file_storage.flag_pad_file or not path.startswith(prefix):
            continue
        renames[index] = path[len(prefix) :]
    return renames


def _hash_of(alert: Any) -> str:
    try:
        return str(alert.handle.info_hashes().v2)
    except RuntimeError:  # the handle outlived its torrent
        return ""


def _translate(alert: Any) -> TorrentEvent | None:
    if isinstance(alert, lt.hash_failed_alert):
        return HashFailed(_hash_of(alert), int(alert.piece_index))
    if isinstance(alert, lt.peer_ban_alert):
        ip, port = alert.ip
        return PeerBanned(_hash_of(alert), str(ip), int(port))
    if isinstance(alert, lt.peer_blocked_alert):
        ip, _ = alert.ip
        return PeerBlocked(str(ip), _BLOCK_REASONS.get(int(alert.reason), str(alert.reason)))
    if isinstance(alert, lt.file_error_alert):
        return FileFailed(_hash_of(alert), str(alert.filename()), str(alert.op), alert.error.message())  # type: ignore[attr-defined]
    if isinstance(alert, lt.torrent_error_alert):
        return TorrentFailed(_hash_of(alert), alert.error.message())
    if isinstance(alert, lt.torrent_finished_alert):
        return TorrentFinished(_hash_of(alert))
    return None


_BLOCK_REASONS = {0: "ip_filter", 1: "port_filter", 2: "i2p_mixed", 3: "privileged_ports", 4: "utp_disabled"}
