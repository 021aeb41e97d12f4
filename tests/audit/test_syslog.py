"""Audit messages as RFC 5424 syslog to a real local collector over UDP, TCP and TLS."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.syslog import (
    Severity,
    SyslogForwarder,
    format_message,
    frame_octet_counting,
    tls_context,
)
from config.settings import SyslogSettings, TlsSettings
from tests.helpers.syslog import (
    parse_rfc5424,
    split_octet_counted,
    syslog_listener,
    unresponsive_collector,
)
from tests.helpers.tls import Pki, make_pki
from tests.helpers.tools import free_port

XML = "<?xml version='1.0' encoding='utf-8'?><AuditMessage>{}</AuditMessage>"
WHEN = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def body(n: int) -> bytes:
    return XML.format(f'<EventIdentification n="{n}"/>').encode()


def settings(transport: str, port: int, **changes: object) -> SyslogSettings:
    return SyslogSettings(enabled=True, host="127.0.0.1", port=port, transport=transport, **changes)


@pytest.fixture
def forwarders() -> Iterator[list[SyslogForwarder]]:
    started: list[SyslogForwarder] = []
    yield started
    for forwarder in started:
        forwarder.stop(1.0)


def start(
    forwarders: list[SyslogForwarder], config: SyslogSettings, tls: ssl.SSLContext | None = None
) -> SyslogForwarder:
    forwarder = SyslogForwarder(config, tls=tls, hostname="gw.example.org")
    forwarder.start()
    forwarders.append(forwarder)
    return forwarder


def test_header_follows_rfc_5424() -> None:
    message = format_message(
        body(1),
        occurred_at=WHEN,
        hostname="gw host\x01.example",
        app_name="fracture-gateway",
        procid="4242",
        severity=Severity.NOTICE,
    )
    parsed = parse_rfc5424(message)
    # PS3.15 A.7: facility 10 (security/authorization), severity 5 (notice): PRI <85>.
    assert message.startswith(b"<85>1 2025-03-04T05:06:07.123456Z ")
    assert (parsed.facility, parsed.severity, parsed.version) == (10, 5, 1)
    assert parsed.timestamp == WHEN
    assert parsed.hostname == "gwhost.example"  # PRINTUSASCII only
    assert (parsed.app_name, parsed.procid, parsed.msgid) == (
        "fracture-gateway",
        "4242",
        "DICOM+RFC3881",
    )
    assert parsed.structured_data == "-"
    assert parsed.xml().tag == "AuditMessage"


def test_failures_are_sent_as_warnings() -> None:
    message = format_message(
        body(1), occurred_at=WHEN, hostname="h", app_name="a", procid="1", severity=Severity.WARNING
    )
    assert parse_rfc5424(message).severity == 4


@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8), st.integers(1, 50))
def test_octet_counting_frames_split_back_into_the_messages(
    messages: list[bytes], cut: int
) -> None:
    """Any bytes, newlines and digits included, survive framing and any split of the stream."""
    stream = b"".join(frame_octet_counting(b"x" + m) for m in messages)
    received: list[bytes] = []
    pending = b""
    for start in range(0, len(stream), cut):
        frames, pending = split_octet_counted(pending + stream[start : start + cut])
        received.extend(frames)
    assert received == [b"x" + m for m in messages]
    assert pending == b""


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_messages_reach_a_local_collector(
    transport: str, forwarders: list[SyslogForwarder]
) -> None:
    with syslog_listener(transport) as listener:
        forwarder = start(forwarders, settings(transport, listener.port))
        for n in range(5):
            assert forwarder.submit(body(n), occurred_at=WHEN)
        received = listener.wait_for(5)
    events = [m.xml().find("EventIdentification") for m in received]
    assert sorted(int(e.get("n", "-1")) for e in events if e is not None) == list(range(5))
    assert all(m.msgid == "DICOM+RFC3881" and m.hostname == "gw.example.org" for m in received)
    assert listener.errors == []
    assert forwarder.counts().sent == 5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def collector_tls(pki: Pki) -> ssl.SSLContext:
    """The collector's side of RFC 5425: its certificate; clients must present one from ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.destination.certificate, pki.destination.private_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_messages_reach_a_tls_collector_with_mutual_authentication(
    pki: Pki, forwarders: list[SyslogForwarder]
) -> None:
    with syslog_listener("tls", collector_tls(pki)) as listener:
        config = settings("tls", listener.port, ca_certificates=pki.ca, tls_server_name="localhost")
        node_tls = TlsSettings(certificate=pki.node.certificate, private_key=pki.node.private_key)
        forwarder = start(forwarders, config, tls_context(config, node_tls))
        for n in range(3):
            forwarder.submit(body(n), occurred_at=WHEN)
        received = listener.wait_for(3)
    assert [m.xml().tag for m in received] == ["AuditMessage"] * 3
    subjects = [dict(part[0] for part in c["subject"]) for c in listener.client_certificates]  # type: ignore[union-attr]
    assert {s["commonName"] for s in subjects} == {"node"}


