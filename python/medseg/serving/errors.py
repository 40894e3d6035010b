"""Exceptions -> gRPC status codes, in one place. No handler lets an exception escape as
UNKNOWN: anything unexpected becomes INTERNAL with a generic message (logged in full)."""
from __future__ import annotations

import functools
import logging
import os
import time
import uuid

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from medseg.codec import DigestMismatch, VolumeTooLarge
from medseg.params import ParameterError
from medseg.progress import OperationCancelled

log = logging.getLogger("medseg.serving")


class FieldError(ValueError):
    """Bad input in a named request field (INVALID_ARGUMENT with a BadRequest detail)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class QueueFull(Exception):
    """The work queue is at capacity (RESOURCE_EXHAUSTED; retry later)."""


class NotReady(Exception):
    """Models or resources are still loading (UNAVAILABLE; retry with backoff)."""


class Unsupported(Exception):
    """The request needs something this deployment does not have (FAILED_PRECONDITION)."""


_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (DigestMismatch, grpc.StatusCode.DATA_LOSS),
    (VolumeTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (OperationCancelled, grpc.StatusCode.CANCELLED),
    (Unsupported, grpc.StatusCode.FAILED_PRECONDITION),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
    (FileNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
]


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            if isinstance(exc, OSError) and exc.filename:  # the OS's text names a server path
                return code, f"{exc.strerror or kind.__name__}: '{os.path.basename(str(exc.filename))}'"
            return code, str(exc) or kind.__name__
    incident = uuid.uuid4().hex[:8]
    log.exception("internal error %s", incident, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident}; see server log)"


def _field_violation(exc: BaseException) -> tuple[str, str] | None:
    """(field path, reason) of a bad-input error: a science function's ParameterError names
    its parameter, which every request carries under `params`."""
    if isinstance(exc, FieldError):
        return exc.field, exc.description
    if isinstance(exc, ParameterError):
        return f"params.{exc.name}", exc.reason
    return None


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    code, message = status_of(exc)
    if code is not grpc.StatusCode.INTERNAL:
        log.info("%s: %s", code.name, message)
    details = []
    violation = _field_violation(exc)
    if violation is not None:
        field, description = violation
        if isinstance(exc, ParameterError):
            message = f"{field}: {description}"
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)]))
        details.append(detail)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    context.abort_with_status(rpc_status.to_status(status))


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status an exception maps to (as status_of, without logging)."""
    return next((code for kind, code in _CODES if isinstance(exc, kind)), grpc.StatusCode.INTERNAL)


def _record(servicer, method: str, start: float, code: grpc.StatusCode) -> None:
    from medseg.serving import metrics

    service = getattr(getattr(servicer, "config", None), "service", "unknown")
    metrics.REQUESTS.labels(service, method, code.name).inc()
    metrics.LATENCY.labels(service, method).observe(time.perf_counter() - start)


def streaming_rpc(method):
    """Wrap a response-streaming handler so every exception becomes a proper status (and
    every call is counted in the server's metrics)."""

    @functools.wraps(method)
    def handler(self, request_iterator, context):
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            yield from method(self, request_iterator, context)
        except GeneratorExit:  # the client went away mid-stream
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # noqa: BLE001 - mapped, never escapes as UNKNOWN
            code = code_of(exc)
            if context.is_active() or not isinstance(exc, OperationCancelled):
                abort(context, exc)
        finally:
            _record(self, method.__name__, start, code)

    return handler


def unary_rpc(method):
    """Same as streaming_rpc for unary handlers."""

    @functools.wraps(method)
    def handler(self, request, context):
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001
            code = code_of(exc)
            abort(context, exc)
        finally:
            _record(self, method.__name__, start, code)

    return handler
