"""Pure parsing and decisions for the LVM adapter: no commands run here.

Everything in this module works on text that lvm or losetup printed (or on plain numbers), so it
is unit-tested without root. `lvm.py` is the thin part that runs the commands.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cairn.api.names import OWNED_TAG, VOLUME_TAG_PREFIX
from cairn.node_agent.lvm.errors import NotContiguous

# lvm2 tools/toollib.c: tags are 1..1024 of these characters and must not start with a hyphen.
_TAG_RE = re.compile(r"^[A-Za-z0-9_+.\-/=!:#&]{1,1024}$")
# lvm2 names: these characters, no leading hyphen (it would be read as an option), max 127.
_NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.\-]{0,126}$")

# Characters that mean something in lvm's filter regex syntax.
_REGEX_SPECIAL = set(".^$|()[]{}*+?\\")

_STDERR_NOISE = (
    "WARNING: Activation disabled. No device-mapper interaction will be attempted.",
    "File descriptor ",
)


class ActivationMode(StrEnum):
    """How an LV becomes a block device on this node."""

    DEVICE_MAPPER = "device-mapper"
    # Kernels without device-mapper: an LV that is one contiguous PV range is exposed as a loop
    # device over that byte range of the PV.
    LOOP = "loop"


def detect_activation_mode(proc_misc: str, mapper_control_exists: bool) -> ActivationMode:
    """device-mapper when the kernel registered it and its control node exists, else loop.

    Both are required: a container can see /proc/misc of a dm-capable host without having
    /dev/mapper/control, and then lvchange -ay would fail.
    """
    misc_names = {parts[1] for line in proc_misc.splitlines() if len(parts := line.split()) == 2}
    if "device-mapper" in misc_names and mapper_control_exists:
        return ActivationMode.DEVICE_MAPPER
    return ActivationMode.LOOP


@dataclass(frozen=True, slots=True)
class PvInfo:
    name: str
    vg: str  # "" when the PV belongs to no VG
    size_bytes: int
    free_bytes: int
    pe_start_bytes: int
    pe_count: int
    pe_alloc_count: int
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VgInfo:
    name: str
    size_bytes: int
    free_bytes: int
    extent_size_bytes: int
    extent_count: int
    free_extents: int
    pv_count: int
    missing_pv_count: int
    tags: tuple[str, ...]

    @property
    def owned_by_cairn(self) -> bool:
        return OWNED_TAG in self.tags


@dataclass(frozen=True, slots=True)
class PeRange:
    """Physical extents first_pe..last_pe (inclusive, as lvm prints them) on one PV."""

    pv: str
    first_pe: int
    last_pe: int

    @property
    def count(self) -> int:
        return self.last_pe - self.first_pe + 1


@dataclass(frozen=True, slots=True)
class LvSegment:
    start_extent: int  # logical extent of the LV where this segment starts
    extent_count: int
    segtype: str
    pe_ranges: tuple[PeRange, ...]


@dataclass(frozen=True, slots=True)
class LvInfo:
    vg: str
    name: str
    uuid: str
    size_bytes: int
    extent_size_bytes: int
    attr: str
    path: str
    # lvm's own view; always False in loop mode because lvm never activates there.
    dm_active: bool
    tags: tuple[str, ...]
    segments: tuple[LvSegment, ...]

    @property
    def owned_by_cairn(self) -> bool:
        return OWNED_TAG in self.tags

    @property
    def volume_id(self) -> str | None:
        for tag in self.tags:
            if tag.startswith(VOLUME_TAG_PREFIX):
                return tag[len(VOLUME_TAG_PREFIX) :]
        return None

    @property
    def extent_count(self) -> int:
        return self.size_bytes // self.extent_size_bytes


@dataclass(frozen=True, slots=True)
class LoopDevice:
    name: str
    back_file: str
    offset: int
    sizelimit: int
    autoclear: bool


@dataclass(frozen=True, slots=True)
class LoopExtent:
    """The byte range of a PV that holds an LV: what losetup --offset/--sizelimit take."""

    pv: str
    offset: int
    sizelimit: int


class ErrorKind(StrEnum):
    INSUFFICIENT_SPACE = "insufficient-space"
    NOT_CONTIGUOUS = "not-contiguous"
    LV_NOT_FOUND = "lv-not-found"
    VG_NOT_FOUND = "vg-not-found"
    LV_EXISTS = "lv-exists"
    IN_USE = "in-use"
    OTHER = "other"


# Order matters: the contiguous message also contains "Insufficient ... extents".
_STDERR_PATTERNS: tuple[tuple[ErrorKind, re.Pattern[str]], ...] = (
    (ErrorKind.NOT_CONTIGUOUS, re.compile(r"insufficient suitable contiguous allocatable extents", re.I)),
    (
        ErrorKind.INSUFFICIENT_SPACE,
        re.compile(
            r"insufficient free space|insufficient suitable allocatable extents"
            r"|insufficient allocatable extents",
            re.I,
        ),
    ),
    (ErrorKind.LV_EXISTS, re.compile(r"logical volume \S+ already exists in volume group", re.I)),
    (ErrorKind.LV_NOT_FOUND, re.compile(r"failed to find logical volume", re.I)),
    (ErrorKind.VG_NOT_FOUND, re.compile(r"volume group \S+ not found", re.I)),
    (ErrorKind.IN_USE, re.compile(r"\bin use\b|contains a filesystem in use|device or resource busy", re.I)),
)


def classify_stderr(stderr: str) -> ErrorKind:
    """Map lvm's stderr to the condition callers act on (lvm exit codes are all 5)."""
    for kind, pattern in _STDERR_PATTERNS:
        if pattern.search(stderr):
            return kind
    return ErrorKind.OTHER