def test_a_collector_with_an_untrusted_certificate_gets_nothing(
    pki: Pki, tmp_path: Path, forwarders: list[SyslogForwarder]
) -> None:
    rogue = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    rogue.load_cert_chain(pki.impostor.certificate, pki.impostor.private_key)
    with syslog_listener("tls", rogue) as listener:
        config = settings("tls", listener.port, ca_certificates=pki.ca, tls_server_name="localhost")
        forwarder = start(forwarders, config, tls_context(config, TlsSettings()))
        forwarder.submit(body(1), occurred_at=WHEN)
        deadline = time.monotonic() + 20
        while forwarder.counts().send_errors == 0:
            assert time.monotonic() < deadline, "the untrusted collector was never refused"
            time.sleep(0.02)
        assert listener.messages == []
        assert forwarder.counts().sent == 0


def test_a_collector_that_is_down_then_up_receives_what_was_queued(
    forwarders: list[SyslogForwarder],
) -> None:
    port = free_port()
    forwarder = start(forwarders, settings("tcp", port))
    for n in range(3):
        forwarder.submit(body(n), occurred_at=WHEN)
    deadline = time.monotonic() + 20
    while forwarder.counts().send_errors == 0:
        assert time.monotonic() < deadline, "the refused connection was never counted"
        time.sleep(0.02)
    assert forwarder.counts().sent == 0
    with syslog_listener("tcp", port=port) as listener:
        received = listener.wait_for(3, timeout_s=40)  # the retry backs off up to 30 s
    assert len(received) == 3
    assert forwarder.counts().sent == 3


def test_an_unresponsive_collector_never_blocks_the_caller(
    forwarders: list[SyslogForwarder],
) -> None:
    with unresponsive_collector() as port:
        forwarder = start(forwarders, settings("tcp", port, queue_size=4, timeout_s=5))
        started = time.monotonic()
        accepted = [forwarder.submit(body(n), occurred_at=WHEN) for n in range(200)]
        elapsed = time.monotonic() - started
        counts = forwarder.counts()
    assert elapsed < 0.5, f"200 submissions took {elapsed:.2f} s"
    # The sender holds one message while it waits to connect; four wait in the queue.
    assert sum(accepted) <= 5
    assert counts.dropped == 200 - sum(accepted)
    assert counts.sent == 0


def test_udp_to_a_port_nobody_listens_on_is_not_an_error_for_the_caller(
    forwarders: list[SyslogForwarder],
) -> None:
    forwarder = start(forwarders, settings("udp", free_port()))
    for n in range(3):
        assert forwarder.submit(body(n), occurred_at=WHEN)
    deadline = time.monotonic() + 20
    while forwarder.counts().sent + forwarder.counts().send_errors < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_settings_refuse_an_enabled_collector_without_a_host() -> None:
    with pytest.raises(ValueError, match=r"audit\.syslog\.host"):
        SyslogSettings(enabled=True)
    with pytest.raises(ValueError, match="app_name"):
        SyslogSettings(app_name="has space")
    assert SyslogSettings(transport="tls").effective_port == 6514
    assert SyslogSettings(transport="udp").effective_port == 514
