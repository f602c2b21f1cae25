"""Helpers of the DICOM security tests: a small PKI made with ``openssl``, DCMTK over TLS."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail("openssl (Debian package openssl) is not installed")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


@dataclass(frozen=True)
class Credential:
    """A PEM certificate and its unencrypted PEM key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """A test CA, what it signed, and a second CA nobody trusts."""

    ca: Path
    server: Credential  # CN server.ossa.test, SAN localhost and 127.0.0.1
    client: Credential  # CN modality-7.ossa.test, clientAuth
    other_name: Credential  # a server certificate naming only pacs.invalid
    rogue_client: Credential  # a client certificate signed by the untrusted CA


def _ca(folder: Path, name: str, cn: str) -> tuple[Path, Path]:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )
    return folder / f"{name}.pem", folder / f"{name}.key"


def _issue(folder: Path, name: str, cn: str, extensions: str, ca: tuple[Path, Path]
           ) -> Credential:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=folder)
    (folder / f"{name}.ext").write_text(extensions, encoding="ascii")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext", cwd=folder)
    return Credential(folder / f"{name}.pem", folder / f"{name}.key")


def make_pki(folder: Path) -> Pki:
    """Make a CA, server and client certificates in ``folder`` (RSA 2048, valid 2 days)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca", "Ossa Test CA")
    rogue = _ca(folder, "rogue-ca", "Untrusted CA")
    server_ext = (
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    return Pki(
        ca=ca[0],
        server=_issue(folder, "server", "server.ossa.test", server_ext, ca),
        client=_issue(folder, "client", "modality-7.ossa.test",
                      "extendedKeyUsage=clientAuth\n", ca),
        other_name=_issue(folder, "other", "pacs.invalid",
                          "subjectAltName=DNS:pacs.invalid\nextendedKeyUsage=serverAuth\n", ca),
        rogue_client=_issue(folder, "rogue-client", "intruder",
                            "extendedKeyUsage=clientAuth\n", rogue),
    )

