"""The LVM adapter: the only code in Cairn that runs lvm commands (the role lvmd plays in TopoLVM).

Callers (CSI node service, pool reconciler) ask this class for pools (VGs) and volumes (LVs) and
never shell out themselves. Parsing and decisions live in `report.py`; this module only runs
commands and turns their failures into the typed errors of `errors.py`. How an LV becomes a block
device (device-mapper, or a loop device where the kernel has no device-mapper) is `activation.py`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from cairn.node_agent.lvm.activation import Activation, DeviceMapperActivation, LoopActivation
from cairn.node_agent.lvm.errors import (
    InsufficientSpace,
    LvAlreadyExists,
    LvInUse,
    LvmError,
    LvNotFound,
    NotContiguous,
    VgNotFound,
)
from cairn.node_agent.lvm.report import (
    OWNED_TAG,
    ActivationMode,
    ErrorKind,
    LvInfo,
    PvInfo,
    VgInfo,
    classify_stderr,
    detect_activation_mode,
    device_filter_config,
    extents_for_size,
    format_bytes,
    meaningful_stderr,
    parse_lvs_segments,
    parse_pvs,
    parse_vgs,
    validate_name,
    validate_tag,
)

__all__ = ["DEFAULT_EXTENT_SIZE", "ActivationMode", "Lvm", "current_activation_mode", "run_command"]

DEFAULT_EXTENT_SIZE = 4 * 1024 * 1024

_REPORT_ARGS = ("--reportformat", "json", "--units", "b", "--nosuffix")
_VG_FIELDS = (
    "vg_name,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count,"
    "pv_count,vg_missing_pv_count,vg_tags"
)
_PV_FIELDS = "pv_name,vg_name,pv_size,pv_free,pe_start,pv_pe_count,pv_pe_alloc_count,pv_tags"
_LV_FIELDS = (
    "vg_name,lv_name,lv_uuid,lv_size,vg_extent_size,lv_attr,lv_path,lv_active,lv_tags,"
    "seg_start_pe,seg_size_pe,segtype,seg_pe_ranges"
)


def run_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout_s: float = 60.0) -> str:
    """Run one command and return its stdout; failures raise LvmError carrying argv and stderr."""
    command = list(argv)
    try:
        proc = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,  # an lvm prompt must fail, never hang or silently say yes
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise LvmError(
            f"{command[0]} did not finish within {timeout_s:g} s; another lvm command may hold the "
            "VG lock (see /run/lock/lvm) or a device is hanging",
            command=command,
            stderr=meaningful_stderr(stderr),
        ) from exc
    except FileNotFoundError as exc:
        raise LvmError(
            f"{command[0]} is not installed; the node image needs the lvm2 and util-linux packages",
            command=command,
        ) from exc
    if proc.returncode != 0:
        name = " ".join(command[:2]) if command[0] == "lvm" else command[0]
        raise LvmError(
            f"{name} failed",
            command=command,
            stderr=meaningful_stderr(proc.stderr),
            returncode=proc.returncode,
        )
    return proc.stdout


def current_activation_mode() -> ActivationMode:
    try:
        proc_misc = Path("/proc/misc").read_text()
    except OSError:
        proc_misc = ""
    return detect_activation_mode(proc_misc, os.path.exists("/dev/mapper/control"))


def _vg_not_found(vg: str, exc: LvmError | None = None) -> VgNotFound:
    return VgNotFound(
        f"pool VG {vg} is not visible on this node; check that its disks are attached and listed "
        "by `pvs`, or create the pool first",
        command=exc.command if exc else (),
        stderr=exc.stderr if exc else "",
        returncode=exc.returncode if exc else None,
    )


def _lv_not_found(vg: str, lv: str, exc: LvmError | None = None) -> LvNotFound:
    return LvNotFound(
        f"volume {vg}/{lv} does not exist; it was never created here or was already removed",
        command=exc.command if exc else (),
        stderr=exc.stderr if exc else "",
        returncode=exc.returncode if exc else None,
    )


def _in_use(vg: str, lv: str, exc: LvmError | None = None) -> LvInUse:
    return LvInUse(
        f"volume {vg}/{lv} is mounted or held open; unmount it (NodeUnpublish/NodeUnstage) before "
        "deactivating or removing it",
        command=exc.command if exc else (),
        stderr=exc.stderr if exc else "",
        returncode=exc.returncode if exc else None,
    )


class Lvm:
    """All LVM operations of one node.

    devices: when given, lvm sees only these block devices (a global_filter), so tests and
        narrowly-scoped agents never scan or touch the host's other disks.
    system_dir: LVM_SYSTEM_DIR for every lvm command. None keeps the host's /etc/lvm, which is what
        production wants: the host's lvm.conf applies and metadata backups land where operators
        look for them. Tests pass a temporary directory so archive/backup files of throwaway VGs
        never pile up in /etc/lvm, and a host lvm.conf (e.g. a devices file) cannot change results.
        lvm's lock directory stays /run/lock/lvm either way, so a test and the host still
        serialise on the same VG-name locks.
    mode: forces an activation mode (tests); None detects it from the kernel.

    Mutating calls hold a per-VG lock, so concurrent creates in one agent check free space and
    allocate as one step and cannot over-commit a pool. Across processes lvm's own VG lock keeps
    metadata consistent; Cairn runs one node agent per node.
    """

    def __init__(
        self,
        *,
        mode: ActivationMode | None = None,
        devices: Sequence[str] | None = None,
        system_dir: str | os.PathLike[str] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.mode = mode if mode is not None else current_activation_mode()
        self._filter = device_filter_config(devices) if devices is not None else None
        self._timeout_s = timeout_s
        env = dict(os.environ)
        env["LVM_SUPPRESS_FD_WARNINGS"] = "1"
        env["LC_ALL"] = "C"  # error classification matches lvm's English messages
        if system_dir is not None:
            env["LVM_SYSTEM_DIR"] = os.fspath(system_dir)
        self._env = env
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        # Fixed for the life of a VG, and each lvm call costs ~50 ms of process start-up, so the
        # create path reads it once instead of on every call.
        self._extent_size: dict[str, int] = {}
        self.activation: Activation = (
            LoopActivation(self._run, self.get_pv)
            if self.mode is ActivationMode.LOOP
            else DeviceMapperActivation(self._lvm, self._typed, self.get_lv)
        )

    def set_devices(self, devices: Sequence[str]) -> None:
        """Replace the allow-list, as disks come and go; lvm then sees only these devices."""
        self._filter = device_filter_config(devices)

    # ---- command plumbing -------------------------------------------------------------------

    def _lvm(self, subcommand: str, *args: str) -> str:
        argv = ["lvm", subcommand, *self.activation.lvm_args()]
        if self._filter is not None:
            argv += ["--config", self._filter]
        argv += args
        return run_command(argv, env=self._env, timeout_s=self._timeout_s)

    def _run(self, *argv: str) -> str:
        return run_command(argv, env=self._env, timeout_s=self._timeout_s)

    @contextlib.contextmanager
    def _vg_lock(self, vg: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(vg, threading.RLock())
        with lock:
            yield

    def _typed(self, exc: LvmError, vg: str, lv: str | None = None) -> LvmError:
        """The typed error for conditions whose meaning does not depend on the operation."""
        kind = classify_stderr(exc.stderr)
        if kind is ErrorKind.VG_NOT_FOUND:
            return _vg_not_found(vg, exc)
        if lv is not None:
            if kind is ErrorKind.LV_NOT_FOUND:
                return _lv_not_found(vg, lv, exc)
            if kind is ErrorKind.LV_EXISTS:
                return LvAlreadyExists(
                    f"volume {vg}/{lv} already exists; get_lv() it to reuse it, or pick another name",
                    command=exc.command,
                    stderr=exc.stderr,
                    returncode=exc.returncode,
                )
            if kind is ErrorKind.IN_USE:
                return _in_use(vg, lv, exc)
        return exc

    def _insufficient(
        self, vg: str, needed_bytes: int, what: str, exc: LvmError | None = None
    ) -> InsufficientSpace:
        try:
            free = self.get_vg(vg).free_bytes
        except LvmError:
            free = 0
        return InsufficientSpace(
            f"pool VG {vg} has {format_bytes(free)} free, {what} needs {format_bytes(needed_bytes)}; "
            "free space in the pool (delete volumes or add a disk) or ask for a smaller volume",
            vg=vg,
            free_bytes=free,
            needed_bytes=needed_bytes,
            command=exc.command if exc else (),
            stderr=exc.stderr if exc else "",
            returncode=exc.returncode if exc else None,
        )

    # ---- physical volumes -------------------------------------------------------------------

    def pvcreate(self, device: str) -> PvInfo:
        """Initialise a disk as a PV. Refuses (lvm prompts, stdin is closed) if it has a signature."""
        self.activation.forget_pv(device)
        self._lvm("pvcreate", device)
        return self.get_pv(device)

    def pvs(self, *, vg: str | None = None) -> list[PvInfo]:
        args = [*_REPORT_ARGS, "-o", _PV_FIELDS]
        if vg is not None:
            args += ["--select", f"vg_name={validate_name(vg, 'VG')}"]
        return parse_pvs(self._lvm("pvs", *args))

    def get_pv(self, device: str) -> PvInfo:
        pvs = parse_pvs(self._lvm("pvs", *_REPORT_ARGS, "-o", _PV_FIELDS, device))
        if not pvs:
            raise LvmError(f"{device} is not an LVM PV; run pvcreate on it first")
        return pvs[0]

    def pvremove(self, device: str) -> None:
        self.activation.forget_pv(device)
        self._lvm("pvremove", device)

    # ---- volume groups (pools) --------------------------------------------------------------

    def vgcreate(
        self,
        vg: str,
        devices: Sequence[str],
        *,
        extent_size_bytes: int = DEFAULT_EXTENT_SIZE,
        tags: Sequence[str] = (),
    ) -> VgInfo:
        validate_name(vg, "VG")
        if not devices:
            raise ValueError(f"pool VG {vg} needs at least one device")
        tag_args = [arg for tag in (OWNED_TAG, *tags) for arg in ("--addtag", validate_tag(tag))]
        with self._vg_lock(vg):
            self._extent_size.pop(vg, None)
            self._lvm("vgcreate", "--physicalextentsize", f"{extent_size_bytes}b", *tag_args, vg, *devices)
            return self.get_vg(vg)

    def vgextend(self, vg: str, devices: Sequence[str]) -> VgInfo:
        validate_name(vg, "VG")
        with self._vg_lock(vg):
            try:
                self._lvm("vgextend", vg, *devices)
            except LvmError as exc:
                raise self._typed(exc, vg) from exc
            return self.get_vg(vg)

    def vgremove(self, vg: str) -> None:
        """Remove an empty pool. Volumes must be removed first, so data is never dropped here."""
        with self._vg_lock(vg):
            remaining = self.list_lvs(vg)
            if remaining:
                names = ", ".join(lv.name for lv in remaining)
                raise LvmError(f"pool VG {vg} still holds volumes ({names}); remove them before the pool")
            self._extent_size.pop(vg, None)
            try:
                self._lvm("vgremove", vg)
            except LvmError as exc:
                raise self._typed(exc, vg) from exc

    def list_vgs(self) -> list[VgInfo]:
        """Every VG lvm can see (only the allow-listed devices' VGs when `devices` was given)."""
        return parse_vgs(self._lvm("vgs", *_REPORT_ARGS, "-o", _VG_FIELDS))

    def get_vg(self, vg: str) -> VgInfo:
        validate_name(vg, "VG")
        try:
            vgs = parse_vgs(self._lvm("vgs", *_REPORT_ARGS, "-o", _VG_FIELDS, vg))
        except LvmError as exc:
            raise self._typed(exc, vg) from exc
        if not vgs:
            raise _vg_not_found(vg)
        return vgs[0]

    # ---- logical volumes (volumes) ----------------------------------------------------------

    def list_lvs(self, vg: str) -> list[LvInfo]:
        validate_name(vg, "VG")
        try:
            return parse_lvs_segments(self._lvm("lvs", "--segments", *_REPORT_ARGS, "-o", _LV_FIELDS, vg))
        except LvmError as exc:
            raise self._typed(exc, vg) from exc

    def get_lv(self, vg: str, lv: str) -> LvInfo:
        """One LV, queried as vg/lv so hot paths (NodeStage) never report a whole VG."""
        validate_name(vg, "VG")
        validate_name(lv, "LV")
        try:
            lvs = parse_lvs_segments(
                self._lvm("lvs", "--segments", *_REPORT_ARGS, "-o", _LV_FIELDS, f"{vg}/{lv}")
            )
        except LvmError as exc:
            raise self._typed(exc, vg, lv) from exc
        if not lvs:
            raise _lv_not_found(vg, lv)
        return lvs[0]

    def lvcreate(self, vg: str, lv: str, size_bytes: int, tags: Sequence[str] = ()) -> LvInfo:
        """Create a volume of at least size_bytes (rounded up to whole extents), tagged as Cairn's.

        Raises InsufficientSpace, NotContiguous (loop mode: free space too fragmented),
        LvAlreadyExists or VgNotFound.
        """
        validate_name(vg, "VG")
        validate_name(lv, "LV")
        tag_args = [arg for tag in (OWNED_TAG, *tags) for arg in ("--addtag", validate_tag(tag))]
        with self._vg_lock(vg):
            extent_size = self._vg_extent_size(vg)
            extents = extents_for_size(size_bytes, extent_size)
            needed_bytes = extents * extent_size
            mode_args = self.activation.create_args()
            try:
                self._lvm("lvcreate", "--name", lv, "--extents", str(extents), *mode_args, *tag_args, vg)
            except LvmError as exc:
                kind = classify_stderr(exc.stderr)
                if kind is ErrorKind.INSUFFICIENT_SPACE:
                    raise self._insufficient(vg, needed_bytes, f"volume {lv}", exc) from exc
                if kind is ErrorKind.NOT_CONTIGUOUS:
                    pool = self.get_vg(vg)
                    raise NotContiguous(
                        f"pool VG {vg} has {format_bytes(pool.free_bytes)} free but no single contiguous "
                        f"free range of {format_bytes(needed_bytes)} for volume {lv}; in loop activation "
                        "mode (kernel without device-mapper) every volume must be one contiguous range. "
                        "Ask for a smaller volume, free adjacent space, or run on a node with device-mapper",
                        command=exc.command,
                        stderr=exc.stderr,
                        returncode=exc.returncode,
                    ) from exc
                raise self._typed(exc, vg, lv) from exc
            info = self.get_lv(vg, lv)
            try:
                self.activation.prepare_new(info)
            except (OSError, LvmError) as exc:
                # A volume that may show stale data must not exist; drop it so a retry starts clean.
                with contextlib.suppress(LvmError):
                    self._lvm("lvremove", f"{vg}/{lv}")
                raise LvmError(
                    f"could not zero new volume {vg}/{lv} ({exc}); it was removed again, so no one "
                    "reads an earlier volume's bytes; retry the create"
                ) from exc
            return info

    def lvextend(self, vg: str, lv: str, new_size_bytes: int) -> LvInfo:
        """Grow a volume to at least new_size_bytes. Asking for its size or less changes nothing.

        In loop mode the volume must grow in place (contiguous); when the extents right after it
        are taken this raises NotContiguous. An attached loop device is resized online.
        """
        validate_name(vg, "VG")
        validate_name(lv, "LV")
        with self._vg_lock(vg):
            current = self.get_lv(vg, lv)
            pool = self.get_vg(vg)
            extents = extents_for_size(new_size_bytes, current.extent_size_bytes)
            if extents <= current.extent_count:
                return current
            more_bytes = (extents - current.extent_count) * current.extent_size_bytes
            if extents - current.extent_count > pool.free_extents:
                raise self._insufficient(vg, more_bytes, f"growing volume {lv} by")
            args = ["--extents", str(extents), *self.activation.extend_args()]
            try:
                self._lvm("lvextend", *args, f"{vg}/{lv}")
            except LvmError as exc:
                kind = classify_stderr(exc.stderr)
                if kind is ErrorKind.NOT_CONTIGUOUS:
                    raise NotContiguous(
                        f"volume {vg}/{lv} cannot grow from {format_bytes(current.size_bytes)} to "
                        f"{format_bytes(extents * current.extent_size_bytes)}: the extents right after it "
                        f"are in use (pool VG {vg} has {format_bytes(pool.free_bytes)} free elsewhere). "
                        "In loop activation mode (kernel without device-mapper) a volume must stay one "
                        "contiguous range, so it uses contiguous allocation and can only grow in place. "
                        "Create a larger volume and copy the data, or run on a node with device-mapper",
                        command=exc.command,
                        stderr=exc.stderr,
                        returncode=exc.returncode,
                    ) from exc
                if kind is ErrorKind.INSUFFICIENT_SPACE:
                    raise self._insufficient(vg, more_bytes, f"growing volume {lv} by", exc) from exc
                raise self._typed(exc, vg, lv) from exc
            grown = self.get_lv(vg, lv)
            self.activation.after_extend(grown, current.size_bytes)
            return grown

    def lvremove(self, vg: str, lv: str) -> None:
        """Deactivate and remove a volume. Raises LvInUse while mounted, LvNotFound if absent."""
        validate_name(vg, "VG")
        validate_name(lv, "LV")
        with self._vg_lock(vg):
            self.deactivate(vg, lv)
            try:
                self._lvm("lvremove", f"{vg}/{lv}")
            except LvmError as exc:
                raise self._typed(exc, vg, lv) from exc

    # ---- activation -------------------------------------------------------------------------

    def activate(self, vg: str, lv: str, info: LvInfo | None = None) -> str:
        """Make the volume a block device and return its path. Safe to repeat, also after restarts.

        `info` from a just-made lvcreate/lvextend saves a report round trip.
        """
        validate_name(vg, "VG")
        validate_name(lv, "LV")
        with self._vg_lock(vg):
            if info is None or (info.vg, info.name) != (vg, lv):
                info = self.get_lv(vg, lv)
            return self.activation.activate(info)

    def deactivate(self, vg: str, lv: str) -> None:
        """Remove the volume's block device. Raises LvInUse while it is mounted or held open."""
        validate_name(vg, "VG")
        validate_name(lv, "LV")
        with self._vg_lock(vg):
            self.activation.deactivate(self.get_lv(vg, lv), _in_use(vg, lv))

    def device_path(self, vg: str, lv: str) -> str | None:
        """The volume's block device if it is active, else None."""
        return self.activation.device_path(self.get_lv(vg, lv))

    def _vg_extent_size(self, vg: str) -> int:
        if vg not in self._extent_size:
            self._extent_size[vg] = self.get_vg(vg).extent_size_bytes
        return self._extent_size[vg]
