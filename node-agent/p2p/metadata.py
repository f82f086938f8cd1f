"""A .torrent's v2 info-hash, computed here and not by libtorrent: the check on metadata a peer sent.

The v2 info-hash is the SHA-256 of the bencoded `info` dictionary exactly as it appears in the file.
Piece layers sit outside `info` but are bound to it: libtorrent checks each layer against the file's
Merkle root, which is inside `info`. So a torrent whose info-hash matches the one in Dataset status
cannot lead to data other than the seeder's.
"""

from __future__ import annotations

import hashlib


class TorrentMetadataError(ValueError):
    pass


def _end_of(data: bytes, start: int) -> int:
    """Index just past the bencoded value starting at `start`."""
    if start >= len(data):
        raise TorrentMetadataError("truncated torrent")
    lead = data[start : start + 1]
    if lead == b"i":
        end = data.index(b"e", start)
        return end + 1
    if lead in (b"l", b"d"):
        position = start + 1
        while data[position : position + 1] != b"e":
            position = _end_of(data, position)
        return position + 1
    if lead.isdigit():
        colon = data.index(b":", start)
        length = int(data[start:colon])
        end = colon + 1 + length
        if end > len(data):
            raise TorrentMetadataError("truncated string in torrent")
        return end
    raise TorrentMetadataError(f"not bencode at byte {start}")


def info_hash_of(torrent: bytes) -> str:
    """Hex SHA-256 of the top-level `info` dictionary; TorrentMetadataError if there is none."""
    try:
        if torrent[:1] != b"d":
            raise TorrentMetadataError("a torrent is a bencoded dictionary")
        if _end_of(torrent, 0) != len(torrent):
            raise TorrentMetadataError("trailing bytes after the torrent")
        position = 1
        while torrent[position : position + 1] != b"e":
            if not torrent[position : position + 1].isdigit():
                raise TorrentMetadataError("a dictionary key must be a string")
            key_end = _end_of(torrent, position)
            key = torrent[torrent.index(b":", position) + 1 : key_end]
            value_end = _end_of(torrent, key_end)
            if key == b"info":
                if torrent[key_end : key_end + 1] != b"d":
                    raise TorrentMetadataError("info is not a dictionary")
                return hashlib.sha256(torrent[key_end:value_end]).hexdigest()
            position = value_end
    except (ValueError, IndexError, RecursionError) as error:
        if isinstance(error, TorrentMetadataError):
            raise
        raise TorrentMetadataError(f"malformed torrent: {error}") from None
    raise TorrentMetadataError("the torrent has no info dictionary")
