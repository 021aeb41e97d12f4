"""Requesting an association from a peer, and saying precisely why none was established.

pynetdicom decides between "rejected" and "aborted" on its ACSE thread, which can lose a race
with its own DUL thread: when the peer sends A-ASSOCIATE-RJ and closes the connection at once
(dcmtk ``storescp --refuse`` does), the DUL has already received and decoded the rejection,
but the ACSE finds the socket closed and reports an abort. The A-ASSOCIATE-RJ PDU itself is
the authoritative answer (PS3.8 9.3.4), so it is watched for here and reported with its
result, source and reason.

pynetdicom also reports a TCP connection that never opened (nothing listening, host down) as an
aborted association, and keeps the socket error to its log. Whether the transport opened is
watched for here too (``EVT_CONN_OPEN``); when it did not, one TCP connection attempt says why
(refused, timed out, no route), so "connection refused" is reported as such. Over TLS the
connection counts as open only after the handshake: when TCP connects but no open was seen, the
handshake failed (an untrusted certificate, another name, an old version).
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_RJ

from dicom_node.netlog import quiet_peer_faults

#: How long the diagnostic connection attempt after a failed connection may take.
DIAGNOSIS_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Rejection:
    """The fields of an A-ASSOCIATE-RJ PDU (PS3.8 Table 9-21) and their meaning."""

    result: int
    source: int
    diagnostic: int
    text: str

    @classmethod
    def from_pdu(cls, pdu: A_ASSOCIATE_RJ) -> Rejection:
        try:
            text = f"{pdu.result_str}, {pdu.source_str}: {pdu.reason_str}".lower()
        except ValueError:  # a value PS3.8 does not define: report the numbers
            text = f"result {pdu.result}, source {pdu.source}, reason {pdu.reason_diagnostic}"
        return cls(pdu.result or 0, pdu.source or 0, pdu.reason_diagnostic or 0, text)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class AssociationRequest:
    """An association as requested: established, or the reason it is not."""

    assoc: Association
    rejection: Rejection | None
    #: Why the transport connection could not be made (None when it was).
    connection_failure: str | None = None

    @property
    def established(self) -> bool:
        return bool(self.assoc.is_established)

    @property
    def rejected(self) -> bool:
        return self.rejection is not None or bool(self.assoc.is_rejected)

    def failure(self, peer: str = "peer") -> str:
        """Why the association was not established, for logs and outbox rows (no patient data)."""
        if self.connection_failure is not None:
            return f"{peer} not reachable: {self.connection_failure}"
        if self.rejection is not None:
            return f"association rejected by the {peer} ({self.rejection})"
        if self.assoc.is_rejected:
            return f"association rejected by the {peer}"
        if self.assoc.is_aborted:
            return f"association aborted by the {peer}"
        return f"{peer} not reachable (connection refused or timed out)"


def request_association(
    ae: AE,
    host: str,
    port: int,
    called_ae: str,
    *,
    tls_args: tuple[ssl.SSLContext, str] | None = None,
) -> AssociationRequest:
    """Ask ``host:port`` for an association with ``ae``'s requested contexts.

    ``tls_args`` (a client context and the name the peer's certificate must carry) makes the
    connection TLS; pynetdicom then reports the connection open only after the handshake, so a
    TCP connection that opens but whose handshake fails reads as "TLS handshake failed".
    """
    quiet_peer_faults()
    seen: list[Rejection] = []
    opened: list[bool] = []

    def on_open(_event: Event) -> None:
        opened.append(True)

    def on_pdu(event: Event) -> None:
        pdu = event.pdu  # type: ignore[attr-defined]
        if isinstance(pdu, A_ASSOCIATE_RJ):
            seen.append(Rejection.from_pdu(pdu))

    assoc = ae.associate(
        host,
        port,
        ae_title=called_ae,
        evt_handlers=[(evt.EVT_PDU_RECV, on_pdu), (evt.EVT_CONN_OPEN, on_open)],
        tls_args=tls_args,
    )
    if not opened:
        reason = diagnose_connection(host, port)
        if reason is None:
            reason = (
                "TLS handshake failed (certificate, name or version)"
                if tls_args is not None
                else f"the connection to {host}:{port} failed (it is accepted again now)"
            )
        return AssociationRequest(assoc, None, reason)
    if not assoc.is_established:
        # In the race above the RJ was decoded before the socket closed, so it is already seen.
        # If the ACSE gave up on its own (its timeout) while an RJ was arriving, the DUL thread
        # may still be decoding it: let it stop (it is being killed) before reading ``seen``.
        dul = assoc.dul
        if dul.is_alive():
            dul.join(timeout=1.0)
    return AssociationRequest(assoc, seen[0] if seen else None)


def diagnose_connection(host: str, port: int, timeout_s: float = DIAGNOSIS_TIMEOUT_S) -> str | None:
    """Why a TCP connection to ``host:port`` fails, from one attempt (no DICOM is sent);
    None when the connection opens now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port} (nothing listening)"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:g} s (connection timed out)"
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or type(exc).__name__})"
    return None
