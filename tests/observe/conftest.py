"""Postage instrumented with OpenTelemetry's SDK: spans and metrics kept in memory."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from postage.opentelemetry import PostageInstrumentor


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def by_name(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name.startswith(prefix)]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value or count) of each data point of metric ``name``."""
        data = self.metrics.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}),
                                   getattr(p, "value", getattr(p, "count", None)))
                                  for p in metric.data.data_points]
        return found

    def total(self, name: str, **attributes: str) -> Any:
        return sum(value for attrs, value in self.points(name)
                   if all(attrs.get(k.replace("_", ".")) == v for k, v in attributes.items()))


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentor = PostageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            component="test-component")
    try:
        yield Telemetry(spans, reader, tracer_provider)
    finally:
        instrumentor.uninstrument()


def one_trace(spans: list[ReadableSpan]) -> int:
    """The trace id all ``spans`` share (AssertionError otherwise)."""
    ids = {s.context.trace_id for s in spans}
    assert len(ids) == 1, [(s.name, s.context.trace_id) for s in spans]
    return ids.pop()


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None
