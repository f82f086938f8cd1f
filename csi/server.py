"""gRPC server plumbing shared by the controller and the node agent.

Handlers raise `CsiError`s; one interceptor turns them (and anything unexpected) into gRPC
statuses and logs every call with its duration, so no handler repeats that code.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from .errors import CsiError

log = logging.getLogger("cairn.csi")


def _wrap(method_name: str, handler: Callable[[Any, grpc.ServicerContext], Any]):
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.monotonic()
        try:
            response = handler(request, context)
        except CsiError as error:
            log.info(
                "%s -> %s: %s (%.1f ms)",
                method_name,
                error.code.name,
                error.message,
                (time.monotonic() - started) * 1000,
            )
            context.abort(error.code, error.message)
        except NotImplementedError:
            # The generated base servicer raises this for every call Cairn does not implement.
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method_name} is not implemented by Cairn")
        except Exception as error:
            # The CO must get a status with the cause, never a dropped stream.
            log.exception("%s failed unexpectedly", method_name)
            context.abort(grpc.StatusCode.INTERNAL, f"{method_name}: {type(error).__name__}: {error}")
        log.debug("%s -> OK (%.1f ms)", method_name, (time.monotonic() - started) * 1000)
        return response

    return call


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return grpc.unary_unary_rpc_method_handler(
            _wrap(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def socket_path(endpoint: str) -> Path:
    if endpoint.startswith("unix://"):
        return Path(endpoint.removeprefix("unix://"))
    if endpoint.startswith("/"):
        return Path(endpoint)
    raise ValueError(f"CSI endpoint {endpoint!r} must be unix:///path/to/csi.sock")


def serve(endpoint: str, register: Callable[[grpc.Server], None], max_workers: int = 16) -> grpc.Server:
    """Start a gRPC server on a unix socket; a stale socket from a crashed run is replaced."""
    path = socket_path(endpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        os.unlink(path)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="csi"),
        interceptors=[ErrorMappingInterceptor()],
    )
    register(server)
    server.add_insecure_port(f"unix://{path}")
    server.start()
    log.info("serving CSI on unix://%s", path)
    return server
