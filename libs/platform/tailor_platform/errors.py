"""Domain errors and their mapping to gRPC status codes with rich details.

Domain and API code raise these; the error interceptor (grpc_server) turns them into a status with
`google.rpc.Status` details, so that callers get e.g. INVALID_ARGUMENT with a `BadRequest` naming
every offending field. Anything else that escapes a handler becomes INTERNAL without leaking its text.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class TailorError(Exception):
    """Base of all errors that map to a gRPC status; the message is safe to show to callers."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        return []

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=self.details())


class InvalidArgument(TailorError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[FieldViolation]) -> None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid argument: {summary}")
        self.violations = violations

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        return [packed]


class NotFound(TailorError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TailorError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(TailorError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(TailorError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TailorError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(TailorError):
    code = grpc.StatusCode.UNAVAILABLE


def field_violations(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[FieldViolation]:
    """The BadRequest field violations carried by an error a client received (for clients and tests)."""
    trailing = error.trailing_metadata() or ()
    for key, value in trailing:  # type: ignore[misc]
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        found: list[FieldViolation] = []
        for detail in status.details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                found.extend(FieldViolation(v.field, v.description) for v in bad_request.field_violations)
        return found
    return []


def describe(error: grpc.RpcError) -> str:
    """A failed call on one line for people (command-line tools): the status code, the message,
    and each offending field."""
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):  # the sync and the asyncio stubs' errors
        return f"the call failed: {error}"
    text = f"{error.code().name}: {' '.join(str(error.details()).split())}"  # gRPC's own may span lines
    violations = field_violations(error)
    if violations:
        text += " (" + "; ".join(f"{v.field}: {v.description}" for v in violations) + ")"
    return text


__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "TailorError",
    "Unauthenticated",
    "Unavailable",
    "describe",
    "field_violations",
]
