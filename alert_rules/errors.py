"""The one exception hierarchy of the alert rule engine.

Every error says what is wrong and where. ``retryable`` tells the caller whether
trying the same operation again may succeed (a Delta write that hit a transient
storage error) or not (a rule file with a typo).
"""

from __future__ import annotations

from dataclasses import dataclass


class AlertRulesError(Exception):
    """Root of every error raised by ``alert_rules``."""

    retryable: bool = False


@dataclass(frozen=True)
class RuleProblem:
    """One problem found in a rule, routing or silence file, with its position."""

    file: str
    line: int
    column: int
    message: str
    rule: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        if self.rule is not None:
            return f'{where}: rule "{self.rule}": {self.message}'
        return f"{where}: {self.message}"


class RuleFileError(AlertRulesError):
    """One or more rule files are invalid; ``problems`` lists every finding."""

    retryable = False

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(str(problem) for problem in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in rule files:\n{lines}")


class SampleError(AlertRulesError):
    """A Gold KPI row could not be turned into a sample (missing or bad column)."""

    retryable = False


class StateStoreError(AlertRulesError):
    """Loading or saving the engine state failed; storage errors may be transient."""

    retryable = True


class StateFormatError(AlertRulesError):
    """A persisted state document has a shape this version cannot read."""

    retryable = False


class RuleTestError(AlertRulesError):
    """A rule unit test file is malformed (not: a test that fails)."""

    retryable = False