def meaningful_stderr(stderr: str) -> str:
    """stderr without the warnings lvm prints on every call in loop mode."""
    lines = [line.strip() for line in stderr.splitlines()]
    return "\n".join(
        line for line in lines if line and not any(line.startswith(noise) for noise in _STDERR_NOISE)
    )


def _int(value: Any) -> int:
    if value in ("", None):
        return 0
    return int(value)


def _tags(value: str) -> tuple[str, ...]:
    # Tags cannot contain commas, so lvm's comma-joined list splits safely.
    return tuple(tag for tag in value.split(",") if tag)


def report_rows(stdout: str, kind: str) -> list[dict[str, str]]:
    """Rows of one report type ("vg", "pv", "lv", "seg") from `--reportformat json` output."""
    if not stdout.strip():
        return []
    document = json.loads(stdout)
    rows: list[dict[str, str]] = []
    for report in document.get("report", []):
        rows.extend(report.get(kind, []))
    return rows


def parse_vgs(stdout: str) -> list[VgInfo]:
    return [
        VgInfo(
            name=row["vg_name"],
            size_bytes=_int(row["vg_size"]),
            free_bytes=_int(row["vg_free"]),
            extent_size_bytes=_int(row["vg_extent_size"]),
            extent_count=_int(row["vg_extent_count"]),
            free_extents=_int(row["vg_free_count"]),
            pv_count=_int(row["pv_count"]),
            missing_pv_count=_int(row["vg_missing_pv_count"]),
            tags=_tags(row["vg_tags"]),
        )
        for row in report_rows(stdout, "vg")
    ]


def parse_pvs(stdout: str) -> list[PvInfo]:
    return [
        PvInfo(
            name=row["pv_name"],
            vg=row["vg_name"],
            size_bytes=_int(row["pv_size"]),
            free_bytes=_int(row["pv_free"]),
            pe_start_bytes=_int(row["pe_start"]),
            pe_count=_int(row["pv_pe_count"]),
            pe_alloc_count=_int(row["pv_pe_alloc_count"]),
            tags=_tags(row["pv_tags"]),
        )
        for row in report_rows(stdout, "pv")
    ]


