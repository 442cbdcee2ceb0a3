"""Exporter configuration, read from the environment (and a secret folder).

Nothing here comes from rule files: rules name receivers, and only the
environment says what a name is and where it points. Secrets (webhook URLs,
PagerDuty routing keys, bearer tokens) are wrapped in ``Secret`` so a log line,
a repr or an exception message never shows them.

Variables (``<NAME>`` is the receiver name upper-cased, ``-`` as ``_``):

``ORDERPULSE_RECEIVERS``
    Comma-separated receiver names, e.g. ``oncall-pagerduty,squad-slack``.
``ORDERPULSE_RECEIVER_<NAME>_TYPE``
    ``pagerduty``, ``slack``, ``teams``, ``webhook`` or ``console``.
``ORDERPULSE_RECEIVER_<NAME>_URL`` (secret)
    The webhook URL; PagerDuty defaults to the Events API v2 endpoint.
``ORDERPULSE_RECEIVER_<NAME>_ROUTING_KEY`` (secret)
    PagerDuty integration key.
``ORDERPULSE_RECEIVER_<NAME>_TOKEN`` (secret, optional)
    Generic webhook: sent as ``Authorization: Bearer``.
``ORDERPULSE_SECRETS_DIR``
    A folder with one file per variable name (a mounted secret store); a
    variable set in the environment wins over its file.
``ORDERPULSE_LOGS_ENDPOINT``, ``ORDERPULSE_LOGS_DCR_ID``
    Logs Ingestion: data collection endpoint and the rule's immutable id.
``ORDERPULSE_LOGS_STREAM_ALERTS|KPIS|HEALTH``
    Stream names; default ``Custom-OrderAlerts_CL``, ``Custom-OrderKpis_CL``,
    ``Custom-OrderPipelineHealth_CL``.
``APPLICATIONINSIGHTS_CONNECTION_STRING`` (secret)
    Turns on OpenTelemetry metrics to Azure Monitor.
``ORDERPULSE_METRICS_INTERVAL_S``
    Metric export interval, default 60.
``ORDERPULSE_DASHBOARD_URL``
    Linked from every notification.
``ORDERPULSE_EXPORTERS_CA_BUNDLE``
    PEM file of extra CAs to trust (a private CA, or a test CA).
``ORDERPULSE_EXPORTERS_INSECURE_LOCAL``
    ``1`` allows ``http://`` to loopback hosts only: local test mode.
``ORDERPULSE_OUTBOX_MAX_ATTEMPTS``, ``ORDERPULSE_OUTBOX_BASE_DELAY_S``,
``ORDERPULSE_OUTBOX_MAX_DELAY_S``, ``ORDERPULSE_HTTP_TIMEOUT_S``
    Retry policy and per-request timeout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from exporters.errors import ExporterConfigError
from exporters.outbox import RECEIVER_NAME

ReceiverType = Literal["pagerduty", "slack", "teams", "webhook", "console"]
RECEIVER_TYPES: tuple[ReceiverType, ...] = (
    "pagerduty",
    "slack",
    "teams",
    "webhook",
    "console",
)
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class Secret:
    """A value that must never be printed. ``reveal()`` is the only way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class RetryPolicy:
    """How the outbox retries a receiver.

    The n-th consecutive failure waits ``min(max_delay_s, base_delay_s * 2**(n-1))``
    scaled by a random factor in ``[1 - jitter, 1]``, or the receiver's
    ``Retry-After`` if longer (capped at ``max_retry_after_s``). A message that
    failed ``max_attempts`` times is parked; the defaults ride out a receiver
    outage of about five hours before parking.
    """

    max_attempts: int = 40
    base_delay_s: float = 1.0
    max_delay_s: float = 600.0
    max_retry_after_s: float = 3600.0
    jitter: float = 0.5


@dataclass(frozen=True)
class ReceiverConfig:
    name: str
    type: ReceiverType
    url: Secret | None = None
    routing_key: Secret | None = None
    token: Secret | None = None


