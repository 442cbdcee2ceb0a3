"""One small HTTPS client for the webhook receivers (standard library only).

Answers are classified once, here: 2xx is delivered; 408, 425, 429 and 5xx, a
timeout or a dropped connection may succeed later (retryable, with the
receiver's ``Retry-After`` when given); any other answer never will. Error
messages name the receiver, never the URL, because webhook URLs carry tokens.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporters.errors import DeliveryError

RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_ERROR_BODY = 200


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The system trust store, plus ``ca_bundle`` when a private CA is configured."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def post_json(
    url: str,
    body: Mapping[str, Any],
    *,
    receiver: str,
    headers: Mapping[str, str],
    tls: ssl.SSLContext,
    timeout_s: float,
) -> HttpAnswer:
    """POST ``body`` as JSON; raise ``DeliveryError`` unless the answer is 2xx."""
    data = json.dumps(body, allow_nan=False).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST")  # noqa: S310
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", "orderpulse-exporters/0.1")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(  # noqa: S310 (scheme checked by config)
            request, timeout=timeout_s, context=tls
        ) as response:
            return HttpAnswer(status=response.status, body=response.read())
    except urllib.error.HTTPError as exc:
        raise _refused(receiver, exc) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise DeliveryError(
            f"receiver {receiver}: no answer ({type(exc).__name__})", retryable=True
        ) from None
    except urllib.error.URLError as exc:
        # Covers refused connections and TLS failures; a TLS failure will not
        # heal by itself, but an endpoint restarting looks the same from here.
        raise DeliveryError(
            f"receiver {receiver}: cannot connect ({type(exc.reason).__name__})",
            retryable=True,
        ) from None


def _refused(receiver: str, exc: urllib.error.HTTPError) -> DeliveryError:
    status = exc.code
    detail = exc.read()[:_MAX_ERROR_BODY].decode("utf-8", "replace")
    return DeliveryError(
        f"receiver {receiver}: HTTP {status} {detail!r}",
        retryable=status in RETRYABLE_STATUSES,
        status=status,
        retry_after_s=parse_retry_after(exc.headers.get("Retry-After")),
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    reference = now or datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())
