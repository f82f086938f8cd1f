"""Checkpoint step patterns: a regex each tenant writes into its policy, run by a root agent.

A backtracking engine would let one policy (`(a+)+$` against a long name) pin an agent's thread
for minutes, so patterns run on RE2, whose matching time is linear in the name, with a bounded
pattern length and a bounded compiled size. RE2 refuses what it cannot run in linear time
(backreferences, lookaround); the error says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2

DEFAULT_STEP_PATTERN = r"(\d+)$"
MAX_STEP_PATTERN_LENGTH = 256
_MAX_COMPILED_BYTES = 1 << 20


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a tenant's typo is reported to the tenant, not logged by the library
    options.max_mem = _MAX_COMPILED_BYTES
    return options


@dataclass(frozen=True)
class StepPattern:
    pattern: str
    _compiled: Any

    def step_of(self, name: str) -> int | None:
        """The step number in a checkpoint directory's name, or None when it has none."""
        found = self._compiled.search(name)
        if found is None or found.group(1) is None:
            return None
        digits: str = found.group(1)
        # int() would also take " 12", "1_000" and non-ASCII digits; a step is plain ASCII digits.
        return int(digits) if digits.isascii() and digits.isdigit() else None


def compile_step_pattern(pattern: str = DEFAULT_STEP_PATTERN) -> StepPattern:
    """Raises ValueError with a message for the policy's author."""
    if len(pattern) > MAX_STEP_PATTERN_LENGTH:
        raise ValueError(
            f"step pattern is {len(pattern)} characters; at most {MAX_STEP_PATTERN_LENGTH} are allowed"
        )
    try:
        compiled = re2.compile(pattern, _options())
    except re2.error as error:
        detail = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else str(error)
        raise ValueError(
            f"step pattern {pattern!r} is not a pattern Cairn can run in linear time (RE2 syntax; "
            f"no backreferences or lookaround): {detail}"
        ) from None
    if compiled.groups != 1:
        raise ValueError(
            f"step pattern {pattern!r} has {compiled.groups} groups; it needs exactly one, "
            r"around the step number, e.g. (\d+)$ or ^step_(\d+)$"
        )
    return StepPattern(pattern, compiled)
