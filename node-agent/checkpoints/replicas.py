"""Peer replicas: with `peerReplicas: 1`, a second node keeps a verified copy of each local checkpoint.

A node can die with its disk; S3 is slow to restore from. The replica sits between the two: the
newest checkpoints, on another node, restorable over the cluster network.

Who holds the replica is chosen once by the recording node (rendezvous hashing over the ready
agents, so replicas spread evenly and a choice only moves when its node goes) and written as the
label `cairn.dev/replica-node`. Each agent pulls the checkpoints labelled with its own name; it is
a pull so that the copy goes through the verified restore path, and so that no node can push
bytes onto another. A replica mirrors the local tier: once the recording node's copy is gone (by
retention) or the Checkpoint is deleted, the replica is removed too.

Replicas live at `<state>/replicas/<namespace>/<name>`, where the node's replica store, an LV
in one of its pools, is mounted (replica_store.py); a replica that does not fit is not pulled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from cairn.api.checkpoint import Checkpoint, CheckpointPolicySpec, CheckpointStatus, LocalCopy
from cairn.api.disk import StorageNode
from cairn.api.names import REPLICA_NODE_LABEL
from cairn.kube import ResourceClient, Typed
from cairn.node_agent.checkpoints.replica_store import ReplicaStore
from cairn.node_agent.checkpoints.restore.engine import RestoreError, count_restored_bytes, restore
from cairn.node_agent.checkpoints.restore.sources import SourcesError, sources_for
from cairn.node_agent.p2p.identity import PeerIdentity

log = logging.getLogger("cairn.node.replicas")
PARTIAL_SUFFIX = ".partial"


def choose_replica_node(checkpoint_name: str, origin: str, nodes: Iterable[StorageNode]) -> str | None:
    """The ready agent with a pool (its replica store's home), other than the origin, that scores
    highest for this checkpoint; None if none."""
    candidates = [
        node.spec.node_name
        for node in nodes
        if node.spec.node_name != origin
        and node.status.ready
        and node.status.pools
        and node.status.endpoints.peer_restore_address
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda name: hashlib.sha256(f"{name}/{checkpoint_name}".encode()).digest())


def origin_holds_a_copy(checkpoint: Checkpoint) -> bool:
    """The recording node keeps a copy: the volume's own (in memory or on disk), or its tier store's."""
    status = checkpoint.status
    return any(copy is not None and copy.present for copy in (status.local, status.disk))


def wants_replica(checkpoint: Checkpoint, policy: CheckpointPolicySpec) -> bool:
    return policy.peer_replicas >= 1 and origin_holds_a_copy(checkpoint) and checkpoint.status.peer is None


def keep_replica(checkpoint: Checkpoint | None, labels: dict[str, str], this_node: str) -> bool:
    """A replica stays while it is still assigned here and the recording node keeps its own copy."""
    if checkpoint is None or labels.get(REPLICA_NODE_LABEL) != this_node:
        return False
    return origin_holds_a_copy(checkpoint)


@dataclass
class ReplicaKeeper:
    node_name: str
    api_client: client.ApiClient
    checkpoints: ResourceClient
    root: Path
    """`<state>/replicas`: one directory per namespace, one per checkpoint under it."""
    identity: PeerIdentity | None = None
    """This agent on the peer plane; the copy is pulled from the recording node with it."""
    store: ReplicaStore | None = None
    """The pool LV mounted at `root`; without one (unit tests) `root` is a plain directory."""
    _no_room: set[str] = field(default_factory=set)

    def directory(self, namespace: str, name: str) -> Path:
        return self.root / namespace / name

    def replica_directory(self, checkpoint: Checkpoint, namespace: str, name: str) -> Path | None:
        """This node's replica of a checkpoint, if status says it is here and it is on disk."""
        peer = checkpoint.status.peer
        if peer is None or not peer.present or peer.node_name != self.node_name:
            return None
        directory = self.directory(namespace, name)
        return directory if directory.is_dir() and not directory.is_symlink() else None

    def run_pass(self) -> None:
        assigned = self.checkpoints.list(label_selector=f"{REPLICA_NODE_LABEL}={self.node_name}")
        wanted = [
            item
            for item in assigned
            if item.model.status.peer is None
            and keep_replica(item.model, item.metadata.get("labels", {}), self.node_name)
        ]
        # The store is carved only when a replica is first asked of this node; ready() says why not.
        if wanted and (self.store is None or self.store.ready() is None):
            for item in wanted:
                self._pull(item)
        self._collect_garbage()

    def _pull(self, item: Typed) -> None:
        namespace, name = item.metadata.get("namespace", ""), item.name
        final = self.directory(namespace, name)
        partial = final.with_name(name + PARTIAL_SUFFIX)
        if partial.exists():
            shutil.rmtree(partial)  # a pull cut short by a restart; start it over
        if final.exists():
            shutil.rmtree(final)  # on disk but not in status: its record was lost, so it is not trusted
        if self.store is not None and (short := self.store.lacks_room_for(item.model.spec.size_bytes)):
            if item.name not in self._no_room:
                log.warning("not replicating %s/%s: %s", namespace, name, short)
                self._no_room.add(item.name)
            return
        self._no_room.discard(item.name)
        try:
            _checkpoint, sources = sources_for(
                self.api_client, namespace, name, self.node_name, identity=self.identity
            )
            report = restore(item.model.spec.manifest_digest, sources, partial, hash_threads=1, streams=1)
        except (SourcesError, RestoreError) as error:
            log.warning("replicating %s/%s failed: %s", namespace, name, error)
            shutil.rmtree(partial, ignore_errors=True)
            return
        os.replace(partial, final)
        count_restored_bytes(self.node_name, report)
        current = self.checkpoints.get(name, namespace)
        if current is None:
            shutil.rmtree(final)
            return
        status = current.model.status.model_copy(deep=True)
        status.peer = LocalCopy(
            node_name=self.node_name, volume="", path=str(final.relative_to(self.root.parent)), present=True
        )
        self.checkpoints.patch_status(
            name,
            CheckpointStatus(peer=status.peer, tiers=status.restorable_tiers()),
            namespace=namespace,
        )
        log.info(
            "replica of %s/%s kept on %s: %d bytes from %s",
            namespace,
            name,
            self.node_name,
            report.total_bytes,
            ",".join(kind.value for kind in report.tiers),
        )

    def _collect_garbage(self) -> None:
        if not self.root.exists():
            return
        for namespace_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for directory in sorted(p for p in namespace_dir.iterdir() if p.is_dir()):
                if directory.name.endswith(PARTIAL_SUFFIX):
                    continue
                item = self.checkpoints.get(directory.name, namespace_dir.name)
                labels = item.metadata.get("labels", {}) if item else {}
                if keep_replica(item.model if item else None, labels, self.node_name):
                    continue
                shutil.rmtree(directory)
                log.info("replica %s/%s removed", namespace_dir.name, directory.name)
                if item is not None and item.model.status.peer is not None:
                    status = item.model.status.model_copy(deep=True)
                    status.peer = None
                    self.checkpoints.patch_status(
                        item.name,
                        CheckpointStatus(peer=None, tiers=status.restorable_tiers()),
                        namespace=namespace_dir.name,
                    )


def assign_replicas(
    items: Iterable[Typed],
    policy: CheckpointPolicySpec,
    nodes: list[StorageNode],
    origin: str,
    checkpoints: ResourceClient,
) -> None:
    """The recording node's half: label each checkpoint that wants a replica with the node to hold it."""
    for item in items:
        if REPLICA_NODE_LABEL in item.metadata.get("labels", {}):
            continue
        if not wants_replica(item.model, policy):
            continue
        chosen = choose_replica_node(item.name, origin, nodes)
        if chosen is None:
            continue  # no other ready agent yet; the next pass tries again
        checkpoints.patch_metadata(
            item.name, {"labels": {REPLICA_NODE_LABEL: chosen}}, namespace=item.metadata.get("namespace")
        )
