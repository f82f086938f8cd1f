"""Where to restore a checkpoint from: a pure choice over what the tiers report.

Order: the copies on this node (a local read), in memory before on disk, then peers that report
a copy (cluster network, no S3 egress), then S3. The restore code tries them in turn and verifies
every file against the manifest; a corrupt or unreachable source falls through to the next,
which is why this returns a list and not a single answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SourceKind(StrEnum):
    """The tiers a restore reads from, best first (a restore's report lists them in this order)."""

    MEMORY = "memory"
    LOCAL = "local"
    PEER = "peer"
    S3 = "s3"


@dataclass(frozen=True)
class NodeCopy:
    node: str
    path: str
    """Where the checkpoint directory lives on that node."""
    node_ready: bool
    """The node's StorageNode/agent is Ready; a copy behind a dead agent cannot be streamed."""
    tier: SourceKind = SourceKind.LOCAL
    """MEMORY for a copy in a memory volume, LOCAL for one on that node's disks."""
    held_as: str = "local"
    """Which record names the copy: local (the volume's), disk (the tier store's) or peer (a replica)."""


@dataclass(frozen=True)
class CheckpointTiers:
    """What is known about one checkpoint's copies, from the restoring node's point of view."""

    this_node: str
    node_copies: tuple[NodeCopy, ...] = ()
    """Every node that reports a local copy, this one included."""
    status_node: str | None = None
    """The node the Checkpoint status names as holding a copy (its NODE column); tried first among peers."""
    remote_url: str | None = None
    remote_verified: bool = False


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    location: str
    """A path for LOCAL and PEER, the object URL for S3."""
    node: str | None = None
    """The node holding the copy, for MEMORY, LOCAL and PEER."""
    held_as: str | None = None
    """For this node's own copies: which record names it (NodeCopy.held_as), so it is read from
    the right place."""


def choose_sources(checkpoint_tiers: CheckpointTiers) -> list[Source]:
    """The sources to try, best first; empty when no copy can be reached (see `no_source_reason`)."""
    tiers = checkpoint_tiers
    sources: list[Source] = []
    # Readiness is about reaching another node's agent; our own copies are read directly.
    own: dict[SourceKind, NodeCopy] = {}
    for copy in tiers.node_copies:
        if copy.node == tiers.this_node:
            own.setdefault(copy.tier, copy)
    for kind in (SourceKind.MEMORY, SourceKind.LOCAL):
        if (mine := own.get(kind)) is not None:
            sources.append(Source(kind, mine.path, tiers.this_node, mine.held_as))

    peers: dict[str, NodeCopy] = {}
    for copy in tiers.node_copies:
        if copy.node != tiers.this_node and copy.node_ready:
            peers.setdefault(copy.node, copy)
    # The status node first; the rest by name, so every retry walks the same order.
    ordered = sorted(peers.values(), key=lambda c: (c.node != tiers.status_node, c.node))
    sources += [Source(SourceKind.PEER, c.path, c.node) for c in ordered]

    if tiers.remote_url and tiers.remote_verified:
        sources.append(Source(SourceKind.S3, tiers.remote_url))
    return sources


def no_source_reason(checkpoint_tiers: CheckpointTiers) -> str:
    """Why `choose_sources` came back empty, in words that say what to do."""
    tiers = checkpoint_tiers
    reasons: list[str] = []
    unready = sorted({c.node for c in tiers.node_copies if c.node != tiers.this_node and not c.node_ready})
    if unready:
        reasons.append(f"the copies on {', '.join(unready)} are on nodes that are not Ready; bring one back")
    if tiers.remote_url and not tiers.remote_verified:
        reasons.append(
            f"the remote copy {tiers.remote_url} is not verified yet; wait for the checkpoint to be Tiered"
        )
    if not tiers.node_copies and not tiers.remote_url:
        reasons.append("no node and no remote tier reports a copy; it was deleted or never tiered")
    return "no usable copy of the checkpoint: " + "; ".join(reasons or ["no copy is reported anywhere"])
