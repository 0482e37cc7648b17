"""A throwaway certificate authority and server certificate for test servers.

The files come from the ``openssl`` command-line tool rather than a Python
package: Debian's ``dovecot-core`` depends on ``openssl``, so wherever the test
Dovecot can run the tool is there, and no extra dependency is needed.  Elliptic
curve keys keep generation to a few milliseconds.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import HarnessError

__all__ = ["CertificateError", "TestCertificates", "make_certificates"]

_DAYS = "30"
_NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
# Python 3.13's default context sets VERIFY_X509_STRICT, which wants a critical
# basicConstraints and keyUsage on the CA and key identifiers on the leaf.
_CA_EXTENSIONS = [
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
]
_SERVER_EXTENSIONS = """\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
"""


class CertificateError(HarnessError):
    """The test certificates could not be generated."""


@dataclass(frozen=True, slots=True)
class TestCertificates:
    """PEM files: the CA a client must trust, and the server's certificate and key."""

    __test__ = False  # not a pytest test class, despite the name

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_certificates(directory: Path) -> TestCertificates:
    """Create (or reuse) a CA and a ``CN=localhost`` server certificate in ``directory``.

    The server certificate names ``IP:127.0.0.1`` and ``DNS:localhost``, so a
    client that verifies the hostname accepts either address.
    """
    certs = TestCertificates(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
    )
    if all(path.is_file() for path in (certs.ca_file, certs.cert_file, certs.key_file)):
        return certs
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = directory / "ca.key"
    csr = directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text(_SERVER_EXTENSIONS, encoding="ascii")
    ca = ["req", "-x509", *_NEW_KEY, "-subj", "/CN=inbound-mail test CA", *_CA_EXTENSIONS]
    _openssl(*ca, "-days", _DAYS, "-keyout", str(ca_key), "-out", str(certs.ca_file))
    request = ["req", "-new", *_NEW_KEY, "-subj", "/CN=localhost"]
    _openssl(*request, "-keyout", str(certs.key_file), "-out", str(csr))
    sign = ["x509", "-req", "-CA", str(certs.ca_file), "-CAkey", str(ca_key), "-CAcreateserial"]
    _openssl(
        *sign,
        "-days",
        _DAYS,
        "-extfile",
        str(extensions),
        "-in",
        str(csr),
        "-out",
        str(certs.cert_file),
    )
    return certs


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise CertificateError("the openssl command is missing: apt-get install openssl")
    try:
        subprocess.run([binary, *args], check=True, capture_output=True, text=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        raise CertificateError(f"openssl {args[0]} failed: {exc.stderr.strip()}") from exc
    except subprocess.TimeoutExpired as exc:
        raise CertificateError(f"openssl {args[0]} did not finish in 60 s") from exc
