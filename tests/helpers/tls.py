"""Throw-away certificates for TLS tests, made with the openssl command line in a temp folder.

Never committed: each test session makes its own. A trusted authority signs the node's, a
sender's and a destination's certificates (names ``localhost`` and 127.0.0.1); a second, unknown
authority signs an impostor's.
"""

from __future__ import annotations

import ssl
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.tools import require_program


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its unencrypted PEM private key."""

    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class Pki:
    """Certificates for one test: ``ca`` is trusted, ``rogue_ca`` is not."""

    ca: Path
    node: KeyPair
    sender: KeyPair
    destination: KeyPair
    impostor: KeyPair

    def client_context(
        self,
        identity: KeyPair | None,
        *,
        maximum_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    ) -> ssl.SSLContext:
        """A client context trusting ``ca``, presenting ``identity`` (if any)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if maximum_version < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 refuses old versions at its default security level before any peer
            # does: lower it so the offer reaches the node and the node is what refuses.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # setting TLS 1.1 is deprecated
            context.maximum_version = maximum_version
        context.load_verify_locations(self.ca)
        if identity is not None:
            context.load_cert_chain(identity.certificate, identity.private_key)
        return context


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        [require_program("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def _authority(folder: Path, name: str) -> KeyPair:
    pair = KeyPair(folder / f"{name}.crt", folder / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN=fracture-gateway test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(pair.private_key), "-out", str(pair.certificate),
        cwd=folder,
    )  # fmt: skip
    return pair


def _issue(folder: Path, name: str, authority: KeyPair) -> KeyPair:
    pair = KeyPair(folder / f"{name}.crt", folder / f"{name}.key")
    request = folder / f"{name}.csr"
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", str(pair.private_key), "-out", str(request),
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-days", "2",
        "-CA", str(authority.certificate), "-CAkey", str(authority.private_key),
        "-CAcreateserial", "-extfile", str(extensions), "-out", str(pair.certificate),
        cwd=folder,
    )  # fmt: skip
    return pair


def make_pki(folder: Path) -> Pki:
    """Make the authorities and certificates of :class:`Pki` under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _authority(folder, "ca")
    rogue = _authority(folder, "rogue-ca")
    return Pki(
        ca=ca.certificate,
        node=_issue(folder, "node", ca),
        sender=_issue(folder, "sender", ca),
        destination=_issue(folder, "destination", ca),
        impostor=_issue(folder, "impostor", rogue),
    )
