"""A real S3-compatible server (MinIO, built from source) for the test bed."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .controlplane import free_port, http_ok
from .process import ManagedProcess
from .tools import tool_path


@dataclass
class S3Server:
    workdir: Path
    run_id: str
    address: str = "127.0.0.1"
    access_key: str = "cairn-testbed"
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    endpoint: str = ""

    def start(self) -> S3Server:
        port, console_port = free_port(self.address), free_port(self.address)
        self.endpoint = f"http://{self.address}:{port}"
        self.process = ManagedProcess(
            "minio",
            [
                str(tool_path("minio")),
                "server",
                str(self.workdir / "data"),
                "--address",
                f"{self.address}:{port}",
                "--console-address",
                f"{self.address}:{console_port}",
                "--quiet",
            ],
            run_id=self.run_id,
            log_dir=self.workdir / "logs",
            env={
                **_base_env(),
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                # Tests read the bytes it served from /minio/v2/metrics/cluster, the origin's own count.
                "MINIO_PROMETHEUS_AUTH_TYPE": "public",
                # Keep its home-directory config inside the run so nothing outlives it.
                "HOME": str(self.workdir),
            },
        )
        self.process.wait_until(
            lambda: http_ok(f"{self.endpoint}/minio/health/ready"), 60, "ready to serve S3"
        )
        return self

    def stop(self) -> None:
        if hasattr(self, "process"):
            self.process.stop()

    def client(self):  # -> botocore S3 client
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def credentials_secret(self, name: str, namespace: str) -> dict:
        """A Secret manifest holding this server's keys under the names CheckpointPolicy and Dataset
        read by default (accessKeyId, secretAccessKey)."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"accessKeyId": self.access_key, "secretAccessKey": self.secret_key},
        }

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_"))}