@dataclass(frozen=True)
class LogsIngestionConfig:
    endpoint: str
    rule_id: str
    alerts_stream: str = "Custom-OrderAlerts_CL"
    kpis_stream: str = "Custom-OrderKpis_CL"
    health_stream: str = "Custom-OrderPipelineHealth_CL"


@dataclass(frozen=True)
class MetricsConfig:
    connection_string: Secret
    export_interval_s: float = 60.0


@dataclass(frozen=True)
class ExporterConfig:
    """Everything the exporters need; ``load_config`` builds it."""

    receivers: Mapping[str, ReceiverConfig] = field(default_factory=dict)
    logs: LogsIngestionConfig | None = None
    metrics: MetricsConfig | None = None
    dashboard_url: str | None = None
    ca_bundle: Path | None = None
    insecure_local: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    http_timeout_s: float = 10.0

    @property
    def uses_azure(self) -> bool:
        return self.logs is not None or self.metrics is not None

    def secrets(self) -> list[str]:
        """Every secret value, for tests that scan output for leaks."""
        found = [
            s.reveal()
            for r in self.receivers.values()
            for s in (r.url, r.routing_key, r.token)
            if s is not None
        ]
        if self.metrics:
            found.append(self.metrics.connection_string.reveal())
        return found


def load_config(environ: Mapping[str, str] | None = None) -> ExporterConfig:
    """Read the configuration; with nothing set, the local default (console and
    JSON lines files) is what remains."""
    env = _Env(os.environ if environ is None else environ)
    config = ExporterConfig(
        receivers=_receivers(env),
        logs=_logs(env),
        metrics=_metrics(env),
        dashboard_url=env.get("ORDERPULSE_DASHBOARD_URL"),
        ca_bundle=_ca_bundle(env),
        insecure_local=env.get("ORDERPULSE_EXPORTERS_INSECURE_LOCAL") == "1",
        retry=RetryPolicy(
            max_attempts=int(env.number("ORDERPULSE_OUTBOX_MAX_ATTEMPTS", 40)),
            base_delay_s=env.number("ORDERPULSE_OUTBOX_BASE_DELAY_S", 1.0),
            max_delay_s=env.number("ORDERPULSE_OUTBOX_MAX_DELAY_S", 600.0),
        ),
        http_timeout_s=env.number("ORDERPULSE_HTTP_TIMEOUT_S", 10.0),
    )
    check_transport_security(config)
    return config


def check_transport_security(config: ExporterConfig) -> None:
    """HTTPS everywhere; plain HTTP only to loopback in explicit local test mode."""
    urls = {f"receiver {r.name}": r.url for r in config.receivers.values() if r.url}
    for where, secret in urls.items():
        require_https(secret.reveal(), where, config.insecure_local)
    if config.logs:
        require_https(
            config.logs.endpoint, "ORDERPULSE_LOGS_ENDPOINT", config.insecure_local
        )


