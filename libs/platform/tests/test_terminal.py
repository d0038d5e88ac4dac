"""Helpers of the services' commands: identifiers as typed, failed calls as one line."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tailor.identity.v1.identity_pb2 import Identifier
from tailor_platform.errors import describe
from tailor_platform.terminal import exit_on_failed_call, moment, parse_identifier


def test_identifiers_are_typed_as_type_colon_value() -> None:
    assert parse_identifier("email:ann@example.com") == Identifier(type="email", value="ann@example.com")
    assert parse_identifier("phone:+1 415:555") == Identifier(type="phone", value="+1 415:555")
    assert parse_identifier("external:crm:C-17") == Identifier(type="external", namespace="crm", value="C-17")
    for bad in ("ann@example.com", "email:", ":x", "external:crm"):
        with pytest.raises(ValueError, match="expected"):
            parse_identifier(bad)


def test_times_read_in_utc_and_unset_ones_as_a_dash() -> None:
    assert moment(Timestamp(seconds=1_790_000_000)) == "2026-09-21 14:13:20 UTC"
    assert moment(Timestamp()) == "—"


def test_a_failed_call_ends_the_command_with_one_line_and_exit_code_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"  # nothing listens there
    with pytest.raises(SystemExit) as ended, exit_on_failed_call(), grpc.insecure_channel(address) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/tailor.Nothing/Call")
        call(b"", timeout=2)
    assert ended.value.code == 1
    printed = capsys.readouterr().err.strip()
    assert printed.startswith("UNAVAILABLE: ") and "\n" not in printed and "Traceback" not in printed


def test_a_failed_asyncio_call_reads_the_same() -> None:
    async def call() -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{unused.getsockname()[1]}"
        async with grpc.aio.insecure_channel(address) as channel:
            method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/tailor.Nothing/Call")
            await method(b"", timeout=2)

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        asyncio.run(call())
    assert describe(failed.value).startswith("UNAVAILABLE: ")
