"""``orderpulse exporters``: look at and repair the outbox.

Verbs: ``status`` (queues and backoff per receiver), ``parked`` (what was given
up on, and why), ``replay`` (put parked messages back, in their original
order), ``drop`` (delete one parked message for good) and ``check`` (what the
environment configures, secrets hidden). They work on the files under
``<data-dir>/outbox`` and are safe while the job runs: a running job picks up
replayed messages on its next pump.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from exporters.config import load_config
from exporters.errors import ExporterError
from exporters.outbox import Outbox

DEFAULT_DATA_DIR = "./data"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``exporters`` command and its verbs to a parent CLI."""
    parser = subparsers.add_parser(
        "exporters",
        help="inspect and repair alert delivery (the outbox)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ORDERPULSE_DATA_DIR", DEFAULT_DATA_DIR)),
        help="data directory holding outbox/ (env ORDERPULSE_DATA_DIR)",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    status = verbs.add_parser("status", help="pending and parked messages per receiver")
    status.set_defaults(func=_status)

    parked = verbs.add_parser("parked", help="list parked messages and why")
    parked.add_argument("--receiver", help="only this receiver")
    parked.set_defaults(func=_parked)

    replay = verbs.add_parser("replay", help="queue parked messages again, in order")
    replay.add_argument("--receiver", help="only this receiver (default: all)")
    replay.add_argument("--seq", type=int, help="only this message (see 'parked')")
    replay.set_defaults(func=_replay)

    drop = verbs.add_parser("drop", help="delete one parked message for good")
    drop.add_argument("--receiver", required=True)
    drop.add_argument("--seq", type=int, required=True)
    drop.set_defaults(func=_drop)

    check = verbs.add_parser(
        "check", help="show what the environment configures (no secrets)"
    )
    check.set_defaults(func=_check)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m exporters.cli exporters status``)."""
    parser = argparse.ArgumentParser(prog="orderpulse")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ExporterError as exc:
        print(f"orderpulse exporters: {exc}", file=sys.stderr)
        return 2
    return code


def _outbox(args: argparse.Namespace) -> Outbox:
    return Outbox(Path(args.data_dir) / "outbox")


def _status(args: argparse.Namespace) -> int:
    outbox = _outbox(args)
    counts = outbox.counts()
    if not counts:
        print(f"outbox {outbox.root}: empty")
        return 0
    now = datetime.now(UTC)
    print(f"{'receiver':<24} {'pending':>8} {'parked':>7}  oldest pending   backoff")
    for c in counts:
        age = _age(now, c.oldest_pending_at) if c.oldest_pending_at else "-"
        state = outbox.load_state(c.receiver)
        backoff = "-"
        if state.next_attempt_at and state.next_attempt_at > now:
            backoff = (
                f"{state.consecutive_failures} failures, next try in "
                f"{_age(state.next_attempt_at, now)}: {state.last_error}"
            )
        print(f"{c.receiver:<24} {c.pending:>8} {c.parked:>7}  {age:<16} {backoff}")
    return 1 if any(c.parked for c in counts) else 0


def _parked(args: argparse.Namespace) -> int:
    found = 0
    for m in _outbox(args).parked(args.receiver):
        found += 1
        parked_at = m.parked_at.isoformat() if m.parked_at else "?"
        print(
            f"{m.receiver} seq={m.seq} key={m.idempotency_key} "
            f"fingerprint={m.fingerprint} attempts={m.attempts} parked_at={parked_at}"
            f"\n    reason: {m.park_reason}"
        )
    if not found:
        print("no parked messages")
    return 0


def _replay(args: argparse.Namespace) -> int:
    moved = _outbox(args).replay(args.receiver, args.seq)
    print(f"replayed {moved} message(s); they are delivered on the next pump")
    return 0 if moved else 1


def _drop(args: argparse.Namespace) -> int:
    if _outbox(args).drop(args.receiver, args.seq):
        print(f"dropped {args.receiver} seq={args.seq}")
        return 0
    print(f"no parked message {args.receiver} seq={args.seq}", file=sys.stderr)
    return 1


def _check(args: argparse.Namespace) -> int:
    config = load_config()
    print("receivers:")
    for name, receiver in sorted(config.receivers.items()):
        print(f"  {name}: {receiver.type}")
    print("  console: console (always present; unconfigured names fall back here)")
    logs = config.logs
    print(f"logs ingestion: {'on, rule ' + logs.rule_id if logs else 'off'}")
    print(f"metrics: {'on' if config.metrics else 'off'}")
    print(
        f"local files: {'off' if config.uses_azure else 'on'} ({args.data_dir}/exports)"
    )
    return 0


def _age(later: datetime, earlier: datetime) -> str:
    seconds = int((later - earlier).total_seconds())
    hours, rest = divmod(max(0, seconds), 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"


if __name__ == "__main__":
    raise SystemExit(main())
