"""S3 for every feature: where objects live, a client, and credentials from a Secret reference.

Credentials are read when needed and never copied into any object Cairn writes. The node agent
may `get` Secrets only in the namespaces the Helm chart grants (values
`checkpoints.credentialNamespaces`), never list or watch them, so an object whose Secret lies
elsewhere fails with a message saying which grant is missing. Errors name the object that
references the Secret (a CheckpointPolicy, a Dataset), so its owner knows which one to fix.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from awscrt import checksums

from cairn.api.checkpoint import SecretKeyRef
from cairn.paths import safe_relative_path


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    """Key prefix, without a trailing slash."""

    def key(self, relative: str) -> str:
        return (
            f"{self.prefix}/{safe_relative_path(relative)}"
            if self.prefix
            else str(safe_relative_path(relative))
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/"

    @classmethod
    def from_url(cls, url: str) -> S3Location:
        if not url.startswith("s3://"):
            raise ValueError(f"{url!r} is not an s3:// URL")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket")
        return cls(bucket, prefix.strip("/"))


TRANSPORT_CHECKSUM = "CRC64NVME"
"""What S3 checks every request body against, and holds for the whole object: a CRC the CPU computes
in hardware (carry-less multiply) at over 20 GB/s a core here, where SHA-256 managed 1.6. It guards
the transport only; what proves a copy is the checkpoint is the manifest's BLAKE3 digest."""


def transport_checksum(data: bytes | memoryview, previous: int = 0) -> int:
    """CRC-64/NVME of `data`, continuing from `previous` (the value of the bytes before it)."""
    return int(checksums.crc64nvme(data, previous))


def combined_checksum(first: int, second: int, second_length: int) -> int:
    """The CRC-64/NVME of two spans end to end, from each span's own: no byte is read again."""
    return int(checksums.combine_crc64nvme(first, second, second_length))


def checksum_header(value: int) -> str:
    """How S3 writes a CRC-64/NVME: its 8 bytes big-endian, in base64."""
    return base64.b64encode(value.to_bytes(8, "big")).decode()


def s3_client(
    endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1", concurrency: int = 4
) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            # The body is not SHA-256 signed: every request carries the CRC S3 checks it against, and
            # signing would hash every byte again (botocore signs bodies over plain HTTP otherwise).
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            max_pool_connections=concurrency + 2,
            retries={"max_attempts": 5, "mode": "standard"},
            request_checksum_calculation="when_required",
        ),
    )


class CredentialsError(Exception):
    """The referenced credentials cannot be used; `reason` is a CamelCase word for conditions."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SecretMissing(Exception):
    """What a `ReadSecret` raises for a Secret that does not exist."""


class SecretForbidden(Exception):
    """What a `ReadSecret` raises for a Secret this process may not read."""


ReadSecret = Callable[[str, str], dict[str, str]]
"""(namespace, name) to the Secret's base64-encoded data."""


def read_credentials(
    read_secret: ReadSecret, namespace: str, ref: SecretKeyRef, owner: str
) -> tuple[str, str]:
    """The access key and secret key `ref` names, for `owner` (for example "Dataset team-a/corpus")."""
    try:
        data = read_secret(namespace, ref.name)
    except SecretMissing:
        raise CredentialsError(
            "CredentialsSecretMissing", f"Secret {namespace}/{ref.name} named by {owner} does not exist"
        ) from None
    except SecretForbidden:
        raise CredentialsError(
            "CredentialsSecretForbidden",
            f"the node agent may not read Secret {namespace}/{ref.name} named by {owner}; add "
            f"{namespace} to the chart's checkpoints.credentialNamespaces",
        ) from None
    values = []
    for key in (ref.access_key_id_key, ref.secret_access_key_key):
        if key not in data:
            raise CredentialsError(
                "CredentialsKeyMissing", f"Secret {namespace}/{ref.name} named by {owner} has no key {key!r}"
            )
        values.append(base64.b64decode(data[key]).decode())
    return values[0], values[1]


def client_from_secret(
    read_secret: ReadSecret,
    namespace: str,
    endpoint: str,
    region: str,
    ref: SecretKeyRef | None,
    owner: str,
    concurrency: int = 4,
) -> Any:
    """A client with the keys `ref` names (anonymous without one); CredentialsError naming `owner`."""
    access_key, secret_key = ("", "") if ref is None else read_credentials(read_secret, namespace, ref, owner)
    return s3_client(endpoint, access_key, secret_key, region, concurrency)
