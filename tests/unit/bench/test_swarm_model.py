"""The swarm model's behaviour in cases whose answer is known without it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from bench.scale.swarm_model import (
    GIB,
    MIB,
    ApiQueue,
    ControlPlane,
    Cpu,
    Demand,
    Links,
    StatusWrites,
    SwarmSpec,
    allocate,
    dataset_object_bytes,
    fifo_clearance,
    largest_writable_nodes,
    metadata_rounds,
    pass_seconds,
    simulate,
    volume_write_seconds,
    write_seconds,
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


BED_OBJECT = 954
"""Bytes one target adds to the Dataset today (bench.swarm_scale.object_size_per_target)."""
NAME = 37
"""Bytes one target adds on copy volumes, its name (bench.swarm_scale.target_name_bytes)."""
COPY_VOLUME = 1616
"""Bytes of one copy's LocalVolume with its report on it (bench.swarm_scale.copy_volume_bytes)."""


def test_status_writes_slow_every_pass_with_the_cube_of_n_once_the_api_server_is_full() -> None:
    control = ControlPlane(
        api_bytes_per_s=1e9, dataset_bytes_per_node=1000, status_writes=StatusWrites.PER_PASS
    )
    small = pass_seconds(spec(1000, control=control))
    large = pass_seconds(spec(2000, control=control))
    assert small > control.pass_period_s
    # Twice the writes, each of an object twice the size, to twice the watches.
    assert large / small == pytest.approx(8.0, rel=0.05)
    assert pass_seconds(spec(8, control=control)) == control.pass_period_s
    # Paced, a pass neither lists nor waits on a write, whatever N.
    assert pass_seconds(spec(2000, control=replace(control, status_writes=StatusWrites.PACED))) == 2.0


def test_one_write_costs_the_whole_object_to_every_watch_and_a_burst_queues_behind_itself() -> None:
    nodes, api = 500, 2e9
    swarm = spec(nodes, control=ControlPlane(api_bytes_per_s=api, dataset_bytes_per_node=BED_OBJECT))
    size = dataset_object_bytes(swarm)
    assert write_seconds(swarm) == pytest.approx(size * (nodes + 2) / api)
    burst = 40
    cleared = fifo_clearance([10.0] * burst, write_seconds(swarm))
    assert max(cleared) - 10.0 == pytest.approx(burst * size * (nodes + 2) / api)
    # First in, first out: the k-th of the burst waits for the k - 1 before it.
    assert cleared == pytest.approx([10.0 + (k + 1) * write_seconds(swarm) for k in range(burst)])
    # A write made after the queue has drained waits for nobody.
    late = max(cleared) + 1.0
    assert fifo_clearance([10.0] * burst + [late], write_seconds(swarm))[-1] == pytest.approx(
        late + write_seconds(swarm)
    )


