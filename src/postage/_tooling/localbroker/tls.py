"""A throwaway CA, server and client certificates for a TLS listener (openssl)."""

from __future__ import annotations

__all__ = ['TlsFiles', 'generate_tls_files']

import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .tools import LocalBrokerError, _run

# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    """PEM files made by :func:`generate_tls_files`."""

    ca_file: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(args: Sequence[str], cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise LocalBrokerError("openssl is not installed (apt-get install -y openssl)")
    proc = _run([exe, *args], timeout=60, cwd=cwd)
    if proc.returncode != 0:
        raise LocalBrokerError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def generate_tls_files(directory: Path, *, days: int = 3650) -> TlsFiles:
    """Make a CA, a server certificate (localhost, 127.0.0.1, ::1) and a client certificate
    (CN ``guest``) in ``directory`` with the ``openssl`` command-line tool."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    ca_ext = d / "ca.ext"
    ca_ext.write_text(
        "basicConstraints = critical, CA:TRUE\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    server_ext = d / "server.ext"
    server_ext.write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    client_ext = d / "client.ext"
    client_ext.write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = clientAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    for key in ("ca", "server", "client"):
        _openssl(["genrsa", "-out", f"{key}.key", "2048"], d)
    # A self-signed CA, made as a CSR signed by its own key so the extensions come from file.
    _openssl(["req", "-new", "-key", "ca.key", "-subj", "/CN=Postage test CA", "-out", "ca.csr"], d)
    _openssl(
        [
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-signkey",
            "ca.key",
            "-days",
            str(days),
            "-sha256",
            "-extfile",
            "ca.ext",
            "-out",
            "ca.pem",
        ],
        d,
    )
    for key, cn, ext in (("server", "localhost", "server.ext"), ("client", "guest", "client.ext")):
        _openssl(
            ["req", "-new", "-key", f"{key}.key", "-subj", f"/CN={cn}", "-out", f"{key}.csr"], d
        )
        _openssl(
            [
                "x509",
                "-req",
                "-in",
                f"{key}.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                str(random.getrandbits(63)),
                "-days",
                str(days),
                "-sha256",
                "-extfile",
                ext,
                "-out",
                f"{key}.pem",
            ],
            d,
        )
    for leftover in ("ca.csr", "server.csr", "client.csr"):
        (d / leftover).unlink(missing_ok=True)
    for f in d.iterdir():
        f.chmod(0o600 if f.suffix == ".key" else 0o644)
    return TlsFiles(
        ca_file=d / "ca.pem",
        ca_key=d / "ca.key",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )
