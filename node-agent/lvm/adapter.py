"""The LVM adapter: the only code in Cairn that runs lvm commands (the role lvmd plays in TopoLVM).

Callers (CSI node service, pool reconciler) ask this class for pools (VGs) and volumes (LVs) and
never shell out themselves. Parsing and decisions live in `lvm_report.py`; this module only runs
commands and turns their failures into the typed errors of `lvm_errors.py`.

Two activation modes, chosen from the kernel (see `detect_activation_mode`):

* device-mapper: the normal LVM path, `lvchange -ay`, device `/dev/<vg>/<lv>`.
* loop: kernels without device-mapper. lvm only edits metadata (`--driverloaded n`), every LV is
  allocated as one contiguous PV range, and activation attaches a loop device over exactly that
  byte range of the PV. The loop device itself is the only activation state, so activation
  survives and is rediscovered across agent restarts without a state file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

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
    LoopDevice,
    LoopExtent,
    LvInfo,
    PvInfo,
    VgInfo,
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

# In loop mode lvm cannot zero a new LV (it never opens the LV), so the adapter clears this much
# at both ends itself. Without it a new volume could carry a previous volume's filesystem
# signature, and NodeStage's "format only if blank" would mount another tenant's data.
_WIPE_BYTES = 1024 * 1024

# linux/loop.h
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s2Q")  # struct loop_info64; lo_sizelimit is field 4
_LOOP_SIZELIMIT_FIELD = 4

_DEVICE_NODE_WAIT_S = 10.0


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


def _device_key(path: str) -> str:
    """Identity of a block device independent of which /dev name or symlink spells it."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    if stat.S_ISBLK(st.st_mode):
        return f"blk:{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return os.path.realpath(path)


