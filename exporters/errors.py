"""The one exception hierarchy of the exporters package.

Every error says whether trying again later can help (``retryable``). The outbox
retries retryable delivery errors with backoff; everything else is either a
configuration mistake (fix the environment and restart) or a receiver that will
never accept the message (the message is parked for an operator).
"""

from __future__ import annotations


class ExporterError(Exception):
    """Root of every error raised by ``exporters``."""

    retryable: bool = False


class ExporterConfigError(ExporterError):
    """The environment or secret store describes an unusable configuration."""

    retryable = False


class OutboxError(ExporterError):
    """The outbox on the data directory could not be read or written."""

    retryable = True


class DeliveryError(ExporterError):
    """A receiver did not accept a message.

    ``retryable`` is set per instance: a timeout, a reset connection, 408, 429
    and 5xx may succeed later; other 4xx answers never will. ``retry_after_s``
    carries the receiver's own ``Retry-After`` when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s
