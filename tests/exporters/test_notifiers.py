"""Each on-call receiver, through the hub and outbox, against a loopback HTTPS
server: what arrives must carry severity, what, where, value vs threshold,
since when, runbook and dashboard; resolve closes what firing opened."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from exporters import ExporterConfigError, build_exporters, load_config
from exporters.hub import ExporterHub
from tests.exporters.conftest import FakeClock, ReceiverServer, notification

ROUTING_KEY = "R0UT1NG-KEY-do-not-leak-1f3a"
HOOK_TOKEN = "hook-token-do-not-leak-77c2"
DASHBOARD = "https://dashboards.example.com/orderpulse"


def receiver_env(server: ReceiverServer, ca_bundle: Path) -> dict[str, str]:
    return {
        "ORDERPULSE_RECEIVERS": "oncall,squad-slack,teams,hook",
        "ORDERPULSE_RECEIVER_ONCALL_TYPE": "pagerduty",
        "ORDERPULSE_RECEIVER_ONCALL_URL": f"{server.url}/v2/enqueue",
        "ORDERPULSE_RECEIVER_ONCALL_ROUTING_KEY": ROUTING_KEY,
        "ORDERPULSE_RECEIVER_SQUAD_SLACK_TYPE": "slack",
        "ORDERPULSE_RECEIVER_SQUAD_SLACK_URL": (
            f"{server.url}/services/T1/B2/slacksecret9"
        ),
        "ORDERPULSE_RECEIVER_TEAMS_TYPE": "teams",
        "ORDERPULSE_RECEIVER_TEAMS_URL": f"{server.url}/workflows/run?sig=teamsig5",
        "ORDERPULSE_RECEIVER_HOOK_TYPE": "webhook",
        "ORDERPULSE_RECEIVER_HOOK_URL": f"{server.url}/hook",
        "ORDERPULSE_RECEIVER_HOOK_TOKEN": HOOK_TOKEN,
        "ORDERPULSE_EXPORTERS_CA_BUNDLE": str(ca_bundle),
        "ORDERPULSE_DASHBOARD_URL": DASHBOARD,
    }


def hub_for(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> ExporterHub:
    config = load_config(receiver_env(server, ca_bundle))
    return build_exporters(config, tmp_path, clock, console=io.StringIO())


def by_path(server: ReceiverServer, prefix: str) -> list[dict]:  # type: ignore[type-arg]
    return [r.json() for r in server.received if r.path.startswith(prefix)]


def test_pagerduty_trigger_and_resolve_share_the_fingerprint(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = hub_for(server, ca_bundle, tmp_path, clock)
    hub.publish_alerts([], [notification("firing"), notification("resolved")])
    hub.drain()

    trigger, resolve = by_path(server, "/v2/enqueue")
    assert trigger["event_action"] == "trigger"
    assert trigger["routing_key"] == ROUTING_KEY
    assert trigger["dedup_key"] == resolve["dedup_key"] == "fp-pay-sp"
    payload = trigger["payload"]
    assert payload["severity"] == "critical"
    assert "PaymentFailureRateHigh" in payload["summary"]
    assert "Payment failures above 5% in SP" in payload["summary"]
    assert payload["source"] == "dimension=region, dimension_value=SP"
    assert payload["timestamp"] == "2025-03-01T11:58:00Z"
    assert payload["custom_details"]["value"] == 0.12
    assert payload["custom_details"]["threshold"] == 0.05
    assert {"href": "https://runbooks.example.com/payments", "text": "Runbook"} in (
        trigger["links"]
    )
    assert {"href": DASHBOARD, "text": "Dashboard"} in trigger["links"]
    assert resolve == {
        "routing_key": ROUTING_KEY,
        "dedup_key": "fp-pay-sp",
        "event_action": "resolve",
    }
    keys = [r.headers["Idempotency-Key"] for r in server.received]
    assert keys == ["fp-pay-sp:firing", "fp-pay-sp:resolved"]


def test_slack_message_says_what_where_value_since_and_links(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = hub_for(server, ca_bundle, tmp_path, clock)
    hub.publish_alerts([], [notification(receivers=("squad-slack",))])
    hub.drain()

    (message,) = by_path(server, "/services/T1/B2/")
    assert message["text"].startswith("[FIRING] CRITICAL PaymentFailureRateHigh")
    assert "0.12 (threshold 0.05)" in message["text"]
    rendered = str(message["blocks"])
    for expected in (
        "*Severity:* critical",
        "*Where:* dimension=region, dimension_value=SP",
        "*Value:* 0.12 (threshold 0.05)",
        "*Since:* 2025-03-01T11:58:00Z",
        "<https://runbooks.example.com/payments|Runbook>",
        f"<{DASHBOARD}|Dashboard>",
        "fp-pay-sp",
    ):
        assert expected in rendered


def test_teams_gets_an_adaptive_card_and_resolve_is_marked_good(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = hub_for(server, ca_bundle, tmp_path, clock)
    hub.publish_alerts(
        [],
        [
            notification(receivers=("teams",)),
            notification("resolved", receivers=("teams",)),
        ],
    )
    hub.drain()

    firing, resolved = by_path(server, "/workflows/run")
    assert firing["type"] == "message"
    (attachment,) = firing["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["version"] == "1.4"
    title = card["body"][0]
    assert title["color"] == "Attention"
    assert "PaymentFailureRateHigh" in title["text"]
    facts = {f["title"]: f["value"] for f in card["body"][1]["facts"]}
    assert facts["Value"] == "0.12 (threshold 0.05)"
    assert facts["Since"] == "2025-03-01T11:58:00Z"
    assert facts["Where"] == "dimension=region, dimension_value=SP"
    assert [a["url"] for a in card["actions"]] == [
        "https://runbooks.example.com/payments",
        DASHBOARD,
    ]
    resolved_card = resolved["attachments"][0]["content"]
    assert resolved_card["body"][0]["color"] == "Good"
    assert resolved_card["body"][0]["text"].startswith("[RESOLVED]")
    since = {f["title"]: f["value"] for f in resolved_card["body"][1]["facts"]}["Since"]
    assert since == "2025-03-01T11:58:00Z until 2025-03-01T12:05:00Z"


def test_generic_webhook_gets_the_notification_with_bearer_and_key(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = hub_for(server, ca_bundle, tmp_path, clock)
    hub.publish_alerts([], [notification(receivers=("hook",))])
    hub.drain()

    (request,) = [r for r in server.received if r.path == "/hook"]
    assert request.headers["Authorization"] == f"Bearer {HOOK_TOKEN}"
    assert request.headers["Idempotency-Key"] == "fp-pay-sp:firing"
    body = request.json()
    assert body["kind"] == "firing"
    assert body["fingerprint"] == "fp-pay-sp"
    assert body["value"] == 0.12
    assert body["threshold"] == 0.05
    assert body["starts_at"] == "2025-03-01T11:58:00+00:00"
    assert body["links"] == {
        "runbook": "https://runbooks.example.com/payments",
        "dashboard": DASHBOARD,
    }


def test_one_notification_reaches_every_routed_receiver_once(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    hub = hub_for(server, ca_bundle, tmp_path, clock)
    everyone = ("oncall", "squad-slack", "teams", "hook", "oncall")
    hub.publish_alerts([], [notification(receivers=everyone)])
    hub.drain()

    paths = sorted(r.path.split("?")[0] for r in server.received)
    assert paths == [
        "/hook",
        "/services/T1/B2/slacksecret9",
        "/v2/enqueue",
        "/workflows/run",
    ]
    assert hub.outbox.pending_count() == 0


def test_an_unconfigured_receiver_name_falls_back_to_the_console(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path, clock: FakeClock
) -> None:
    console = io.StringIO()
    config = load_config(receiver_env(server, ca_bundle))
    hub = build_exporters(config, tmp_path, clock, console=console)
    hub.publish_alerts([], [notification(receivers=("nobody-configured-this",))])
    hub.drain()

    assert server.received == []
    assert "[FIRING] CRITICAL PaymentFailureRateHigh" in console.getvalue()
    assert (tmp_path / "exports" / "notifications.jsonl").read_text().count("\n") == 1


def test_no_secret_reaches_logs_outbox_or_exports(
    server: ReceiverServer,
    ca_bundle: Path,
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.exporters.conftest import Fault

    caplog.set_level(logging.DEBUG)
    config = load_config(receiver_env(server, ca_bundle))
    hub = build_exporters(config, tmp_path, clock, console=io.StringIO())
    server.fail_next(Fault(status=503), Fault(status=404), Fault(reset=True))
    everyone = ("oncall", "squad-slack", "teams", "hook")
    hub.publish_alerts([], [notification(receivers=everyone)])
    for _ in range(5):
        hub.drain()
        clock.advance(600)
    hub.close()

    secrets = config.secrets()
    assert ROUTING_KEY in secrets
    assert HOOK_TOKEN in secrets
    written = "".join(
        p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()
    )
    logged = caplog.text + repr(config)
    for secret in secrets:
        assert secret not in written
        assert secret not in logged
    assert "HTTP 404" in caplog.text  # the failures were logged, just not the URLs


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "http://127.0.0.1:9/x",
        "ftp://127.0.0.1/x",
    ],
)
def test_plain_http_is_refused_outside_local_test_mode(url: str) -> None:
    env = {
        "ORDERPULSE_RECEIVERS": "hook",
        "ORDERPULSE_RECEIVER_HOOK_TYPE": "webhook",
        "ORDERPULSE_RECEIVER_HOOK_URL": url,
    }
    with pytest.raises(
        ExporterConfigError, match="receiver hook: URL must use https"
    ) as info:
        load_config(env)
    assert url not in str(info.value)


def test_plain_http_to_loopback_is_allowed_in_explicit_local_test_mode() -> None:
    env = {
        "ORDERPULSE_RECEIVERS": "hook",
        "ORDERPULSE_RECEIVER_HOOK_TYPE": "webhook",
        "ORDERPULSE_RECEIVER_HOOK_URL": "http://127.0.0.1:9/x",
        "ORDERPULSE_EXPORTERS_INSECURE_LOCAL": "1",
    }
    assert load_config(env).receivers["hook"].type == "webhook"
    env["ORDERPULSE_RECEIVER_HOOK_URL"] = "http://hooks.example.com/x"
    with pytest.raises(ExporterConfigError):
        load_config(env)


def test_secrets_can_come_from_a_mounted_secret_folder(tmp_path: Path) -> None:
    (tmp_path / "ORDERPULSE_RECEIVER_ONCALL_ROUTING_KEY").write_text(ROUTING_KEY + "\n")
    env = {
        "ORDERPULSE_RECEIVERS": "oncall",
        "ORDERPULSE_RECEIVER_ONCALL_TYPE": "pagerduty",
        "ORDERPULSE_SECRETS_DIR": str(tmp_path),
    }
    receiver = load_config(env).receivers["oncall"]
    assert receiver.routing_key is not None
    assert receiver.routing_key.reveal() == ROUTING_KEY
    assert ROUTING_KEY not in repr(receiver)


def test_a_receiver_without_its_url_is_a_configuration_error() -> None:
    env = {
        "ORDERPULSE_RECEIVERS": "squad-slack",
        "ORDERPULSE_RECEIVER_SQUAD_SLACK_TYPE": "slack",
    }
    with pytest.raises(
        ExporterConfigError, match="ORDERPULSE_RECEIVER_SQUAD_SLACK_URL"
    ):
        load_config(env)
