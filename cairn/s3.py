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
            s3={"addressing_style": "path"},
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
