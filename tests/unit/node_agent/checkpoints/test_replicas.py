"""Who keeps a peer replica, and when it goes: pure decisions."""

from __future__ import annotations

from collections import Counter

from cairn.api.checkpoint import CheckpointPolicySpec, LocalCopy
from cairn.api.disk import AgentEndpoints, PoolStatus, StorageNode, StorageNodeSpec, StorageNodeStatus
from cairn.api.names import REPLICA_NODE_LABEL
from cairn.node_agent.checkpoints.replicas import (
    choose_replica_node,
    keep_replica,
    wants_replica,
)
from tests.unit.node_agent.checkpoints.test_tiering import checkpoint


def node(
    name: str, *, ready: bool = True, address: str | None = "10.0.0.1:9750", pools: bool = True
) -> StorageNode:
    pool = PoolStatus.model_validate(
        {"class": "nvme", "volumeGroup": "cairn-nvme", "totalBytes": 1, "freeBytes": 1, "extentSizeBytes": 1}
    )
    return StorageNode(
        spec=StorageNodeSpec(node_name=name),
        status=StorageNodeStatus(
            ready=ready, endpoints=AgentEndpoints(peer_restore_address=address), pools=[pool] if pools else []
        ),
    )


def test_the_replica_goes_to_a_ready_reachable_agent_with_a_pool_other_than_the_origin() -> None:
    nodes = [
        node("origin"),
        node("down", ready=False),
        node("silent", address=None),
        node("no-pool", pools=False),  # would score highest for ckpt-1
        node("good"),
    ]
    assert choose_replica_node("ckpt-1", "origin", nodes) == "good"
    assert choose_replica_node("ckpt-1", "origin", [node("origin")]) is None


def test_replicas_spread_over_nodes_and_a_choice_is_stable() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    chosen = Counter(choose_replica_node(f"ckpt-{i}", "n0", nodes) for i in range(300))
    assert set(chosen) == {"n1", "n2", "n3"}
    assert min(chosen.values()) > 60  # about 100 each
    assert choose_replica_node("ckpt-7", "n0", nodes) == choose_replica_node("ckpt-7", "n0", nodes[::-1])
    # Removing a node that was not chosen does not move the replica.
    first = choose_replica_node("ckpt-7", "n0", nodes)
    others = [n for n in nodes if n.spec.node_name not in (first, "n0")]
    remaining = [n for n in nodes if n.spec.node_name != others[0].spec.node_name]
    assert choose_replica_node("ckpt-7", "n0", remaining) == first


def test_a_replica_is_wanted_only_by_policy_and_only_while_there_is_a_local_copy() -> None:
    with_replica = CheckpointPolicySpec(peer_replicas=1)
    assert wants_replica(checkpoint(), with_replica)
    assert not wants_replica(checkpoint(), CheckpointPolicySpec())
    assert not wants_replica(checkpoint(local=False, verified=True), with_replica)
    replicated = checkpoint()
    replicated.status.peer = LocalCopy(node_name="n2", volume="", path="replicas/ns/c")
    assert not wants_replica(replicated, with_replica)


def test_a_replica_mirrors_the_local_tier() -> None:
    labels = {REPLICA_NODE_LABEL: "n2"}
    assert keep_replica(checkpoint(), labels, "n2")
    assert not keep_replica(checkpoint(), labels, "n3")  # reassigned
    assert not keep_replica(checkpoint(local=False, verified=True), labels, "n2")  # retention took it
    assert not keep_replica(None, labels, "n2")  # the Checkpoint was deleted