def parse_pe_ranges(value: str) -> tuple[PeRange, ...]:
    """Parse seg_pe_ranges, e.g. "/dev/loop0:8-9 /dev/loop1:0-1" for a two-stripe segment."""
    ranges = []
    for item in value.split():
        # rpartition: the PV path itself may contain colons (e.g. /dev/disk/by-path/...:0:0).
        pv, _, span = item.rpartition(":")
        first, _, last = span.partition("-")
        ranges.append(PeRange(pv=pv, first_pe=int(first), last_pe=int(last or first)))
    return tuple(ranges)


def parse_lvs_segments(stdout: str) -> list[LvInfo]:
    """Group `lvs --segments` rows (one per segment) into one LvInfo per LV, in report order."""
    order: list[str] = []
    first_rows: dict[str, dict[str, str]] = {}
    segments: dict[str, list[LvSegment]] = {}
    for row in report_rows(stdout, "seg"):
        key = row["lv_uuid"]
        if key not in first_rows:
            order.append(key)
            first_rows[key] = row
            segments[key] = []
        segments[key].append(
            LvSegment(
                start_extent=_int(row["seg_start_pe"]),
                extent_count=_int(row["seg_size_pe"]),
                segtype=row["segtype"],
                pe_ranges=parse_pe_ranges(row["seg_pe_ranges"]),
            )
        )
    result = []
    for key in order:
        row = first_rows[key]
        result.append(
            LvInfo(
                vg=row["vg_name"],
                name=row["lv_name"],
                uuid=row["lv_uuid"],
                size_bytes=_int(row["lv_size"]),
                extent_size_bytes=_int(row["vg_extent_size"]),
                attr=row["lv_attr"],
                path=row["lv_path"],
                dm_active=row["lv_active"] == "active",
                tags=_tags(row["lv_tags"]),
                segments=tuple(sorted(segments[key], key=lambda seg: seg.start_extent)),
            )
        )
    return result


def parse_losetup_list(stdout: str) -> list[LoopDevice]:
    """Parse `losetup --list --json`; it prints nothing at all when no loop is attached."""
    if not stdout.strip():
        return []
    loops = []
    for item in json.loads(stdout).get("loopdevices", []):
        if not item.get("back-file"):
            continue  # a listed but detached loop device
        loops.append(
            LoopDevice(
                name=item["name"],
                back_file=item["back-file"],
                offset=_int(item.get("offset")),
                sizelimit=_int(item.get("sizelimit")),
                autoclear=bool(item.get("autoclear")),
            )
        )
    return loops


