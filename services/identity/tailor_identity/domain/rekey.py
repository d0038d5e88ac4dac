"""Where a re-keying run stands: the table it is reading, the last row id it read, and the count of
rows still under an old key when the run started, less what it has re-keyed since.

Each ReKey call reads the stale rows after its cursor (in id order) instead of searching the whole
table again: the rows at the front, re-keyed by earlier calls, would otherwise be read by every
later call, and a run's cost would grow with the square of the table. The cursor is opaque to
clients; it is written as `table/after_id/remaining`.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLES = ("identifier", "person")
"""The tables a run reads, in order."""


@dataclass(frozen=True)
class ReKeyCursor:
    table: str
    after_id: int
    remaining: int

    @classmethod
    def parse(cls, text: str) -> ReKeyCursor:
        """ValueError (safe to show) for anything a ReKey response did not hand out."""
        parts = text.split("/")
        if len(parts) != 3 or parts[0] not in TABLES or not all(part.isdigit() for part in parts[1:]):
            raise ValueError("is not a cursor returned by ReKey")
        return cls(parts[0], int(parts[1]), int(parts[2]))

    def __str__(self) -> str:
        return f"{self.table}/{self.after_id}/{self.remaining}"
