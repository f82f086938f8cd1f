"""The LVM adapter's pure half: report parsing and decisions, on output recorded from lvm2 2.03.16."""

from __future__ import annotations

import pytest

from cairn.node_agent.lvm.errors import InsufficientSpace, LvmError, NotContiguous
from cairn.node_agent.lvm.report import (
    OWNED_TAG,
    ActivationMode,
    ErrorKind,
    LoopDevice,
    LvInfo,
    LvSegment,
    PeRange,
    classify_stderr,
    contiguous_pe_range,
    detect_activation_mode,
    device_filter_config,
    extents_for_size,
    format_bytes,
    loop_extent,
    loops_at,
    meaningful_stderr,
    parse_losetup_list,
    parse_lvs_segments,
    parse_pe_ranges,
    parse_pvs,
    parse_vgs,
    report_rows,
    validate_name,
    validate_tag,
    volume_tag,
)

MiB = 1024 * 1024
EXTENT = 4 * MiB

VGS_JSON = """  {
      "report": [
          {
              "vg": [
                  {"vg_name":"cairnx", "vg_size":"130023424", "vg_free":"117440512",
                   "vg_extent_size":"4194304", "vg_extent_count":"31", "vg_free_count":"28",
                   "pv_count":"1", "vg_missing_pv_count":"0", "vg_tags":"cairn.dev/owned"},
                  {"vg_name":"ubuntu-vg", "vg_size":"500000000000", "vg_free":"0", "vg_extent_size":"4194304",
                   "vg_extent_count":"119209", "vg_free_count":"0", "pv_count":"2", "vg_missing_pv_count":"1",
                   "vg_tags":""}
              ]
          }
      ]
  }
"""

PVS_JSON = """  {
      "report": [
          {
              "pv": [
                  {"pv_name":"/dev/loop0", "vg_name":"cairnx", "pv_size":"130023424", "pv_free":"88080384",
                   "pe_start":"1048576", "pv_pe_count":"31", "pv_pe_alloc_count":"10", "pv_tags":""},
                  {"pv_name":"/dev/loop1", "vg_name":"", "pv_size":"62914560", "pv_free":"62914560",
                   "pe_start":"1048576", "pv_pe_count":"0", "pv_pe_alloc_count":"0", "pv_tags":""}
              ]
          }
      ]
  }
"""


def _seg_row(
    lv: str, uuid: str, size: int, start: int, count: int, ranges: str, segtype: str = "linear"
) -> str:
    return (
        f'{{"vg_name":"cairnx", "lv_name":"{lv}", "lv_uuid":"{uuid}", "lv_size":"{size}", '
        f'"vg_extent_size":"4194304", "lv_attr":"-wc-XX----", "lv_path":"/dev/cairnx/{lv}", '
        f'"lv_active":"", "lv_tags":"cairn.dev/owned,cairn.dev/volume=pvc-1", "seg_start_pe":"{start}", '
        f'"seg_size_pe":"{count}", "segtype":"{segtype}", "seg_pe_ranges":"{ranges}"}}'
    )


def _lvs_json(*rows: str) -> str:
    return '{"report": [{"seg": [' + ", ".join(rows) + "]}]}"


def _lv(*segments: LvSegment, size_extents: int | None = None) -> LvInfo:
    extents = size_extents if size_extents is not None else sum(s.extent_count for s in segments)
    return LvInfo(
        vg="cairnx",
        name="a",
        uuid="u",
        size_bytes=extents * EXTENT,
        extent_size_bytes=EXTENT,
        attr="-wc-XX----",
        path="/dev/cairnx/a",
        dm_active=False,
        tags=(),
        segments=segments,
    )


def _linear(start: int, pv: str, first: int, last: int) -> LvSegment:
    return LvSegment(
        start_extent=start,
        extent_count=last - first + 1,
        segtype="linear",
        pe_ranges=(PeRange(pv=pv, first_pe=first, last_pe=last),),
    )


# ---- report parsing -------------------------------------------------------------------------


