"""Authentication: where every RPC's caller is checked (the AuthInterceptor calls this).

Only `AllowAll` exists so far: signed bearer tokens with per-RPC scopes are a later issue, which
will add an Authenticator here and select it with `TAILOR_AUTH_MODE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tailor_platform.errors import Unauthenticated


class Authenticator(Protocol):
    def authenticate(self, method: str, metadata: Mapping[str, str | bytes]) -> None:
        """Return if the caller may call `method`; raise Unauthenticated or PermissionDenied if not."""


class AllowAll:
    """Every caller is allowed: for the embedded runtime and clusters that authenticate at the mesh."""

    def authenticate(self, method: str, metadata: Mapping[str, str | bytes]) -> None:
        return None


def authenticator_for(mode: str) -> Authenticator:
    if mode == "none":
        return AllowAll()
    raise Unauthenticated(f"unsupported auth mode {mode!r}; supported: none")
