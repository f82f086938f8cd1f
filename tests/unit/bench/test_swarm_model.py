"""The swarm model's behaviour in cases whose answer is known without it."""

from __future__ import annotations

import math

import pytest

from bench.scale.swarm_model import (
    GIB,
    MIB,
    ControlPlane,
    Cpu,
    Demand,
    Links,
    SwarmSpec,
    allocate,
    metadata_rounds,
    pass_seconds,
    simulate,
)

NO_LATENCY = ControlPlane(start_s=0.0, pass_period_s=0.0, wake_s=0.0, metadata_fetch_s=0.0)
NO_CPU = Cpu(cores=1.0, shared_host=False, landed_cpu_s_per_gib=0.0, verify_cpu_s_per_gib=0.0)


def spec(
    nodes: int,
    size: int = GIB,
    *,
    rate: float = 100 * MIB,
    up: float | None = None,
    cpu: Cpu = NO_CPU,
    control: ControlPlane = NO_LATENCY,
    parts: int = 32,
) -> SwarmSpec:
    link = up if up is not None else rate
    return SwarmSpec(
        nodes=nodes,
        part_bytes=tuple([size // parts] * parts),
        piece_bytes=256 * 1024,
        links=Links(up=link, down=link, origin=rate),
        cpu=cpu,
        control=control,
    )


def test_one_node_alone_takes_exactly_the_origin_read() -> None:
    outcome = simulate(spec(1))
    assert outcome.all_ready_s == pytest.approx(GIB / (100 * MIB), rel=1e-6)
    assert outcome.peer_bytes_per_target == 0


@pytest.mark.parametrize("nodes", [1, 2, 8, 100, 1000])
def test_more_nodes_never_read_the_origin_less_than_once(nodes: int) -> None:
    outcome = simulate(spec(nodes))
    assert outcome.origin_bytes >= GIB
    if nodes > 1:
        # Every byte has to leave the seeder at least once for anyone else to have it.
        assert outcome.seeder_upload_bytes >= GIB * (1 - 1e-6)
        assert outcome.peer_bytes_per_target == GIB


def test_with_ample_peers_the_time_approaches_the_line_rate_plus_a_pipeline_term() -> None:
    rate = 100 * MIB
    outcome = simulate(spec(1000, rate=rate, up=10 * rate))
    line_rate = GIB / rate
    last_part = GIB / 32
    # After the last byte is read, its part crosses one hop from the seeder and a pipeline behind it.
    assert line_rate < outcome.all_ready_s < line_rate + 2 * last_part / (10 * rate) + 1.0
    assert outcome.bottleneck == "origin link"


def test_the_pipeline_term_grows_with_the_last_part() -> None:
    few = simulate(spec(50, parts=4, up=10 * 100 * MIB)).all_ready_s
    many = simulate(spec(50, parts=32, up=10 * 100 * MIB)).all_ready_s
    assert many < few


def test_a_cpu_bound_host_takes_time_in_proportion_to_n_times_f() -> None:
    host = Cpu(cores=1.0, shared_host=True, landed_cpu_s_per_gib=20.0, verify_cpu_s_per_gib=0.0)
    fast = 1000 * MIB  # links far above what one core can check
    base = simulate(spec(4, GIB, rate=fast, cpu=host)).all_ready_s
    twice_nodes = simulate(spec(8, GIB, rate=fast, cpu=host)).all_ready_s
    twice_bytes = simulate(spec(4, 2 * GIB, rate=fast, cpu=host)).all_ready_s
    # All N copies land on one core: N * F * 20 CPU-s per GiB.
    assert base == pytest.approx(4 * 1 * 20.0, rel=0.05)
    assert twice_nodes / base == pytest.approx(2.0, rel=0.05)
    assert twice_bytes / base == pytest.approx(2.0, rel=0.05)
    assert simulate(spec(8, GIB, rate=fast, cpu=host)).bottleneck == "host cpu"


def test_a_node_per_host_does_not_slow_down_as_n_grows() -> None:
    own = Cpu(cores=1.0, shared_host=False, landed_cpu_s_per_gib=20.0, verify_cpu_s_per_gib=0.0)
    small = simulate(spec(10, cpu=own, up=1000 * MIB)).all_ready_s
    large = simulate(spec(1000, cpu=own, up=1000 * MIB)).all_ready_s
    assert large == pytest.approx(small, rel=0.1)


def test_a_slower_origin_is_never_faster() -> None:
    slow = simulate(spec(16, rate=50 * MIB, up=100 * MIB)).all_ready_s
    fast = simulate(spec(16, rate=100 * MIB, up=100 * MIB)).all_ready_s
    assert slow > fast


def test_status_writes_slow_every_pass_with_the_cube_of_n_once_the_api_server_is_full() -> None:
    control = ControlPlane(api_bytes_per_s=1e9, dataset_bytes_per_node=1000, storage_node_bytes=2000)
    small = pass_seconds(spec(1000, control=control))
    large = pass_seconds(spec(2000, control=control))
    assert small > control.pass_period_s
    # Twice the writes, each of an object twice the size, to twice the watches.
    assert large / small == pytest.approx(8.0, rel=0.05)
    assert pass_seconds(spec(8, control=control)) == control.pass_period_s


def test_a_dataset_object_past_the_etcd_limit_cannot_be_seeded() -> None:
    control = ControlPlane(dataset_bytes_per_node=1000)
    outcome = simulate(spec(2000, control=control))
    assert not outcome.feasible
    assert math.isinf(outcome.all_ready_s)
    assert outcome.bottleneck == "Dataset object size (etcd limit)"
    assert simulate(spec(1000, control=control)).feasible


def test_metadata_reaches_every_requester_and_spreads_from_each_holder() -> None:
    rounds = metadata_rounds(100, 16)
    assert sum(rounds) == 100
    assert rounds == [16, 84]  # the seeder serves 16, then 17 holders serve the rest
    assert metadata_rounds(5000, 16) == [16, 272, 4624, 88]


def test_flows_sharing_a_link_get_equal_shares_per_receiver() -> None:
    allocation = allocate(
        [Demand("one", {"link": 1.0}), Demand("ten", {"link": 10.0})],
        {"link": 110.0},
    )
    assert allocation.rates["one"] == pytest.approx(10.0)
    assert allocation.rates["ten"] == pytest.approx(10.0)
    assert allocation.saturated == {"link"}


def test_a_flow_at_its_ceiling_leaves_the_rest_to_the_others() -> None:
    allocation = allocate(
        [Demand("capped", {"link": 1.0}, 2.0), Demand("free", {"link": 1.0})], {"link": 10.0}
    )
    assert allocation.rates == pytest.approx({"capped": 2.0, "free": 8.0})


def test_percentiles_are_ordered_and_bounded_by_the_last_node() -> None:
    control = ControlPlane(start_s=1.0, ready_latency_s=0.2)
    outcome = simulate(spec(200, control=control, up=300 * MIB))
    assert outcome.p50_s <= outcome.p99_s <= outcome.all_ready_s
