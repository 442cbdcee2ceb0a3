"""Hot reload: poll rule files for changes and load a new rule set when valid.

No threads: :meth:`RuleWatcher.poll` is called from ``Engine.tick``. A change is
detected by content hash (mtime alone misses edits within one second). An
invalid set is rejected with its problems logged, and the caller keeps the last
good rules.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alert_rules.errors import RuleFileError
from alert_rules.loader import expand_paths, load_rule_set
from alert_rules.model import RuleSet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleUpdate:
    """Outcome of a poll: a new rule set, or the problems that kept the old one."""

    rules: RuleSet | None = None
    errors: tuple[str, ...] = ()


class RuleWatcher:
    """Watches rule files or directories; remembers the last content it loaded."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        self._signature = self._current_signature()
        self._rejected: str | None = None

    def load(self) -> RuleSet:
        """Load the watched files now (raise RuleFileError when invalid)."""
        rules = load_rule_set(self.paths)
        self._signature = self._current_signature()
        return rules

    def _current_signature(self) -> str:
        digest = hashlib.sha256()
        for path in expand_paths(self.paths):
            digest.update(str(path).encode())
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"<unreadable>")
        return digest.hexdigest()

    def poll(self) -> RuleUpdate:
        """A new valid rule set if the files changed since the last load."""
        signature = self._current_signature()
        if signature in (self._signature, self._rejected):
            return RuleUpdate()
        try:
            rules = load_rule_set(self.paths)
        except RuleFileError as invalid:
            self._rejected = signature
            messages = tuple(str(problem) for problem in invalid.problems)
            for message in messages:
                logger.error("rules_reload_rejected problem=%r", message)
            return RuleUpdate(errors=messages)
        self._signature = signature
        self._rejected = None
        logger.info("rules_reloaded rules=%d", len(rules.rules))
        return RuleUpdate(rules=rules)
