"""The local default: JSON lines files in ``<data_dir>/exports`` and a readable
console, so the embedded demo shows alerts and KPIs without any Azure.

Files: ``alerts.jsonl`` (alert transitions), ``kpis.jsonl``, ``health.jsonl``;
notifications are written by the console receiver to ``notifications.jsonl``.
Values are the same records the custom tables get (column names and types).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from exporters.errors import OutboxError

PRINTED_MEMORY = 1000


class LocalFiles:
    """Appends records to JSON lines files and prints final KPI summaries."""

    def __init__(self, exports_dir: Path, console: TextIO | None = None) -> None:
        self.exports_dir = exports_dir
        self._console = console
        self._lock = threading.Lock()
        self._printed: dict[tuple[Any, Any], None] = {}
        exports_dir.mkdir(parents=True, exist_ok=True)

    def append(self, name: str, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        path = self.exports_dir / f"{name}.jsonl"
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with self._lock:
            try:
                with path.open("a", encoding="utf-8") as handle:
                    handle.write(text)
            except OSError as exc:
                raise OutboxError(f"local export {path}: cannot append: {exc}") from exc

    def print_kpis(self, records: Sequence[Mapping[str, Any]]) -> None:
        """One line per final whole-shop window; the per-dimension rows stay in
        the file so the console remains readable."""
        overall = [
            r for r in records if r.get("Dimension") == "all" and r.get("IsFinal")
        ]
        overall.sort(key=lambda r: (r["WindowStart"], r["Grain"]))
        for r in overall:
            # A final window's KPIs no longer change (a late event only bumps its
            # late count), so each is printed once even when it is published again.
            key = (r["Grain"], r["WindowStart"])
            if key in self._printed:
                continue
            self._printed[key] = None
            if len(self._printed) > PRINTED_MEMORY:
                del self._printed[next(iter(self._printed))]
            print(kpi_line(r), file=self._console or sys.stdout, flush=True)


def kpi_line(r: Mapping[str, Any]) -> str:
    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    p95 = r.get("ApprovalLatencyP95Seconds")
    return (
        f"KPI {r['Grain']} {r['WindowStart']}: orders {r['OrdersCreated']}, "
        f"GMV {r['Gmv'] or 0:,.2f} BRL, cancelled {pct(r['CancellationRate'])}, "
        f"payment failures {pct(r['PaymentFailureRate'])}, "
        f"approval p95 {'-' if p95 is None else f'{p95:.1f}s'}"
    )
