"""Conversions between Python values and protobuf well-known types."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def now_timestamp() -> Timestamp:
    """The current time (one per batch: envelopes of one moment copy it instead of converting)."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
