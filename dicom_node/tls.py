"""TLS contexts for DICOM (PS3.15 Annex B, BCP 195): the SCP's listener, result delivery.

Built once at start-up from :class:`config.settings.TlsSettings`; a missing or unreadable file
stops the start with the setting's name. The handshake itself never runs in the accept loop
(see :mod:`dicom_node.transport`).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from config.settings import TlsSettings, TlsVersion

_VERSIONS = {
    TlsVersion.TLS_1_2: ssl.TLSVersion.TLSv1_2,
    TlsVersion.TLS_1_3: ssl.TLSVersion.TLSv1_3,
}


class TlsConfigurationError(ValueError):
    """A TLS setting names a file that cannot be used."""


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The SCP's context: our certificate, client certificates checked against the CAs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.minimum_version]
    if tls.certificate is None or tls.private_key is None:
        raise TlsConfigurationError("node.tls.certificate and node.tls.private_key are required")
    _load_chain(context, tls.certificate, tls.private_key)
    if tls.ca_certificates is not None:
        _load_authorities(context, tls.ca_certificates)
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """Result delivery's context: the destination's certificate and name are verified."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = _VERSIONS[tls.minimum_version]
    if tls.ca_certificates is not None:
        _load_authorities(context, tls.ca_certificates)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(context, tls.certificate, tls.private_key)
    return context


def _load_chain(context: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    try:
        context.load_cert_chain(certificate, private_key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigurationError(
            f"node.tls.certificate {certificate} / private_key {private_key} unusable: {exc}"
        ) from exc


def _load_authorities(context: ssl.SSLContext, ca_certificates: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigurationError(
            f"node.tls.ca_certificates {ca_certificates} unusable: {exc}"
        ) from exc
