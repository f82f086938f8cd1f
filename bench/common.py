"""Shared plumbing for benchmarks: results as ratios against a baseline measured in the same run."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from cairn.csi.proto import csi_pb2_grpc
from tests.testbed.bed import TestBed
from tests.testbed.leaks import SystemSnapshot, find_leaks, new_run_id

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; q in [0, 100]."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def report(
    name: str, value: float, baseline: float, unit: str, params: dict[str, Any], goal: str = ""
) -> float:
    """Write bench/results/<name>.json and print the RESULT line; returns the ratio."""
    ratio = value / baseline if baseline else float("inf")
    # A ratio on this noisy machine means something only beside how busy the host was.
    load = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "value": value,
        "baseline": baseline,
        "ratio": ratio,
        "unit": unit,
        "params": params,
        "goal": goal,
        "host_load_average": load,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"RESULT {name} ratio={ratio:.3f} value={value:.6g} baseline={baseline:.6g} {unit}"
        + (f"  (goal {goal})" if goal else "")
        + f"  load {load[0]} {load[1]} {load[2]}",
        flush=True,
    )
    return ratio


class Stoppable(Protocol):
    def stop(self) -> None: ...


StoppableT = TypeVar("StoppableT", bound=Stoppable)


@contextmanager
def leak_checked(start: Callable[[str], StoppableT], what: str) -> Iterator[StoppableT]:
    """A bed started under a new run id, stopped and checked for leaks however the benchmark ends."""
    run_id = new_run_id()
    before = SystemSnapshot.take()
    bed = start(run_id)
    try:
        yield bed
    except BaseException:
        # Shown now: a leak found below would otherwise replace the error that caused it.
        traceback.print_exc()
        raise
    finally:
        bed.stop()
        leaks = find_leaks(run_id, before)
        if leaks:
            raise SystemExit(f"{what} leaked:\n  " + "\n  ".join(leaks))


@contextmanager
def bench_bed(*, with_s3: bool = False) -> Iterator[TestBed]:
    """A test bed that is torn down, and checked for leaks, however the benchmark ends."""
    with leak_checked(lambda run_id: TestBed(run_id).start(with_s3=with_s3), "benchmark") as bed:
        yield bed


class CsiClients:
    def __init__(self, controller_socket: Path, node_socket: Path) -> None:
        self._controller_channel = grpc.insecure_channel(f"unix://{controller_socket}")
        self._node_channel = grpc.insecure_channel(f"unix://{node_socket}")
        self.controller = csi_pb2_grpc.ControllerStub(self._controller_channel)
        self.node = csi_pb2_grpc.NodeStub(self._node_channel)

    def close(self) -> None:
        self._controller_channel.close()
        self._node_channel.close()
