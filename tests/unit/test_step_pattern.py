"""Step patterns are tenant input run by a root agent: linear time, bounded, clear errors."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import ValidationError

from cairn.api.checkpoint import CheckpointPolicySpec, UploadSpec
from cairn.step_pattern import compile_step_pattern

MiB = 1024 * 1024


def test_a_catastrophic_backtracking_pattern_matches_in_linear_time() -> None:
    # A backtracking engine needs about 2**40 steps here; a linear one, about a hundred.
    pattern = compile_step_pattern(r"^(a+)+$")
    name = "a" * 40 + "!"
    done = threading.Event()
    started = time.monotonic()
    threading.Thread(target=lambda: (pattern.step_of(name), done.set()), daemon=True).start()
    assert done.wait(2.0), "matching one directory name took more than 2 s"
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        (r"(\d+)_\1$", "linear time"),
        (r"(?<=step_)(\d+)$", "linear time"),
        ("(" + "a" * 300 + r"\d+)", "at most 256"),
        (r"(a{1000}){1000}(\d+)", "linear time"),
    ],
)
def test_patterns_no_linear_engine_runs_are_refused_with_the_reason(pattern: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        compile_step_pattern(pattern)


def test_a_policy_is_checked_in_code_as_well_as_in_its_schema() -> None:
    with pytest.raises(ValidationError, match="linear time"):
        CheckpointPolicySpec.model_validate({"commit": {"stepPattern": r"(\d+)\1"}})
    with pytest.raises(ValidationError, match="at most 1073741824"):
        UploadSpec(concurrency=8, part_size_bytes=256 * MiB)
    with pytest.raises(ValidationError, match="less than or equal to 16"):
        UploadSpec(concurrency=17)
    assert (UploadSpec().concurrency + 1) * UploadSpec().part_size_bytes <= 1024 * MiB