def test_vgs_report_gives_sizes_counts_and_tags() -> None:
    cairn, foreign = parse_vgs(VGS_JSON)
    assert cairn.name == "cairnx"
    assert cairn.size_bytes == 130023424
    assert cairn.free_bytes == 117440512
    assert cairn.extent_size_bytes == EXTENT
    assert (cairn.extent_count, cairn.free_extents) == (31, 28)
    assert cairn.tags == (OWNED_TAG,)
    assert cairn.owned_by_cairn
    assert foreign.tags == ()
    assert not foreign.owned_by_cairn
    assert (foreign.pv_count, foreign.missing_pv_count) == (2, 1)


def test_pvs_report_gives_pe_start_and_vg_membership() -> None:
    in_vg, orphan = parse_pvs(PVS_JSON)
    assert in_vg.pe_start_bytes == MiB
    assert (in_vg.vg, in_vg.pe_count, in_vg.pe_alloc_count) == ("cairnx", 31, 10)
    assert orphan.vg == ""


def test_empty_report_has_no_rows() -> None:
    assert report_rows("", "vg") == []
    assert parse_vgs('{"report": [{"vg": []}]}') == []
    assert parse_lvs_segments('{"report": [{"seg": []}]}') == []


def test_lvs_segment_rows_are_grouped_per_volume_in_logical_order() -> None:
    out = _lvs_json(
        _seg_row("a", "uuid-a", 5 * EXTENT, 3, 2, "/dev/loop0:10-11"),
        _seg_row("a", "uuid-a", 5 * EXTENT, 0, 3, "/dev/loop0:0-2"),
        _seg_row("b", "uuid-b", 2 * EXTENT, 0, 2, "/dev/loop0:3-4"),
    )
    a, b = parse_lvs_segments(out)
    assert a.name == "a"
    assert a.size_bytes == 5 * EXTENT
    assert a.extent_count == 5
    assert [s.start_extent for s in a.segments] == [0, 3]
    assert a.segments[0].pe_ranges == (PeRange("/dev/loop0", 0, 2),)
    assert a.tags == (OWNED_TAG, "cairn.dev/volume=pvc-1")
    assert a.owned_by_cairn
    assert a.volume_id == "pvc-1"
    assert not a.dm_active
    assert b.path == "/dev/cairnx/b"


def test_striped_segment_lists_one_range_per_pv() -> None:
    assert parse_pe_ranges("/dev/loop0:8-9 /dev/loop1:0-1") == (
        PeRange("/dev/loop0", 8, 9),
        PeRange("/dev/loop1", 0, 1),
    )


def test_pe_range_parsing_keeps_colons_inside_the_pv_path() -> None:
    (pe_range,) = parse_pe_ranges("/dev/disk/by-path/pci-0000:00:1f.2-ata-1:4-7")
    assert pe_range == PeRange("/dev/disk/by-path/pci-0000:00:1f.2-ata-1", 4, 7)
    assert pe_range.count == 4


def test_losetup_list_skips_detached_entries_and_tolerates_no_output() -> None:
    out = """{
       "loopdevices": [
          {"name": "/dev/loop1", "sizelimit": 12582912, "offset": 1048576, "autoclear": false,
           "back-file": "/dev/loop0"},
          {"name": "/dev/loop5", "sizelimit": null, "offset": null, "autoclear": false, "back-file": null}
       ]
    }"""
    assert parse_losetup_list(out) == [LoopDevice("/dev/loop1", "/dev/loop0", MiB, 12582912, False)]
    # losetup --list prints nothing at all when no loop device is attached.
    assert parse_losetup_list("") == []


# ---- sizes and loop geometry ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "extents"),
    [(1, 1), (EXTENT, 1), (EXTENT + 1, 2), (10 * MiB, 3), (1024 * MiB, 256)],
)
def test_sizes_round_up_to_whole_extents(size: int, extents: int) -> None:
    assert extents_for_size(size, EXTENT) == extents


