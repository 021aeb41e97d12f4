"""Prometheus metrics of the audit writer and the syslog forwarder of this process."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from audit.trail import AuditTrail

PREFIX = "fracture_gateway"


class AuditCollector(Collector):
    """Records written and dropped, messages sent and dropped, and the queues' depths."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail

    def collect(self) -> Iterator[Metric]:
        trail = self._trail.counts()
        records = CounterMetricFamily(
            f"{PREFIX}_audit_records",
            "Audit records of DICOM network events, by what became of them",
            labels=["outcome"],
        )
        records.add_metric(["written"], float(trail.written))
        records.add_metric(["dropped"], float(trail.dropped))
        yield records
        yield CounterMetricFamily(
            f"{PREFIX}_audit_write_errors",
            "Failed attempts to write audit records to the database (retried)",
            value=float(trail.write_errors),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_audit_queue_depth",
            "Audit records waiting to be written",
            value=float(trail.queued),
        )
        forwarder = self._trail.forwarder
        if forwarder is None:
            return
        sent = forwarder.counts()
        messages = CounterMetricFamily(
            f"{PREFIX}_audit_syslog_messages",
            "Audit messages for the syslog collector, by what became of them",
            labels=["outcome"],
        )
        messages.add_metric(["sent"], float(sent.sent))
        messages.add_metric(["dropped"], float(sent.dropped))
        yield messages
        yield CounterMetricFamily(
            f"{PREFIX}_audit_syslog_send_errors",
            "Failed attempts to reach the syslog collector (the message is retried)",
            value=float(sent.send_errors),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_audit_syslog_queue_depth",
            "Audit messages waiting for the syslog collector",
            value=float(sent.queued),
        )
