"""OpenTelemetry traces and metrics for Postage (install ``postage[otel]``)::

    from postage.opentelemetry import PostageInstrumentor
    PostageInstrumentor().instrument()

or run the program under ``opentelemetry-instrument``, which finds this instrumentation
through its entry point. Every connection opened afterwards, on every API, sends its
trace context in the ``traceparent`` header, makes PRODUCER, CONSUMER and (for RPCs)
CLIENT spans following the messaging semantic conventions, and counts and times its
messages through the metrics API. See docs/observing.md.
"""

from __future__ import annotations

__all__ = ["PostageInstrumentor", "TelemetryMiddleware"]

try:
    from ._tooling.telemetry import PostageInstrumentor, TelemetryMiddleware
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"postage.opentelemetry needs OpenTelemetry: pip install 'postage[otel]' ({exc})"
    ) from exc
