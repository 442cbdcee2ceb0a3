"""Exporters: Azure Monitor custom logs and metrics, on-call notifications, and
the local console/JSON-lines default, behind a durable outbox.

Plain Python, no Spark; nothing here knows the rule engine. Start at
``build_exporters`` (``exporters.hub``).
"""

from exporters.config import ExporterConfig, load_config
from exporters.errors import (
    DeliveryError,
    ExporterConfigError,
    ExporterError,
    OutboxError,
)
from exporters.hub import ExporterHub, build_exporters
from exporters.models import AlertNotification

__all__ = [
    "AlertNotification",
    "DeliveryError",
    "ExporterConfig",
    "ExporterConfigError",
    "ExporterError",
    "ExporterHub",
    "OutboxError",
    "build_exporters",
    "load_config",
]
