"""Pure decisions of the controller: parameters, sizes and placement. No root, no cluster."""

from __future__ import annotations

import grpc
import pytest

from cairn import TOPOLOGY_KEY
from cairn.api.volume import LocalVolumeSpec, PoolClass, VolumeAccess
from cairn.controller.volumes.parameters import VALID_KEYS, memory_volume_problem, parse_parameters
from cairn.controller.volumes.placement import NodeCapacity, PoolCapacity, choose_placement, clone_target
from cairn.controller.volumes.sizing import DEFAULT_VOLUME_BYTES, resolve_size, size_fits_range
from cairn.csi.errors import CsiError
from cairn.units import GiB, MiB, human_bytes

EXTENT = 4 * MiB


def _code(excinfo: pytest.ExceptionInfo[CsiError]) -> grpc.StatusCode:
    return excinfo.value.code


class TestParameters:
    def test_defaults_to_the_configured_pool_order(self) -> None:
        params = parse_parameters({}, default_pools=(PoolClass.NVME, PoolClass.SSD))
        assert params.pools == (PoolClass.NVME, PoolClass.SSD)
        assert params.fs_type is None and params.checkpoint_policy is None

    def test_named_pool_is_the_only_pool(self) -> None:
        assert parse_parameters({"cairn.dev/pool": "hdd"}).pools == (PoolClass.HDD,)

    def test_unknown_key_is_invalid_and_the_message_lists_valid_keys(self) -> None:
        with pytest.raises(CsiError) as excinfo:
            parse_parameters({"cairn.dev/poool": "nvme"})
        assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT
        assert "cairn.dev/poool" in excinfo.value.message
        for key in VALID_KEYS:
            assert key in excinfo.value.message

    def test_bad_pool_value_names_the_valid_ones(self) -> None:
        with pytest.raises(CsiError) as excinfo:
            parse_parameters({"cairn.dev/pool": "tape"})
        assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT
        assert "nvme, ssd, hdd" in excinfo.value.message

    def test_unsupported_fstype_is_invalid(self) -> None:
        with pytest.raises(CsiError) as excinfo:
            parse_parameters({"csi.storage.k8s.io/fstype": "btrfs"})
        assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT

    def test_provisioner_metadata_is_accepted_and_kept(self) -> None:
        params = parse_parameters(
            {
                "csi.storage.k8s.io/pvc/name": "data",
                "csi.storage.k8s.io/pvc/namespace": "team-a",
                "csi.storage.k8s.io/pv/name": "pvc-1",
                "cairn.dev/checkpoint-policy": "hourly",
            }
        )
        assert (params.pvc_name, params.pvc_namespace, params.checkpoint_policy) == (
            "data",
            "team-a",
            "hourly",
        )


class TestSizing:
    def test_rounds_up_to_whole_extents(self) -> None:
        assert resolve_size(10 * MiB + 1, 0, EXTENT) == 12 * MiB

    def test_unset_range_gets_the_default(self) -> None:
        assert resolve_size(0, 0, EXTENT) == DEFAULT_VOLUME_BYTES

    def test_limit_only_caps_the_default(self) -> None:
        assert resolve_size(0, 100 * MiB, EXTENT) == 100 * MiB

    def test_rounding_that_overshoots_the_limit_rounds_down_when_allowed(self) -> None:
        assert resolve_size(0, 10 * MiB, EXTENT) == 8 * MiB
        assert resolve_size(6 * MiB, 10 * MiB, EXTENT) == 8 * MiB

    def test_no_whole_extent_between_bounds_is_out_of_range(self) -> None:
        with pytest.raises(CsiError) as excinfo:
            resolve_size(9 * MiB, 11 * MiB, EXTENT)
        assert _code(excinfo) == grpc.StatusCode.OUT_OF_RANGE

    def test_required_above_limit_is_invalid(self) -> None:
        with pytest.raises(CsiError) as excinfo:
            resolve_size(2 * GiB, 1 * GiB, EXTENT)
        assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT

    def test_existing_size_compatibility(self) -> None:
        assert size_fits_range(12 * MiB, 10 * MiB, 0)
        assert not size_fits_range(12 * MiB, 20 * MiB, 0)
        assert not size_fits_range(12 * MiB, 1 * MiB, 8 * MiB)


def _node(name: str, free_gib: float, pool: PoolClass = PoolClass.NVME, ready: bool = True) -> NodeCapacity:
    return NodeCapacity(name, ready, {pool: PoolCapacity(int(free_gib * GiB), EXTENT)})


def _segment(node: str) -> dict[str, str]:
    return {TOPOLOGY_KEY: node}


