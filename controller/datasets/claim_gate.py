"""The admission webhook that gates a pod whose claims are populated from a Dataset.

The chart's admission policy gates pods that name their Datasets in an annotation; a policy cannot
read another object, so a pod that consumes a Dataset only through its claim's `dataSourceRef` is
gated here: the apiserver sends each new pod that mounts a claim (and has no such annotation), and
the answer adds the gate and the waiting label when one of its claims is populated from a Dataset.
From then on the gate controller (gate.py) treats it like any gated pod.

It fails open: any error answers "allowed, unchanged", as the chart's failurePolicy Ignore does
when no replica answers, so pod creation never waits on Cairn beyond the webhook's timeout. Every
replica serves it; it keeps no state.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cairn.controller.datasets.gating import claim_gate_patch, claim_names

log = logging.getLogger("cairn.controller.datasets.claim_gate")
PATH = "/gate-pods"
MAX_REVIEW_BYTES = 4 * 1024 * 1024
"""Above the apiserver's own limit for a pod (etcd's 1.5 MiB object, JSON-wrapped twice)."""
MAX_CLAIMS_READ = 32
"""A pod mounting more claims than this is not gated by claim: one request never costs more reads."""
CLAIM_READ_TIMEOUT = 2.0


class ClaimGate:
    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core

    def review(self, review: dict[str, Any]) -> dict[str, Any]:
        """The AdmissionReview answer for one pod CREATE."""
        request = review.get("request") or {}
        response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
        try:
            patch = self._patch(request)
        except Exception:  # fail open, as the apiserver does when this webhook does not answer
            log.warning("claim gate: could not review pod %s", _pod_name(request), exc_info=True)
            patch = []
        if patch:
            log.info(
                "claim gate: gated pod %s, whose claims are populated from a Dataset", _pod_name(request)
            )
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}

    def _patch(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        pod = request.get("object") or {}
        namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace")
        if request.get("operation") != "CREATE" or pod.get("kind") != "Pod" or not namespace:
            return []
        names = claim_names(pod.get("spec") or {})
        if len(names) > MAX_CLAIMS_READ:
            log.info(
                "claim gate: pod %s mounts %d claims; not gated by claim", _pod_name(request), len(names)
            )
            return []
        return claim_gate_patch(pod, {name: self._claim(namespace, name) for name in set(names)})

    def _claim(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            claim = self.core.read_namespaced_persistent_volume_claim(
                name, namespace, _request_timeout=CLAIM_READ_TIMEOUT
            )
        except ApiException as error:
            if error.status == 404:
                return {}  # made after the pod: the gate controller cannot count it either
            raise
        return self.core.api_client.sanitize_for_serialization(claim)

    def serve(self, address: str, certificate: Path, key: Path, stop: threading.Event) -> None:
        """HTTPS on host:port until `stop`; the chart's Service sends the apiserver here."""
        host, _, port = address.rpartition(":")
        gate = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that connects and stalls holds one thread, for this long

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                # The apiserver adds ?timeout=<the webhook's timeoutSeconds>s.
                if urlsplit(self.path).path != PATH or not 0 < length <= MAX_REVIEW_BYTES:
                    self.send_error(HTTPStatus.BAD_REQUEST, f"POST an AdmissionReview to {PATH}")
                    return
                try:
                    review = json.loads(self.rfile.read(length))
                except ValueError:
                    self.send_error(HTTPStatus.BAD_REQUEST, "the body is not JSON")
                    return
                body = json.dumps(gate.review(review)).encode()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per pod created in the cluster would drown the controller's log

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certificate, key)
        server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
        server.daemon_threads = True
        # The handshake then happens in each connection's own thread, not in the accept loop.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=server.serve_forever, name="claim-gate", daemon=True).start()
        log.info("claim gate: serving admission reviews on https://%s%s", address, PATH)
        stop.wait()
        server.shutdown()


def _pod_name(request: dict[str, Any]) -> str:
    meta = (request.get("object") or {}).get("metadata") or {}
    return f"{request.get('namespace', '')}/{meta.get('name') or meta.get('generateName', '') + '*'}"