def _loop_attached(loop_name: str) -> bool:
    return Path("/sys/block", Path(loop_name).name, "loop", "backing_file").exists()


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
        # Fixed for the life of a PV or VG, and each lvm call costs ~50 ms of process start-up,
        # so the create/activate path reads them once instead of on every call.
        self._pe_start: dict[str, int] = {}
        self._extent_size: dict[str, int] = {}

    def set_devices(self, devices: Sequence[str]) -> None:
        """Replace the allow-list, as disks come and go; lvm then sees only these devices."""
        self._filter = device_filter_config(devices)

    # ---- command plumbing -------------------------------------------------------------------

    def _lvm(self, subcommand: str, *args: str) -> str:
        argv = ["lvm", subcommand]
        if self.mode is ActivationMode.LOOP:
            # Without it lvm refuses lvcreate with "Required device-mapper target(s) not detected".
            argv += ["--driverloaded", "n"]
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
        self._pe_start.pop(device, None)
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
        self._pe_start.pop(device, None)
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
            if self.mode is ActivationMode.LOOP:
                # -an: lvm cannot activate here; -Zn: it cannot zero either (done below instead).
                mode_args = ["--activate", "n", "--zero", "n", "--alloc", "contiguous"]
            else:
                mode_args = ["--activate", "y", "--zero", "y", "--wipesignatures", "y", "--yes"]
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
            if self.mode is ActivationMode.LOOP:
                try:
                    self._wipe_ends(self._loop_extent(info))
                except (OSError, LvmError) as exc:
                    # A volume that may show stale data must not exist; drop it so a retry starts clean.
                    with contextlib.suppress(LvmError):
                        self._lvm("lvremove", f"{vg}/{lv}")
                    raise LvmError(
                        f"could not clear the first and last {format_bytes(_WIPE_BYTES)} of new volume "
                        f"{vg}/{lv} ({exc}); the volume was removed again, retry the create"
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
            args = ["--extents", str(extents)]
            if self.mode is ActivationMode.LOOP:
                args += ["--alloc", "contiguous"]
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
            if self.mode is ActivationMode.LOOP:
                extent = self._loop_extent(grown)
                for loop in self._loops_for(extent):
                    self._set_loop_sizelimit(loop.name, extent.sizelimit)
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

        `info` from a just-made lvcreate/lvextend saves a report round trip in loop mode.
        """
        validate_name(vg, "VG")
        validate_name(lv, "LV")
        with self._vg_lock(vg):
            if self.mode is ActivationMode.DEVICE_MAPPER:
                try:
                    self._lvm("lvchange", "--activate", "y", f"{vg}/{lv}")
                except LvmError as exc:
                    raise self._typed(exc, vg, lv) from exc
                path = self.get_lv(vg, lv).path
                self._wait_for_node(path)
                return path
            if info is None or (info.vg, info.name) != (vg, lv):
                info = self.get_lv(vg, lv)
            extent = self._loop_extent(info)
            existing = self._loops_for(extent)
            if existing:
                loop = existing[0]
                if loop.sizelimit != extent.sizelimit:
                    # The LV grew while no agent was around to resize its loop.
                    self._set_loop_sizelimit(loop.name, extent.sizelimit)
                return loop.name
            out = self._run(
                "losetup",
                "--find",
                "--show",
                # Direct I/O: no second page cache of the same data through the PV device.
                "--direct-io=on",
                "--offset",
                str(extent.offset),
                "--sizelimit",
                str(extent.sizelimit),
                extent.pv,
            )
            return out.strip()

    def deactivate(self, vg: str, lv: str) -> None:
        """Remove the volume's block device. Raises LvInUse while it is mounted or held open."""
        validate_name(vg, "VG")
        validate_name(lv, "LV")
        with self._vg_lock(vg):
            if self.mode is ActivationMode.DEVICE_MAPPER:
                try:
                    self._lvm("lvchange", "--activate", "n", f"{vg}/{lv}")
                except LvmError as exc:
                    raise self._typed(exc, vg, lv) from exc
                return
            extent = self._loop_extent(self.get_lv(vg, lv))
            for loop in self._loops_for(extent):
                self._detach_loop(loop.name, vg, lv)

    def device_path(self, vg: str, lv: str) -> str | None:
        """The volume's block device if it is active, else None."""
        info = self.get_lv(vg, lv)
        if self.mode is ActivationMode.DEVICE_MAPPER:
            return info.path if info.dm_active else None
        loops = self._loops_for(self._loop_extent(info))
        return loops[0].name if loops else None

    # ---- loop mode internals ----------------------------------------------------------------

    def _loop_extent(self, info: LvInfo) -> LoopExtent:
        pe_range = contiguous_pe_range(info)
        if pe_range.pv not in self._pe_start:
            self._pe_start[pe_range.pv] = self.get_pv(pe_range.pv).pe_start_bytes
        return loop_extent(pe_range, self._pe_start[pe_range.pv], info.extent_size_bytes)

    def _vg_extent_size(self, vg: str) -> int:
        if vg not in self._extent_size:
            self._extent_size[vg] = self.get_vg(vg).extent_size_bytes
        return self._extent_size[vg]

    def _list_loops(self) -> list[LoopDevice]:
        return parse_losetup_list(
            self._run("losetup", "--list", "--json", "--output", "NAME,BACK-FILE,OFFSET,SIZELIMIT,AUTOCLEAR")
        )

    def _loops_for(self, extent: LoopExtent) -> list[LoopDevice]:
        return loops_at(self._list_loops(), extent.pv, extent.offset, _device_key)

    def _detach_loop(self, loop_name: str, vg: str, lv: str) -> None:
        # O_EXCL fails with EBUSY while the device is mounted or claimed, and holding it closes the
        # window in which a mount could sneak in between the check and the detach. `losetup -d` on
        # a mounted loop would "succeed" by only setting autoclear, and lvremove would then free
        # extents a live filesystem still writes to.
        try:
            fd = os.open(loop_name, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise _in_use(vg, lv) from exc
            if exc.errno == errno.ENXIO:
                return  # detached meanwhile
            raise LvmError(f"cannot open {loop_name} of volume {vg}/{lv} to detach it: {exc}") from exc
        try:
            fcntl.ioctl(fd, _LOOP_CLR_FD, 0)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise LvmError(f"cannot detach {loop_name} of volume {vg}/{lv}: {exc}") from exc
        finally:
            os.close(fd)
        # The kernel detaches on the last close; another non-exclusive opener delays that.
        deadline = time.monotonic() + 2.0
        while _loop_attached(loop_name):
            if time.monotonic() > deadline:
                raise LvInUse(
                    f"volume {vg}/{lv}: {loop_name} is still held open by another process and will "
                    f"detach when it closes; find it with `fuser -v {loop_name}` and retry"
                )
            time.sleep(0.05)

    def _set_loop_sizelimit(self, loop_name: str, sizelimit: int) -> None:
        # losetup cannot change the size limit of an attached loop; LOOP_SET_STATUS64 can, online.
        fd = os.open(loop_name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            buf = bytearray(_LOOP_INFO64.size)
            fcntl.ioctl(fd, _LOOP_GET_STATUS64, buf)
            fields = list(_LOOP_INFO64.unpack(buf))
            fields[_LOOP_SIZELIMIT_FIELD] = sizelimit
            for attempt in range(20):
                try:
                    fcntl.ioctl(fd, _LOOP_SET_STATUS64, _LOOP_INFO64.pack(*fields))
                    return
                except OSError as exc:
                    # Older kernels return EAGAIN while dirty pages are being flushed.
                    if exc.errno != errno.EAGAIN or attempt == 19:
                        raise LvmError(
                            f"cannot resize {loop_name} to {format_bytes(sizelimit)}: {exc}; the volume "
                            "itself was grown, deactivate and activate it to use the new size"
                        ) from exc
                    time.sleep(0.1)
        finally:
            os.close(fd)

    @staticmethod
    def _wipe_ends(extent: LoopExtent) -> None:
        length = min(_WIPE_BYTES, extent.sizelimit)
        zeros = bytes(length)
        fd = os.open(extent.pv, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, zeros, extent.offset)
            if extent.sizelimit > length:
                os.pwrite(fd, zeros, extent.offset + extent.sizelimit - length)
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _wait_for_node(path: str) -> None:
        # Without udev, lvm creates /dev/<vg>/<lv> itself; with udev it appears asynchronously.
        deadline = time.monotonic() + _DEVICE_NODE_WAIT_S
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise LvmError(
                    f"{path} did not appear within {_DEVICE_NODE_WAIT_S:g} s after activation; "
                    "check that udev is running or that lvm's udev fallback is enabled"
                )
            time.sleep(0.05)