@pytest.mark.parametrize("size", [0, -1])
def test_non_positive_size_is_rejected(size: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        extents_for_size(size, EXTENT)


def test_loop_offset_is_pe_start_plus_first_extent() -> None:
    lv = _lv(_linear(0, "/dev/loop0", 3, 7))
    extent = loop_extent(contiguous_pe_range(lv), pe_start_bytes=MiB, extent_size_bytes=EXTENT)
    assert extent.pv == "/dev/loop0"
    assert extent.offset == MiB + 3 * EXTENT
    assert extent.sizelimit == 5 * EXTENT


def test_adjacent_segments_on_one_pv_form_one_loop_range() -> None:
    lv = _lv(_linear(0, "/dev/loop0", 0, 2), _linear(3, "/dev/loop0", 3, 4))
    assert contiguous_pe_range(lv) == PeRange("/dev/loop0", 0, 4)


def test_split_volume_cannot_be_loop_activated() -> None:
    lv = _lv(_linear(0, "/dev/loop0", 0, 2), _linear(3, "/dev/loop0", 10, 11))
    with pytest.raises(NotContiguous, match="loop activation mode"):
        contiguous_pe_range(lv)


def test_volume_spanning_two_pvs_cannot_be_loop_activated() -> None:
    lv = _lv(_linear(0, "/dev/loop0", 29, 30), _linear(2, "/dev/loop1", 0, 1))
    with pytest.raises(NotContiguous, match="contiguous"):
        contiguous_pe_range(lv)


def test_striped_volume_cannot_be_loop_activated() -> None:
    striped = LvSegment(0, 4, "striped", (PeRange("/dev/loop0", 8, 9), PeRange("/dev/loop1", 0, 1)))
    with pytest.raises(NotContiguous, match="striped"):
        contiguous_pe_range(_lv(striped))


def test_existing_loop_is_found_by_backing_device_and_offset_even_after_growth() -> None:
    loops = [
        LoopDevice("/dev/loop4", "/dev/loop0", MiB, 3 * EXTENT, False),
        LoopDevice("/dev/loop5", "/dev/loop0", MiB + 3 * EXTENT, EXTENT, False),
        LoopDevice("/dev/loop6", "/dev/loop9", MiB, 3 * EXTENT, False),
        LoopDevice("/dev/loop7", "/var/lib/images/disk.img", MiB, 3 * EXTENT, False),
    ]
    assert [loop.name for loop in loops_at(loops, "/dev/loop0", MiB)] == ["/dev/loop4"]
    assert loops_at(loops, "/dev/loop0", MiB + EXTENT) == []


def test_loop_matching_compares_device_identity_not_spelling() -> None:
    loops = [LoopDevice("/dev/loop4", "/dev/nvme0n1", MiB, EXTENT, False)]
    same_disk = {"/dev/nvme0n1": "259:0", "/dev/disk/by-id/nvme-Samsung_1": "259:0"}
    found = loops_at(loops, "/dev/disk/by-id/nvme-Samsung_1", MiB, same_disk.__getitem__)
    assert [loop.name for loop in found] == ["/dev/loop4"]


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        (
            '  Volume group "cairnx" has insufficient free space (23 extents): 256 required.',
            "insufficient-space",
        ),
        ("  Insufficient free space: 256 extents needed, but only 23 available", "insufficient-space"),
        (
            "  Insufficient suitable contiguous allocatable extents for logical volume a: 2 more required",
            "not-contiguous",
        ),
        ('  Failed to find logical volume "cairnx/zz"', "lv-not-found"),
        ('  Volume group "nope" not found\n  Cannot process volume group nope', "vg-not-found"),
        ('  Logical Volume "a" already exists in volume group "cairnx"', "lv-exists"),
        ("  Logical volume cairnx/a contains a filesystem in use.", "in-use"),
        ("  Logical volume cairnx/a in use.", "in-use"),
        ("  Device /dev/sdz not found.", "other"),
    ],
)
def test_lvm_stderr_maps_to_the_condition_callers_act_on(stderr: str, kind: str) -> None:
    assert classify_stderr(stderr) is ErrorKind(kind)


def test_loop_mode_warnings_are_dropped_from_error_text() -> None:
    stderr = (
        "  WARNING: Activation disabled. No device-mapper interaction will be attempted.\n"
        "  File descriptor 10 (/dev/null) leaked on lvs invocation. Parent PID 1: bash\n"
        '  Failed to find logical volume "cairnx/zz"\n'
    )
    assert meaningful_stderr(stderr) == 'Failed to find logical volume "cairnx/zz"'


