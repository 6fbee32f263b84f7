"""The agents' listener's TLS key, and the pin FPBL agents hold to it.

An FPBL agent knows its server by one fact it is booted with: ``rhaas.pin=``, the SHA-256 of the DER of
the listener's certificate. No certificate authority is involved (a node has no name to verify and no
trust store), so the certificate is self-signed, made once, on the first start, and kept with its key in
one PEM file (``[provisioning] agent_tls_key``, readable by the server only). Replacing the file changes
the pin: FPBLs booted before then no longer reach the server and must be booted again (a network boot
hands out the new pin).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
from pathlib import Path

_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.+?)\s+-----END CERTIFICATE-----", re.S)
#: How long the certificate is valid; agents do not look (a pin does not expire), other clients might.
VALIDITY = dt.timedelta(days=3650)


class AgentKeyError(RuntimeError):
    """The agents' listener's key file cannot be read, made, or has no certificate."""


def pin_of(path: str | Path) -> str:
    """The SHA-256 (hex) of the DER of the first certificate in the PEM file ``path``."""
    try:
        found = _CERT.search(Path(path).read_bytes())
    except OSError as exc:
        raise AgentKeyError(f"cannot read the agents' TLS key file {path}: {exc.strerror}") from None
    if found is None:
        raise AgentKeyError(f"{path} holds no certificate (-----BEGIN CERTIFICATE-----)")
    return hashlib.sha256(base64.b64decode(b"".join(found.group(1).split()))).hexdigest()


def ensure_key(path: str | Path) -> str:
    """Make ``path`` (an EC P-256 key and its self-signed certificate, mode 0600) unless it exists; the
    pin of the certificate in it."""
    path = Path(path)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.with_name(path.name + ".new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(_new_key_and_certificate())
            os.replace(path.with_name(path.name + ".new"), path)
        except OSError as exc:
            raise AgentKeyError(f"cannot write the agents' TLS key file {path}: {exc.strerror}") from None
    return pin_of(path)


def _new_key_and_certificate() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rhaas agents' listener")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem_key + cert.public_bytes(serialization.Encoding.PEM)
