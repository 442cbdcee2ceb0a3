"""The orderpulse command line: help that teaches, failures in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def orderpulse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streaming.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_help_lists_every_verb() -> None:
    result = orderpulse("--help")
    assert result.returncode == 0
    for verb in ("run", "produce", "rules", "exporters", "bench"):
        assert verb in result.stdout


def test_run_help_shows_defaults_and_environment() -> None:
    result = orderpulse("run", "--help")
    assert result.returncode == 0
    assert "(default: 300.0)" in result.stdout
    assert "ORDERPULSE_TOPIC" in result.stdout


def test_a_bad_setting_fails_in_one_line_before_spark_starts(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    result = orderpulse(
        "run",
        "--source",
        "kafka",
        "--eventhubs-connection-string-file",
        str(missing),
        "--data-dir",
        str(tmp_path),
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("orderpulse run: error:")
    assert str(missing) in lines[0]
    assert not (tmp_path / "bronze").exists()
