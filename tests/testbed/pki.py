"""A throwaway certificate authority for the test bed, made with the openssl CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass
class TestPki:
    __test__ = False  # a fixture, not a test class
    """CA, apiserver serving certificate, client certificates and service-account keys."""

    directory: Path

    @property
    def ca(self) -> KeyPair:
        return KeyPair(self.directory / "ca.crt", self.directory / "ca.key")

    def create_ca(self) -> KeyPair:
        self.directory.mkdir(parents=True, exist_ok=True)
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "7",
            "-subj",
            "/CN=cairn-testbed-ca",
            cwd=self.directory,
        )
        return self.ca

    def issue(self, name: str, subject: str, *, server_sans: list[str] | None = None) -> KeyPair:
        """Sign a certificate; with SANs it is a serving certificate, without a client one."""
        ext = self.directory / f"{name}.ext"
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
        if server_sans is not None:
            lines.append("extendedKeyUsage=serverAuth,clientAuth")
            lines.append("subjectAltName=" + ",".join(server_sans))
        else:
            lines.append("extendedKeyUsage=clientAuth")
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
            cwd=self.directory,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "7",
            "-extfile",
            ext.name,
            cwd=self.directory,
        )
        return KeyPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")

    def service_account_keys(self) -> KeyPair:
        """RSA pair the apiserver signs and verifies service-account tokens with."""
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=self.directory)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=self.directory)
        return KeyPair(self.directory / "sa.pub", self.directory / "sa.key")
