"""Request validation that reports every offending field at once.

check = Validator()
check.identifier("customer_id", request.customer_id)
check.one_of("purpose", request.purpose, registry.purposes)
check.done()  # raises InvalidArgument naming each bad field
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from tailor.common.v1.common_pb2 import PageRequest

from tailor_platform.errors import FieldViolation, InvalidArgument

MAX_ID_LENGTH = 128
# \Z, not $: $ also matches before a final newline, which would let "abc\n" through.
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@\-]*\Z")
MAX_SEQUENCE = 2**63 - 1
"""Sequence keys are PostgreSQL bigints: a token beyond that was never one of ours."""


class Validator:
    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self.violations: list[FieldViolation] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(self._prefix + field, description))

    def required(self, field: str, value: str) -> bool:
        if not value.strip():
            self.fail(field, "is required")
            return False
        return True

    def identifier(self, field: str, value: str, *, max_length: int = MAX_ID_LENGTH) -> None:
        """A required opaque id: non-empty, bounded, no whitespace or control characters."""
        if not self.required(field, value):
            return
        if len(value) > max_length:
            self.fail(field, f"must be at most {max_length} characters (got {len(value)})")
        elif not _IDENTIFIER.match(value):
            self.fail(field, "may contain only letters, digits and . _ : @ -")

    def max_length(self, field: str, value: str, limit: int) -> None:
        if len(value) > limit:
            self.fail(field, f"must be at most {limit} characters (got {len(value)})")

    def text(self, field: str, value: str, limit: int) -> None:
        """Bounded text the database can hold: PostgreSQL text and JSONB refuse U+0000 (one such
        value would fail the whole transaction that stores it)."""
        self.max_length(field, value, limit)
        if "\x00" in value:
            self.fail(field, "must not contain NUL characters")

    def timestamp(self, field: str, stamp: Timestamp) -> datetime | None:
        """The timestamp as an aware UTC datetime; None and a violation of `field` when its seconds
        or nanos lie outside what a datetime holds (0001-01-01 to 9999-12-31)."""
        try:
            return stamp.ToDatetime(tzinfo=UTC)
        except (OverflowError, OSError, ValueError):
            self.fail(field, "is not a valid timestamp (0001-01-01 to 9999-12-31, nanos 0 to 999999999)")
            return None

    def one_of(self, field: str, value: str, allowed: Collection[str], *, optional: bool = False) -> None:
        if optional and not value:
            return
        if value not in allowed:
            choices = ", ".join(sorted(allowed))
            self.fail(field, f"unknown value {value[:64]!r}; expected one of: {choices}")

    def sequence_page(self, page: PageRequest, *, default_size: int = 100, max_size: int = 1000) -> tuple[int, int]:
        """Page size and the sequence to continue after, for lists paged by an increasing
        integer key (the token is the last key of the previous page)."""
        size = page.page_size or default_size
        if not 0 < size <= max_size:
            self.fail("page.page_size", f"must be between 1 and {max_size}")
        after = 0
        if page.page_token:
            # ASCII digits only: str.isdigit also takes e.g. superscripts, which int() refuses.
            token = page.page_token
            if token.isascii() and token.isdigit() and int(token) <= MAX_SEQUENCE:
                after = int(token)
            else:
                self.fail("page.page_token", "is not a token this API returned")
        return size, after

    @property
    def ok(self) -> bool:
        return not self.violations

    def done(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)
