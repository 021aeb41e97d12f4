"""Requesting an association from a peer, and saying precisely why none was established.

pynetdicom decides between "rejected" and "aborted" on its ACSE thread, which can lose a race
with its own DUL thread: when the peer sends A-ASSOCIATE-RJ and closes the connection at once
(dcmtk ``storescp --refuse`` does), the DUL has already received and decoded the rejection,
but the ACSE finds the socket closed and reports an abort. The A-ASSOCIATE-RJ PDU itself is
the authoritative answer (PS3.8 9.3.4), so it is watched for here and reported with its
result, source and reason.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_RJ


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
    #: Whether the transport connection (and TLS handshake, if any) was established.
    connected: bool = True
    tls: bool = False

    @property
    def established(self) -> bool:
        return bool(self.assoc.is_established)

    @property
    def rejected(self) -> bool:
        return self.rejection is not None or bool(self.assoc.is_rejected)

    def failure(self, peer: str = "peer") -> str:
        """Why the association was not established, for logs and outbox rows (no patient data)."""
        if not self.connected:
            if self.tls:
                return f"{peer} not reachable, or the TLS handshake failed (certificate, version)"
            return f"{peer} not reachable (connection refused or timed out)"
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
    connection TLS; a failed handshake reads as "not reachable".
    """
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
    if not assoc.is_established:
        # In the race above the RJ was decoded before the socket closed, so it is already seen.
        # If the ACSE gave up on its own (its timeout) while an RJ was arriving, the DUL thread
        # may still be decoding it: let it stop (it is being killed) before reading ``seen``.
        dul = assoc.dul
        if dul.is_alive():
            dul.join(timeout=1.0)
    return AssociationRequest(
        assoc, seen[0] if seen else None, connected=bool(opened), tls=tls_args is not None
    )
