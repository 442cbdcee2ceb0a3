"""Authoring tools: shipped rule tests, `rules check|test|backtest`, Delta state."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from alert_rules.cli import default_rules_dir, register
from alert_rules.engine import Engine
from alert_rules.loader import load_rule_set
from alert_rules.state import DeltaStateStore
from alert_rules.testing import run_test_file
from tests.alert_rules.support import T0, FakeClock, row, status

SHIPPED_TESTS = sorted((default_rules_dir() / "tests").glob("*.yaml"))


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="orderpulse")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


@pytest.mark.parametrize("path", SHIPPED_TESTS, ids=[p.stem for p in SHIPPED_TESTS])
def test_shipped_rule_tests_pass(path: Path) -> None:
    outcomes = run_test_file(path)

    assert outcomes
    assert [o.failures for o in outcomes if not o.passed] == []


def test_every_default_rule_has_a_unit_test() -> None:
    rules = load_rule_set([default_rules_dir()])
    tested = "".join(p.read_text(encoding="utf-8") for p in SHIPPED_TESTS)

    assert {r.name for r in rules.rules} == {
        "PaymentFailuresByMethod", "CancellationSurge", "NoOrdersFromRegion",
        "ApprovalLatencyHigh", "OrderVolumeDrop", "PipelineStalled",
    }  # fmt: skip
    assert all(f"alertname: {r.name}" in tested for r in rules.rules)


def test_a_wrong_expectation_is_reported(tmp_path: Path) -> None:
    test_file = tmp_path / "wrong.yaml"
    test_file.write_text(
        f"rule_files: [{default_rules_dir() / 'orders.yaml'}]\n"
        "tests:\n"
        "  - name: expects a page that never comes\n"
        "    series:\n"
        "      - {grain: 5m, payment_method: pix, payments_approved: '90x4',"
        " payments_failed: '5x4'}\n"
        "    expect:\n"
        "      - at: 20m\n"
        "        alerts:\n"
        "          - labels: {alertname: PaymentFailuresByMethod}\n",
        encoding="utf-8",
    )

    outcomes = run_test_file(test_file)

    assert outcomes[0].failures == (
        "at 0:20:00: expected firing alert {'alertname': 'PaymentFailuresByMethod'}, "
        "not found",
    )
    assert cli("rules", "test", str(test_file)) == 1


def test_check_prints_positions_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n  - name: Lat\n    kind: threshold\n    kpi: latency\n"
        "    grain: 5m\n    above: {critical: 60}\n    annotations: {summary: x}\n",
        encoding="utf-8",
    )

    assert cli("rules", "check", str(bad)) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4:10: rule \"Lat\": 'kpi' must be one of" in err
    assert cli("rules", "check") == 0
    assert "ok: 6 rule(s)" in capsys.readouterr().out


def test_shipped_tests_pass_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("rules", "test") == 0
    assert "0 failed" in capsys.readouterr().out


def test_backtest_reads_gold_from_delta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = []
    for index, failed in enumerate([4] * 6 + [60] * 3 + [4] * 4):
        sample = row(
            5 * index,
            dimension="payment_method",
            value="pix",
            payments_approved=90,
            payments_failed=failed,
        )
        rows.append(sample.to_dict())
    write_deltalake(str(tmp_path / "gold" / "order_kpis"), pa.Table.from_pylist(rows))

    assert cli("rules", "backtest", "--data-dir", str(tmp_path)) == 0

    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("PaymentFailuresByMethod"))
    assert line.split()[1:] == ["2", "0h30m"]  # warning and critical, 15m each
    assert "2025-03-03T12:35:00+00:00 -> 2025-03-03T12:50:00+00:00" in out


def test_backtest_without_gold_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("rules", "backtest", "--data-dir", str(tmp_path)) == 2
    assert str(tmp_path / "gold" / "order_kpis") in capsys.readouterr().err


def test_delta_state_survives_a_restart(tmp_path: Path) -> None:
    rules = load_rule_set([default_rules_dir()])
    store = DeltaStateStore.in_data_dir(tmp_path)
    clock = FakeClock(T0 + timedelta(minutes=5))

    def pix(minute: int) -> object:
        return row(
            minute,
            dimension="payment_method",
            value="pix",
            payments_approved=40,
            payments_failed=60,
        )

    first = Engine(rules, store, clock)
    paged = first.evaluate([pix(0)], status(5)).notifications  # type: ignore[list-item]
    first.acknowledge(n.idempotency_key for n in paged)

    second = Engine(rules, store, clock)
    clock.now = T0 + timedelta(minutes=10)
    again = second.evaluate([pix(5)], status(10))  # type: ignore[list-item]

    assert [n.kind for n in paged] == ["firing"]
    assert again.notifications == ()
    assert {a.severity for a in second.alerts} == {"critical", "warning"}
    assert (tmp_path / "gold" / "alert_state" / "_delta_log").is_dir()
