"""S3 clients for a CheckpointPolicy's target, built from the Secret it references.

Credentials are read when needed and never copied into any object Cairn writes. The node agent
may `get` Secrets only in the namespaces the Helm chart grants (values
`checkpoints.credentialNamespaces`), never list or watch them, so a policy whose Secret lies
elsewhere fails with a message saying which grant is missing.
"""

from __future__ import annotations

import base64
from typing import Any

from cairn.api.checkpoint import S3Target
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .checkpoint_upload import s3_client


class CredentialsError(Exception):
    """The policy's credentials cannot be used; `reason` is a CamelCase word for conditions."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_credentials(core_v1: client.CoreV1Api, namespace: str, target: S3Target) -> tuple[str, str]:
    ref = target.credentials_secret_ref
    try:
        secret = core_v1.read_namespaced_secret(ref.name, namespace)
    except ApiException as error:
        if error.status == 404:
            raise CredentialsError(
                "CredentialsSecretMissing",
                f"Secret {namespace}/{ref.name} named by the policy does not exist",
            ) from None
        if error.status == 403:
            raise CredentialsError(
                "CredentialsSecretForbidden",
                f"the node agent may not read Secret {namespace}/{ref.name}; add {namespace} to the "
                "chart's checkpoints.credentialNamespaces",
            ) from None
        raise
    data = secret.data or {}
    values = []
    for key in (ref.access_key_id_key, ref.secret_access_key_key):
        if key not in data:
            raise CredentialsError(
                "CredentialsKeyMissing", f"Secret {namespace}/{ref.name} has no key {key!r}"
            )
        values.append(base64.b64decode(data[key]).decode())
    return values[0], values[1]


def client_for_target(
    core_v1: client.CoreV1Api, namespace: str, target: S3Target, concurrency: int = 4
) -> Any:
    access_key, secret_key = read_credentials(core_v1, namespace, target)
    return s3_client(target.endpoint, access_key, secret_key, target.region, concurrency)