def extents_for_size(size_bytes: int, extent_size_bytes: int) -> int:
    """Extents needed to hold size_bytes: volumes are never smaller than what was asked."""
    if size_bytes <= 0:
        raise ValueError(f"volume size must be positive, got {size_bytes} bytes")
    if extent_size_bytes <= 0:
        raise ValueError(f"extent size must be positive, got {extent_size_bytes} bytes")
    return -(-size_bytes // extent_size_bytes)


def contiguous_pe_range(lv: LvInfo) -> PeRange:
    """The single PV range holding `lv`, or NotContiguous when loop activation cannot expose it.

    Adjacent linear segments on the same PV are merged, since lvm may record an extension as a
    new segment that directly follows the old one.
    """
    merged: PeRange | None = None
    for segment in lv.segments:
        if segment.segtype != "linear" or len(segment.pe_ranges) != 1:
            raise NotContiguous(
                f"volume {lv.vg}/{lv.name} has a {segment.segtype} segment over "
                f"{len(segment.pe_ranges)} PV ranges; loop activation mode (kernel without "
                "device-mapper) can only expose linear volumes that are one contiguous range of one PV. "
                "Recreate it with contiguous allocation, or run on a node with device-mapper."
            )
        current = segment.pe_ranges[0]
        if merged is None:
            merged = current
        elif current.pv == merged.pv and current.first_pe == merged.last_pe + 1:
            merged = PeRange(pv=merged.pv, first_pe=merged.first_pe, last_pe=current.last_pe)
        else:
            raise NotContiguous(
                f"volume {lv.vg}/{lv.name} is split into {len(lv.segments)} separate PV ranges; "
                "loop activation mode (kernel without device-mapper) needs one contiguous range. "
                "Copy its data to a new volume created by Cairn (always contiguous in this mode), "
                "or run on a node with device-mapper."
            )
    if merged is None:
        raise NotContiguous(f"volume {lv.vg}/{lv.name} has no segments, so it has no PV range to expose")
    return merged


def loop_extent(pe_range: PeRange, pe_start_bytes: int, extent_size_bytes: int) -> LoopExtent:
    """Byte offset and length of a PV range: data extents start pe_start bytes into the PV."""
    return LoopExtent(
        pv=pe_range.pv,
        offset=pe_start_bytes + pe_range.first_pe * extent_size_bytes,
        sizelimit=pe_range.count * extent_size_bytes,
    )


def loops_at(
    loops: Iterable[LoopDevice],
    backing: str,
    offset: int,
    device_key: Callable[[str], str] = lambda path: path,
) -> list[LoopDevice]:
    """Loops over the same backing device as `backing` (compared by device_key) starting at offset.

    Matching ignores sizelimit on purpose: after an lvextend the LV's loop is the one at the same
    offset, and the caller grows its sizelimit rather than attaching a second loop.
    """
    wanted = device_key(backing)
    return [loop for loop in loops if loop.offset == offset and device_key(loop.back_file) == wanted]


def format_bytes(size_bytes: int) -> str:
    """Binary units with one decimal, as operators read them: 3.1 GiB, 10 GiB, 512 B."""
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def validate_name(name: str, what: str) -> str:
    """Reject names lvm would refuse or read as an option, before any command runs."""
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(
            f"{what} name {name!r} is not valid for LVM: use 1-127 of A-Z a-z 0-9 + _ . - "
            "and do not start with a hyphen"
        )
    return name


def validate_tag(tag: str) -> str:
    if not _TAG_RE.match(tag) or tag.startswith("-"):
        raise ValueError(
            f"tag {tag!r} is not a valid LVM tag: use 1-1024 of A-Z a-z 0-9 _ + . - / = ! : # & "
            "and do not start with a hyphen"
        )
    return tag


def volume_tag(volume_id: str) -> str:
    """The tag that ties an LV to a Cairn volume id."""
    return validate_tag(VOLUME_TAG_PREFIX + volume_id)


def _filter_literal(path: str) -> str:
    if "|" in path or '"' in path or not path.startswith("/"):
        raise ValueError(f"device path {path!r} cannot be used in an lvm filter; give an absolute path")
    # Doubled backslash: lvm's config parser unescapes once, the filter regex engine sees "\.".
    return "".join("\\\\" + ch if ch in _REGEX_SPECIAL else ch for ch in path)


def device_filter_config(devices: Sequence[str]) -> str:
    """An lvm --config that makes lvm see exactly `devices` and nothing else on the host.

    global_filter (not filter) so every command, including pvcreate and the label scan, skips
    other disks without opening them. use_devicesfile=0 because the devices file would otherwise
    override the filter on hosts that use one (lvm2 >= 2.03.12). hints="none" keeps lvm from
    rewriting the host's /run/lvm/hints with our narrowed view.
    """
    accept = ", ".join(f'"a|^{_filter_literal(dev)}$|"' for dev in devices)
    entries = f'{accept}, "r|.*|"' if accept else '"r|.*|"'
    return f'devices {{ global_filter = [ {entries} ] use_devicesfile = 0 hints = "none" }}'
