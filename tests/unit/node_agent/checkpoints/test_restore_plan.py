"""Restore source order: this node, then Ready peers (status node first), then a verified S3 copy."""

from __future__ import annotations

from cairn.node_agent.checkpoints.restore.plan import (
    CheckpointTiers,
    NodeCopy,
    Source,
    SourceKind,
    choose_sources,
    no_source_reason,
)

URL = "s3://ckpt-bucket/team/pvc-a/step_100/"


def copy(node: str, ready: bool = True) -> NodeCopy:
    return NodeCopy(node, f"/var/lib/cairn/{node}/step_100", ready)


def order(sources: list[Source]) -> list[tuple[SourceKind, str | None]]:
    return [(s.kind, s.node) for s in sources]


def test_local_copy_then_peers_then_verified_s3() -> None:
    tiers = CheckpointTiers(
        "n1", (copy("n3"), copy("n1"), copy("n2")), status_node="n3", remote_url=URL, remote_verified=True
    )
    sources = choose_sources(tiers)
    assert order(sources) == [
        (SourceKind.LOCAL, "n1"),
        (SourceKind.PEER, "n3"),
        (SourceKind.PEER, "n2"),
        (SourceKind.S3, None),
    ]
    assert sources[0].location == "/var/lib/cairn/n1/step_100"
    assert sources[-1].location == URL


def test_the_peer_named_in_status_is_tried_first() -> None:
    tiers = CheckpointTiers("n9", (copy("a"), copy("b"), copy("c")), status_node="b")
    assert order(choose_sources(tiers)) == [
        (SourceKind.PEER, "b"),
        (SourceKind.PEER, "a"),
        (SourceKind.PEER, "c"),
    ]


def test_peers_that_are_not_ready_are_skipped() -> None:
    tiers = CheckpointTiers("n1", (copy("n2", ready=False), copy("n3")), status_node="n2")
    assert order(choose_sources(tiers)) == [(SourceKind.PEER, "n3")]


def test_own_copy_is_used_even_when_this_node_is_reported_not_ready() -> None:
    tiers = CheckpointTiers("n1", (copy("n1", ready=False),))
    assert order(choose_sources(tiers)) == [(SourceKind.LOCAL, "n1")]


def test_unverified_remote_copy_is_never_a_source() -> None:
    tiers = CheckpointTiers("n1", (), remote_url=URL, remote_verified=False)
    assert choose_sources(tiers) == []
    assert "not verified yet; wait for the checkpoint to be Tiered" in no_source_reason(tiers)


def test_only_s3_when_no_node_holds_a_copy() -> None:
    tiers = CheckpointTiers("n1", (), remote_url=URL, remote_verified=True)
    assert choose_sources(tiers) == [Source(SourceKind.S3, URL)]


def test_a_node_reported_twice_is_tried_once() -> None:
    tiers = CheckpointTiers("n1", (copy("n2"), copy("n2")))
    assert order(choose_sources(tiers)) == [(SourceKind.PEER, "n2")]


def test_no_source_reason_names_the_nodes_to_bring_back() -> None:
    tiers = CheckpointTiers("n1", (copy("n2", ready=False), copy("n4", ready=False)))
    assert choose_sources(tiers) == []
    assert "n2, n4 are on nodes that are not Ready" in no_source_reason(tiers)
    assert "deleted or never tiered" in no_source_reason(CheckpointTiers("n1"))


def test_restore_prefers_memory_then_local_then_peer_then_s3() -> None:
    tiers = CheckpointTiers(
        "n1",
        (
            NodeCopy("n2", "replicas/team/c", True, SourceKind.LOCAL, "peer"),
            NodeCopy("n1", "tier-store/team/c", True, SourceKind.LOCAL, "disk"),
            NodeCopy("n1", "ckpt/step_100", True, SourceKind.MEMORY, "local"),
        ),
        status_node="n1",
        remote_url=URL,
        remote_verified=True,
    )
    sources = choose_sources(tiers)
    assert order(sources) == [
        (SourceKind.MEMORY, "n1"),
        (SourceKind.LOCAL, "n1"),
        (SourceKind.PEER, "n2"),
        (SourceKind.S3, None),
    ]
    assert [s.held_as for s in sources[:2]] == ["local", "disk"]
    assert sources[1].location == "tier-store/team/c"


def test_the_memory_tier_is_listed_first_in_reports() -> None:
    assert list(SourceKind) == [SourceKind.MEMORY, SourceKind.LOCAL, SourceKind.PEER, SourceKind.S3]


def test_another_nodes_memory_and_disk_copies_are_one_peer() -> None:
    tiers = CheckpointTiers(
        "n9",
        (
            NodeCopy("n1", "ckpt/step_100", True, SourceKind.MEMORY, "local"),
            NodeCopy("n1", "tier-store/team/c", True, SourceKind.LOCAL, "disk"),
        ),
        status_node="n1",
    )
    assert order(choose_sources(tiers)) == [(SourceKind.PEER, "n1")]