class TestPlacement:
    def test_most_free_space_wins_without_topology(self) -> None:
        nodes = [_node("a", 5), _node("b", 9), _node("c", 7)]
        placement = choose_placement(nodes, [PoolClass.NVME], GiB, 0)
        assert (placement.node, placement.pool, placement.size_bytes) == ("b", PoolClass.NVME, GiB)

    def test_preferred_topology_wins_over_free_space_in_its_order(self) -> None:
        nodes = [_node("a", 5), _node("b", 9), _node("c", 7)]
        placement = choose_placement(
            nodes,
            [PoolClass.NVME],
            GiB,
            0,
            preferred=[_segment("c"), _segment("a")],
            requisite=[_segment("a"), _segment("c")],
        )
        assert placement.node == "c"

    def test_a_full_preferred_node_falls_to_the_next_preference(self) -> None:
        nodes = [_node("a", 5), _node("b", 9), _node("c", 0.5)]
        placement = choose_placement(
            nodes, [PoolClass.NVME], GiB, 0, preferred=[_segment("c"), _segment("a")]
        )
        assert placement.node == "a"

    def test_requisite_is_a_hard_limit(self) -> None:
        nodes = [_node("a", 0.5), _node("b", 9)]
        with pytest.raises(CsiError) as excinfo:
            choose_placement(nodes, [PoolClass.NVME], GiB, 0, requisite=[_segment("a")])
        assert _code(excinfo) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "pool nvme on node a has 512Mi free, volume needs 1Gi" in excinfo.value.message

    def test_not_ready_nodes_are_never_chosen(self) -> None:
        nodes = [_node("a", 9, ready=False), _node("b", 2)]
        assert choose_placement(nodes, [PoolClass.NVME], GiB, 0).node == "b"

    def test_falls_back_to_the_next_pool_in_order(self) -> None:
        nodes = [_node("a", 0.1, PoolClass.NVME), _node("b", 5, PoolClass.SSD)]
        placement = choose_placement(nodes, [PoolClass.NVME, PoolClass.SSD], GiB, 0)
        assert (placement.node, placement.pool) == ("b", PoolClass.SSD)

    def test_no_room_anywhere_is_resource_exhausted_with_the_shortfall(self) -> None:
        with pytest.raises(CsiError) as excinfo:
            choose_placement([_node("a", 3.1)], [PoolClass.NVME], 10 * GiB, 0)
        assert _code(excinfo) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "has 3.1Gi free, volume needs 10Gi" in excinfo.value.message


def test_human_bytes_reads_like_kubectl() -> None:
    assert [human_bytes(v) for v in (512, 3 * MiB, int(3.1 * GiB), 2 * GiB)] == ["512", "3Mi", "3.1Gi", "2Gi"]


# -- clones -----------------------------------------------------------------------------------------

SOURCE = LocalVolumeSpec(
    csi_name="pvc-source",
    node_name="gpu-2",
    pool=PoolClass.NVME,
    size_bytes=10 * GiB,
    access=VolumeAccess.MOUNT,
    fs_type="xfs",
)


def test_a_clone_goes_beside_its_source_in_the_same_pool_at_least_as_large() -> None:
    target = clone_target("src", SOURCE, 10 * GiB, VolumeAccess.MOUNT, [], 1 * GiB, 0)
    assert (target.node, target.pool, target.required_bytes) == ("gpu-2", PoolClass.NVME, 10 * GiB)
    larger = clone_target("src", SOURCE, 10 * GiB, VolumeAccess.MOUNT, [], 20 * GiB, 0)
    assert larger.required_bytes == 20 * GiB


def test_a_clone_refuses_another_access_type_a_smaller_limit_and_a_topology_without_its_source() -> None:
    with pytest.raises(CsiError) as excinfo:
        clone_target("src", SOURCE, 10 * GiB, VolumeAccess.BLOCK, [], 0, 0)
    assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT and "into a block volume" in str(excinfo.value)
    with pytest.raises(CsiError) as excinfo:
        clone_target("src", SOURCE, 10 * GiB, VolumeAccess.MOUNT, [], 0, 5 * GiB)
    assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT and "over the limit" in str(excinfo.value)
    elsewhere = [{TOPOLOGY_KEY: "gpu-9"}]
    with pytest.raises(CsiError) as excinfo:
        clone_target("src", SOURCE, 10 * GiB, VolumeAccess.MOUNT, elsewhere, 0, 0)
    assert _code(excinfo) == grpc.StatusCode.RESOURCE_EXHAUSTED and "outside the requisite" in str(
        excinfo.value
    )
    beside = clone_target("src", SOURCE, 10 * GiB, VolumeAccess.MOUNT, [{TOPOLOGY_KEY: "gpu-2"}], 0, 0)
    assert beside.node == "gpu-2"


def test_a_memory_volume_may_be_neither_a_block_device_nor_a_clone() -> None:
    memory = (PoolClass.MEMORY,)
    assert memory_volume_problem(memory, VolumeAccess.MOUNT, None) is None
    assert "block" in (memory_volume_problem(memory, VolumeAccess.BLOCK, None) or "")
    assert "cannot be cloned" in (memory_volume_problem(memory, VolumeAccess.MOUNT, "src") or "")
    # Disk pools keep every access type and clones.
    assert memory_volume_problem((PoolClass.NVME,), VolumeAccess.BLOCK, "src") is None


def test_the_memory_pool_is_named_by_the_storage_class_and_placed_by_its_free_share() -> None:
    assert parse_parameters({"cairn.dev/pool": "memory"}).pools == (PoolClass.MEMORY,)
    node = NodeCapacity(
        "gpu-1", True, {PoolClass.MEMORY: PoolCapacity(free_bytes=24 * MiB, extent_bytes=4096)}
    )
    placed = choose_placement([node], (PoolClass.MEMORY,), 10 * MiB + 1, 0)
    assert (placed.node, placed.pool, placed.size_bytes) == ("gpu-1", PoolClass.MEMORY, 10 * MiB + 4096)
    with pytest.raises(CsiError) as excinfo:
        choose_placement([node], (PoolClass.MEMORY,), 32 * MiB, 0)
    assert _code(excinfo) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "pool memory on node gpu-1 has 24Mi free, volume needs 32Mi" in str(excinfo.value)