def require_https(url: str, where: str, insecure_local: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and insecure_local and parts.hostname in LOOPBACK_HOSTS:
        return
    # The URL itself may carry a token: name the place, never the value.
    raise ExporterConfigError(
        f"{where}: URL must use https (plain http is allowed only to a loopback "
        "host with ORDERPULSE_EXPORTERS_INSECURE_LOCAL=1)"
    )


def env_prefix(receiver: str) -> str:
    return "ORDERPULSE_RECEIVER_" + receiver.upper().replace("-", "_")


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        folder = environ.get("ORDERPULSE_SECRETS_DIR")
        self._secrets_dir = Path(folder) if folder else None

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value:
            return value.strip()
        if self._secrets_dir is not None:
            path = self._secrets_dir / name
            if path.is_file():
                return path.read_text("utf-8").strip() or None
        return None

    def secret(self, name: str) -> Secret | None:
        value = self.get(name)
        return Secret(value) if value else None

    def number(self, name: str, default: float) -> float:
        text = self.get(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ExporterConfigError(f"{name}={text!r}: expected a number") from None
        if value <= 0:
            raise ExporterConfigError(f"{name}={text!r}: must be positive")
        return value


def _receivers(env: _Env) -> dict[str, ReceiverConfig]:
    names = [n.strip() for n in (env.get("ORDERPULSE_RECEIVERS") or "").split(",")]
    receivers: dict[str, ReceiverConfig] = {}
    for name in filter(None, names):
        if not RECEIVER_NAME.match(name):
            raise ExporterConfigError(
                f"ORDERPULSE_RECEIVERS: receiver name {name!r} must be lower-case "
                "letters, digits, '-' or '_'"
            )
        receivers[name] = _receiver(env, name)
    return receivers


def _receiver(env: _Env, name: str) -> ReceiverConfig:
    prefix = env_prefix(name)
    kind = env.get(f"{prefix}_TYPE")
    if kind not in RECEIVER_TYPES:
        raise ExporterConfigError(
            f"{prefix}_TYPE={kind!r}: receiver {name!r} needs a type, one of "
            f"{', '.join(RECEIVER_TYPES)}"
        )
    receiver_type: ReceiverType = kind
    url = env.secret(f"{prefix}_URL")
    if receiver_type == "pagerduty":
        url = url or Secret(PAGERDUTY_EVENTS_URL)
        if env.get(f"{prefix}_ROUTING_KEY") is None:
            raise ExporterConfigError(
                f"{prefix}_ROUTING_KEY is not set (environment or "
                f"ORDERPULSE_SECRETS_DIR): PagerDuty receiver {name!r} needs its "
                "integration key"
            )
    elif receiver_type != "console" and url is None:
        raise ExporterConfigError(
            f"{prefix}_URL is not set (environment or ORDERPULSE_SECRETS_DIR): "
            f"{receiver_type} receiver {name!r} needs its webhook URL"
        )
    return ReceiverConfig(
        name=name,
        type=receiver_type,
        url=url,
        routing_key=env.secret(f"{prefix}_ROUTING_KEY"),
        token=env.secret(f"{prefix}_TOKEN"),
    )


def _logs(env: _Env) -> LogsIngestionConfig | None:
    endpoint = env.get("ORDERPULSE_LOGS_ENDPOINT")
    rule_id = env.get("ORDERPULSE_LOGS_DCR_ID")
    if endpoint is None and rule_id is None:
        return None
    if endpoint is None or rule_id is None:
        raise ExporterConfigError(
            "Logs Ingestion needs both ORDERPULSE_LOGS_ENDPOINT and "
            "ORDERPULSE_LOGS_DCR_ID; only one is set"
        )
    defaults = LogsIngestionConfig(endpoint=endpoint, rule_id=rule_id)
    return LogsIngestionConfig(
        endpoint=endpoint,
        rule_id=rule_id,
        alerts_stream=env.get("ORDERPULSE_LOGS_STREAM_ALERTS")
        or defaults.alerts_stream,
        kpis_stream=env.get("ORDERPULSE_LOGS_STREAM_KPIS") or defaults.kpis_stream,
        health_stream=env.get("ORDERPULSE_LOGS_STREAM_HEALTH")
        or defaults.health_stream,
    )


def _metrics(env: _Env) -> MetricsConfig | None:
    connection_string = env.secret("APPLICATIONINSIGHTS_CONNECTION_STRING")
    if connection_string is None:
        return None
    return MetricsConfig(
        connection_string=connection_string,
        export_interval_s=env.number("ORDERPULSE_METRICS_INTERVAL_S", 60.0),
    )


def _ca_bundle(env: _Env) -> Path | None:
    value = env.get("ORDERPULSE_EXPORTERS_CA_BUNDLE")
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ExporterConfigError(
            f"ORDERPULSE_EXPORTERS_CA_BUNDLE={value}: no such file"
        )
    return path
