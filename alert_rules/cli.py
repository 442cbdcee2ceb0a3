"""``orderpulse rules check|test|backtest``: the squad's authoring tools.

``register`` adds the ``rules`` command to the project CLI; each verb returns an
exit code (0 success, 1 findings or failures, 2 unusable input).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from importlib import resources
from pathlib import Path

from alert_rules.backtest import backtest, format_report, read_gold
from alert_rules.errors import AlertRulesError, RuleFileError
from alert_rules.loader import expand_paths, load_rule_set
from alert_rules.testing import run_test_file


def default_rules_dir() -> Path:
    """The default rule set shipped with the package (``alert_rules/rules``)."""
    return Path(str(resources.files("alert_rules") / "rules"))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rules`` with the verbs ``check``, ``test`` and ``backtest``."""
    rules = subparsers.add_parser(
        "rules",
        help="check, unit-test and backtest alert rules",
        description="Authoring tools for alert rule files (see alert_rules/README.md).",
    )
    verbs = rules.add_subparsers(dest="rules_verb", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    check = verbs.add_parser(
        "check",
        help="validate rule, routing and silence files",
        formatter_class=defaults,
    )
    check.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="files or directories (default: the shipped rule set)",
    )
    check.set_defaults(func=run_check)

    test = verbs.add_parser(
        "test", help="run rule unit tests written in YAML", formatter_class=defaults
    )
    test.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="test files or directories (default: the shipped rule tests)",
    )
    test.set_defaults(func=run_tests)

    replay = verbs.add_parser(
        "backtest",
        help="replay Gold history and report how often each rule would fire",
        formatter_class=defaults,
    )
    replay.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="local data directory holding gold/order_kpis",
    )
    replay.add_argument(
        "--rules",
        type=Path,
        nargs="*",
        default=None,
        help="rule files or directories (default: the shipped rule set)",
    )
    replay.add_argument(
        "--since",
        type=datetime.fromisoformat,
        default=None,
        help="first window start to replay (ISO-8601)",
    )
    replay.add_argument(
        "--until",
        type=datetime.fromisoformat,
        default=None,
        help="last window end to replay (ISO-8601)",
    )
    replay.set_defaults(func=run_backtest)


def run_check(args: argparse.Namespace) -> int:
    """Validate files; print ``file:line:column: rule "Name": message`` per problem."""
    paths = args.files or [default_rules_dir()]
    files = expand_paths(paths)
    try:
        rules = load_rule_set(paths)
    except RuleFileError as invalid:
        for problem in invalid.problems:
            print(problem, file=sys.stderr)
        print(f"{len(invalid.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(
        f"ok: {len(rules.rules)} rule(s), {len(rules.silences)} silence(s) in "
        f"{len(files)} file(s)"
    )
    return 0


def run_tests(args: argparse.Namespace) -> int:
    """Run rule unit tests; print one line per test and the failures."""
    paths = args.files or [default_rules_dir() / "tests"]
    failed = passed = 0
    for path in expand_paths(paths):
        try:
            outcomes = run_test_file(path)
        except RuleFileError as invalid:
            for problem in invalid.problems:
                print(problem, file=sys.stderr)
            return 2
        except AlertRulesError as bad:
            print(f"error: {bad}", file=sys.stderr)
            return 2
        for outcome in outcomes:
            mark = "PASS" if outcome.passed else "FAIL"
            print(f"{mark} {path.name}: {outcome.name}")
            for failure in outcome.failures:
                print(f"     {failure}")
            passed += outcome.passed
            failed += not outcome.passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def run_backtest(args: argparse.Namespace) -> int:
    """Replay Gold history from ``--data-dir`` and print per-rule figures."""
    try:
        rules = load_rule_set(args.rules or [default_rules_dir()])
    except RuleFileError as invalid:
        for problem in invalid.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        samples = read_gold(args.data_dir)
    except AlertRulesError as bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    report = backtest(rules, samples, args.since, args.until)
    for line in format_report(rules, report):
        print(line)
    return 0