def cluster(
    nodes: int, writes: StatusWrites, *, api: float, size: int = 10 * GIB, summary_interval_s: float = 0.2
) -> SwarmSpec:
    """A node per host with its own links, the API server the one shared thing."""
    return SwarmSpec(
        nodes=nodes,
        part_bytes=tuple([size // 32] * 32),
        piece_bytes=4 * MIB,
        links=Links(up=1000 * MIB, down=1000 * MIB, origin=100 * MIB),
        cpu=NO_CPU,
        control=ControlPlane(
            start_s=1.0,
            api_bytes_per_s=api,
            dataset_bytes_per_node=BED_OBJECT,
            dataset_name_bytes_per_node=NAME,
            copy_volume_bytes=COPY_VOLUME,
            summary_interval_s=summary_interval_s,
            status_writes=writes,
        ),
    )


def network_only(swarm: SwarmSpec) -> SwarmSpec:
    """The same swarm with nothing written to the API: no limit, no object to outgrow etcd."""
    control = replace(
        swarm.control,
        api_bytes_per_s=math.inf,
        dataset_bytes_per_node=0,
        dataset_name_bytes_per_node=0,
        status_writes=StatusWrites.PACED,
    )
    return replace(swarm, control=control)


def test_paced_writes_beat_a_write_every_pass_at_a_thousand_nodes_once_the_burst_is_through() -> None:
    # An apiserver that moves the 1,000 targets' writes in about 20 s a round, and an origin read of
    # about 100 s: the Downloading burst is through long before the last part is published.
    api = 50e9
    paced = simulate(cluster(1000, StatusWrites.PACED, api=api))
    per_pass = simulate(cluster(1000, StatusWrites.PER_PASS, api=api))
    unloaded = simulate(cluster(1000, StatusWrites.PACED, api=math.inf))
    round_s = 1000 * write_seconds(cluster(1000, StatusWrites.PACED, api=api))
    assert 10 < round_s < 30
    # Per pass, each join and the last Ready wait for a pass as long as a round of writes; paced,
    # only the Ready burst is in the way.
    assert paced.all_ready_s < per_pass.all_ready_s - 0.5 * round_s
    assert paced.all_ready_s == pytest.approx(unloaded.all_ready_s + round_s, rel=0.05)
    assert per_pass.pass_s == pytest.approx(round_s)
    assert paced.pass_s == 2.0


def test_paced_phase_writes_alone_take_two_rounds_of_the_api_server() -> None:
    # Every target writes Downloading and then Ready, each write to every watch: the last Ready can
    # clear no sooner than 2 (N - 1) writes after the first Downloading one, however fast the data.
    api = 3e9
    swarm = cluster(1000, StatusWrites.PACED, api=api, size=GIB)
    outcome = simulate(swarm)
    phase_s = 2 * (swarm.nodes - 1) * write_seconds(swarm)
    assert outcome.all_ready_s >= phase_s
    assert outcome.status.phase_writes == 2 * (swarm.nodes - 1)
    assert outcome.status.last_ready_queue_s > 0.9 * (swarm.nodes - 1) * write_seconds(swarm)
    assert outcome.bottleneck == "controller/API status writes"
    finding = next(f for f in outcome.findings if f.startswith("controller/API status writes (paced)"))
    assert f"{dataset_object_bytes(swarm) / MIB:.2f} MiB" in finding
    assert "GB/s of PATCH and fan-out against the apiserver's 3 GB/s" in finding


def test_each_target_reports_progress_every_n_over_2_seconds_after_its_own_last_write() -> None:
    # 100 targets, 50 s apart each, in a run of about 105 s: all 99 once about 50 s after their
    # first advance, and about 100 s in only those not Ready yet.
    swarm = cluster(100, StatusWrites.PACED, api=3e9)
    outcome = simulate(swarm)
    assert 100 < outcome.all_ready_s < 150
    assert 99 < outcome.status.progress_writes <= 2 * 99
    assert outcome.status.phase_writes == 2 * 99


def test_at_eight_nodes_the_write_mode_changes_nothing() -> None:
    times = {writes: simulate(cluster(8, writes, api=3e9, size=GIB)).all_ready_s for writes in StatusWrites}
    unloaded = simulate(cluster(8, StatusWrites.PACED, api=math.inf, size=GIB)).all_ready_s
    assert times[StatusWrites.PACED] == pytest.approx(times[StatusWrites.PER_PASS], rel=1e-3)
    assert times[StatusWrites.PACED] == pytest.approx(unloaded, rel=1e-3)
    assert times[StatusWrites.ON_COPY_VOLUMES] == pytest.approx(unloaded, rel=1e-3)


@pytest.mark.parametrize("nodes", [2, 4, 8])
def test_on_the_bed_status_on_copy_volumes_moves_the_calibration_by_nothing(nodes: int) -> None:
    # bench.swarm_scale.bed_spec: every agent on one host's CPU, links at R, no API limit.
    rate = 25 * MIB
    host = Cpu(cores=2.0, shared_host=True, landed_cpu_s_per_gib=22.0, verify_cpu_s_per_gib=9.5)
    control = ControlPlane(start_s=1.4, ready_latency_s=0.2)
    paced = simulate(spec(nodes, GIB // 2, rate=rate, cpu=host, control=control))
    volumes = simulate(
        spec(
            nodes,
            GIB // 2,
            rate=rate,
            cpu=host,
            control=replace(control, status_writes=StatusWrites.ON_COPY_VOLUMES),
        )
    )
    assert volumes.all_ready_s == pytest.approx(paced.all_ready_s, rel=1e-3)
    assert volumes.bottleneck == paced.bottleneck


def test_on_copy_volumes_the_dataset_grows_by_a_name_and_seeds_five_thousand_where_paced_cannot() -> None:
    paced = simulate(cluster(5000, StatusWrites.PACED, api=3e9))
    assert not paced.feasible
    assert paced.bottleneck == "Dataset object size (etcd limit)"
    swarm = cluster(5000, StatusWrites.ON_COPY_VOLUMES, api=3e9)
    outcome = simulate(swarm)
    assert outcome.feasible
    assert dataset_object_bytes(swarm) == swarm.control.dataset_base_bytes + 5000 * NAME
    # What the API adds is a few summary rounds at the end, not the minutes of the paced writes.
    unloaded = simulate(network_only(swarm)).all_ready_s
    assert unloaded < outcome.all_ready_s < 1.05 * unloaded
    assert outcome.bottleneck == "origin link"
    limit = largest_writable_nodes(swarm.control)
    assert limit == (swarm.control.object_limit_bytes - swarm.control.dataset_base_bytes) // NAME
    finding = next(f for f in outcome.findings if f.startswith("status on copy volumes"))
    assert f"up to N = {limit:,.0f}" in finding
    etcd = swarm.control.object_limit_bytes
    assert dataset_object_bytes(cluster(int(limit), StatusWrites.ON_COPY_VOLUMES, api=3e9)) <= etcd
    assert dataset_object_bytes(cluster(int(limit) + 1, StatusWrites.ON_COPY_VOLUMES, api=3e9)) > etcd


@pytest.mark.parametrize("size", [10 * GIB, 100 * GIB])
def test_on_copy_volumes_the_api_server_is_no_longer_what_holds_a_thousand_nodes_up(size: int) -> None:
    paced = simulate(cluster(1000, StatusWrites.PACED, api=3e9, size=size))
    outcome = simulate(cluster(1000, StatusWrites.ON_COPY_VOLUMES, api=3e9, size=size))
    unloaded = simulate(network_only(cluster(1000, StatusWrites.PACED, api=3e9, size=size))).all_ready_s
    # Paced, the phase writes' two rounds of 1000 whole-object writes cost minutes ...
    assert paced.all_ready_s > unloaded + 250
    # ... on copy volumes the last Ready waits for one summary round and its write.
    assert outcome.all_ready_s == pytest.approx(unloaded, abs=0.5)
    assert outcome.bottleneck != "controller/API status writes"
    assert not any(f.startswith("controller/API status writes") for f in outcome.findings)
    assert outcome.status.fanout_bytes_per_s < 0.05 * 3e9
    assert outcome.status.summary_writes < 50


def test_a_copy_volume_write_costs_the_same_whatever_n_and_leaves_the_pass_alone() -> None:
    control = ControlPlane(
        api_bytes_per_s=3e9, copy_volume_bytes=COPY_VOLUME, status_writes=StatusWrites.ON_COPY_VOLUMES
    )
    # In as a PATCH, out to the controller's watch and its own agent's.
    assert volume_write_seconds(spec(5000, control=control)) == pytest.approx(COPY_VOLUME * 3 / 3e9)
    assert volume_write_seconds(spec(10, control=control)) == volume_write_seconds(
        spec(5000, control=control)
    )
    assert pass_seconds(spec(5000, control=replace(control, pass_period_s=2.0))) == 2.0


def test_a_backlog_drains_only_at_what_the_background_of_small_writes_leaves() -> None:
    busy, idle = ApiQueue(1.0, background=0.5), ApiQueue(1.0)
    for queue in (busy, idle):
        assert queue.serve(0.0) == 1.0
        assert queue.serve(0.0) == 2.0
    # Two seconds of work queued at 0; by 3 s half of each second went to the background.
    assert busy.serve(3.0) == pytest.approx(4.5)
    assert idle.serve(3.0) == pytest.approx(4.0)
    # With nothing queued the background delays nobody.
    assert busy.serve(100.0) == pytest.approx(101.0)


def test_the_controller_writes_its_summary_at_most_once_a_round() -> None:
    # Reports spread over about a pass; with a 10 s round the first opens a write at once, and
    # every later one waits for the next round's.
    often = simulate(cluster(100, StatusWrites.ON_COPY_VOLUMES, api=3e9, size=GIB))
    seldom = simulate(cluster(100, StatusWrites.ON_COPY_VOLUMES, api=3e9, size=GIB, summary_interval_s=10.0))
    assert seldom.status.summary_writes == 2
    assert often.status.summary_writes > 5
    assert 10.0 - 2 * ControlPlane().pass_period_s < seldom.all_ready_s - often.all_ready_s < 10.0
    assert seldom.p50_s == seldom.all_ready_s


def test_at_five_thousand_nodes_a_summary_write_outlasts_the_round_and_the_summaries_queue() -> None:
    # A design limit the model names: the Dataset is small, but each summary still goes to every
    # agent, and 5000 watches of 185 KiB take longer than the controller's 0.2 s between rounds.
    swarm = cluster(5000, StatusWrites.ON_COPY_VOLUMES, api=3e9)
    outcome = simulate(swarm)
    assert write_seconds(swarm) > swarm.control.summary_interval_s
    assert outcome.status.last_ready_queue_s > 1.0
    # The publications stay on the Dataset: each reaches the agents one such write after it is made.
    assert outcome.status.publication_delay_s >= write_seconds(swarm)
    finding = next(f for f in outcome.findings if f.startswith("status on copy volumes"))
    assert "summaries ask 158% of the apiserver and queue" in finding


def test_the_dataset_cannot_be_written_past_the_etcd_limit_near_two_thousand_nodes() -> None:
    control = ControlPlane(api_bytes_per_s=3e9, dataset_bytes_per_node=BED_OBJECT)
    assert simulate(spec(1500, control=control)).feasible
    outcome = simulate(spec(2000, control=control))
    assert not outcome.feasible
    assert outcome.bottleneck == "Dataset object size (etcd limit)"
    assert any("can no longer be written at N=2000" in f for f in outcome.findings)
    # Queue figures for writes etcd refuses would only mislead.
    assert not any(f.startswith("controller/API status writes") for f in outcome.findings)


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