def test_insufficient_space_message_names_pool_free_and_needed() -> None:
    err = InsufficientSpace(
        f"pool VG cairn-nvme has {format_bytes(3328599654)} free, "
        f"volume v1 needs {format_bytes(10 * 1024**3)}",
        vg="cairn-nvme",
        free_bytes=3328599654,
        needed_bytes=10 * 1024**3,
    )
    assert str(err) == "pool VG cairn-nvme has 3.1 GiB free, volume v1 needs 10 GiB"
    assert isinstance(err, LvmError)


def test_command_errors_carry_command_and_stderr() -> None:
    err = LvmError("lvm lvs failed", command=["lvm", "lvs", "vg/lv"], stderr="boom", returncode=5)
    assert str(err) == "lvm lvs failed (command: lvm lvs vg/lv, exit code 5, stderr: boom)"


@pytest.mark.parametrize(
    ("size", "text"),
    [(512, "512 B"), (4 * MiB, "4 MiB"), (3328599654, "3.1 GiB"), (10 * 1024**3, "10 GiB"), (2**41, "2 TiB")],
)
def test_sizes_are_printed_in_binary_units(size: int, text: str) -> None:
    assert format_bytes(size) == text


# ---- activation mode ----------------------------------------------------------------------------

PROC_MISC_WITHOUT_DM = """234 btrfs-control
259 cpu_dma_latency
237 loop-control
229 fuse
"""
PROC_MISC_WITH_DM = PROC_MISC_WITHOUT_DM + "236 device-mapper\n"


def test_kernel_with_device_mapper_uses_device_mapper_activation() -> None:
    assert (
        detect_activation_mode(PROC_MISC_WITH_DM, mapper_control_exists=True) is ActivationMode.DEVICE_MAPPER
    )


def test_kernel_without_device_mapper_uses_loop_activation() -> None:
    assert detect_activation_mode(PROC_MISC_WITHOUT_DM, mapper_control_exists=False) is ActivationMode.LOOP


def test_missing_mapper_control_node_falls_back_to_loop_activation() -> None:
    # A container may see the host's /proc/misc without having /dev/mapper/control.
    assert detect_activation_mode(PROC_MISC_WITH_DM, mapper_control_exists=False) is ActivationMode.LOOP


# ---- names, tags, device filter ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["-ff", "", "a b", "a/b", ".", "..", "x" * 128, "vg;rm"])
def test_names_lvm_would_refuse_or_misread_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="not valid for LVM"):
        validate_name(name, "LV")


@pytest.mark.parametrize("name", ["cairn-nvme", "pvc-0b1e_2.x+y", "a"])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert validate_name(name, "VG") == name


def test_volume_tag_carries_the_volume_id() -> None:
    assert volume_tag("pvc-1234") == "cairn.dev/volume=pvc-1234"
    assert validate_tag("cairn.dev/owned") == "cairn.dev/owned"


@pytest.mark.parametrize("tag", ["has space", "comma,tag", "-lead", "", "x" * 1025])
def test_invalid_tags_are_rejected(tag: str) -> None:
    with pytest.raises(ValueError, match="not a valid LVM tag"):
        validate_tag(tag)


def test_device_filter_accepts_exactly_the_listed_devices() -> None:
    config = device_filter_config(["/dev/loop3", "/dev/loop12"])
    assert config == (
        'devices { global_filter = [ "a|^/dev/loop3$|", "a|^/dev/loop12$|", "r|.*|" ] '
        'use_devicesfile = 0 hints = "none" }'
    )


def test_device_filter_escapes_regex_characters_in_paths() -> None:
    config = device_filter_config(["/dev/disk/by-id/nvme-eui.0025+38"])
    assert '"a|^/dev/disk/by-id/nvme-eui\\\\.0025\\\\+38$|"' in config


def test_empty_device_list_hides_every_device() -> None:
    assert '[ "r|.*|" ]' in device_filter_config([])


def test_device_filter_refuses_paths_that_would_break_the_config() -> None:
    with pytest.raises(ValueError, match="lvm filter"):
        device_filter_config(['/dev/evil"|'])
