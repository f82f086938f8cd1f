"""A real Prometheus (Debian's package) scraping the bed's components, for checking dashboards' PromQL.

It listens on loopback only, keeps its TSDB under the bed's workdir and runs tagged with the run id
like every other bed process, so the leak check covers it. Node agents are scraped over the bridge
at `<node ip>:9751`; the config is JSON, which Prometheus reads as YAML.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .controlplane import free_port, http_ok
from .process import ManagedProcess

INSTALL_HINT = "prometheus is not installed: run `make system-deps` (tools/install_system_deps.sh)"


@dataclass
class PrometheusServer:
    workdir: Path
    run_id: str
    jobs: dict[str, list[str]]
    """Scrape job name -> its targets (host:port)."""
    scrape_interval: str = "1s"
    address: str = "127.0.0.1"
    url: str = ""
    process: ManagedProcess | None = field(default=None, repr=False)

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {"job_name": job, "scrape_timeout": self.scrape_interval, "static_configs": [{"targets": t}]}
                for job, t in self.jobs.items()
            ],
        }

    def start(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=1))
        port = free_port(self.address)
        self.url = f"http://{self.address}:{port}"
        self.process = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.address}:{port}",
                "--storage.tsdb.retention.time=1d",
                "--log.format=json",
            ],
            run_id=self.run_id,
            log_dir=self.workdir / "logs",
            cwd=self.workdir,
        )
        self.process.wait_until(lambda: http_ok(f"{self.url}/-/ready"), 60, "ready to serve queries")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def api(self, path: str, **params: str | list[str]) -> dict[str, Any]:
        """GET /api/v1/<path>; the decoded body, whatever its status (errors come back as JSON too)."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400/422 for a bad expression: the body says why
            return json.loads(error.read())

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def targets_up(self) -> dict[str, str]:
        """Each active target's scrape URL and its health (up, down, unknown)."""
        active = self.api("targets", state="active")["data"]["activeTargets"]
        return {t["scrapeUrl"]: t["health"] for t in active}
