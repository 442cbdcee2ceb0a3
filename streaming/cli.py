"""The ``orderpulse`` command: one entry point, a verb per job.

Each package adds its own verbs (``alert_rules.cli``, ``exporters.cli``,
``streaming.produce``); this module only builds the parser and dispatches. A failure
prints one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from streaming import logs

ENV_LOG_LEVEL = "ORDERPULSE_LOG_LEVEL"
ENV_LOG_FORMAT = "ORDERPULSE_LOG_FORMAT"
BENCHMARKS = ("pipeline", "rules", "exporters", "kafka")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orderpulse",
        description="Real-time monitoring and alerting for the orders flow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get(ENV_LOG_LEVEL, "WARNING"),
        help=f"log level on stderr [{ENV_LOG_LEVEL}]",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get(ENV_LOG_FORMAT, "text"),
        help=f"key=value text or JSON lines [{ENV_LOG_FORMAT}]",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run_parser = verbs.add_parser(
        "run",
        help="run the pipeline (embedded source by default)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from streaming.kafka_config import add_source_arguments
    from streaming.run import add_arguments

    add_arguments(run_parser)
    add_source_arguments(run_parser)
    run_parser.set_defaults(func=_run)

    from alert_rules.cli import register as register_rules
    from exporters.cli import register as register_exporters
    from streaming.produce import register as register_produce

    bench_parser = verbs.add_parser(
        "bench",
        help="run a benchmark and print its figures",
        description="Benchmarks live in bench/ of a source checkout; each prints its "
        "figures. Extra arguments go to the benchmark.",
    )
    bench_parser.add_argument("name", choices=BENCHMARKS, help="which benchmark")
    bench_parser.add_argument("args", nargs=argparse.REMAINDER, help="its options")
    bench_parser.set_defaults(func=_bench)

    register_produce(verbs)
    register_rules(verbs)
    register_exporters(verbs)
    return parser


def _run(args: argparse.Namespace) -> int:
    from streaming.kafka_config import settings_from_args
    from streaming.run import RunOptions, run
    from streaming.spark_session import build_spark_session

    kafka_options: dict[str, str] = {}
    if args.source == "kafka":
        kafka_options = settings_from_args(args).spark_options()
    options = RunOptions(
        data_dir=args.data_dir,
        duration_s=args.duration,
        source=args.source,
        orders_per_minute=args.orders_per_minute,
        seed=args.seed,
        backfill_minutes=args.backfill_minutes,
        incidents=tuple(args.incidents),
        default_incidents=args.default_incidents,
        bad_share=args.bad_share,
        trigger_seconds=args.trigger_seconds,
        rules_dir=args.rules_dir,
        alerts=args.alerts,
        kafka_options=kafka_options,
    )
    print("Starting Spark (local mode)...", flush=True)
    spark = build_spark_session()
    return run(options, spark)


def _bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / f"bench_{args.name}.py").exists():
        print(f"orderpulse bench: no bench/ folder under {root}", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", f"bench.bench_{args.name}", *args.args]
    return subprocess.call(command, cwd=root)  # noqa: S603 - fixed module name


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, json_lines=args.log_format == "json")
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the one clear line; details are in the log
        if args.log_level.upper() == "DEBUG":
            raise
        print(f"orderpulse {args.verb}: error: {error}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
