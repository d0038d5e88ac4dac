"""The services that exist: every installed package that declares a `tailor.services` entry point.
Only the services asked for are imported."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from tailor_platform.service import ServiceSpec

# The start order when several run together: callees before their callers.
ORDER = ("consent", "identity", "profile", "segmentation", "scoring", "offer")


class UnknownService(LookupError):
    pass


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def service_names() -> list[str]:
    return sorted((entry.name for entry in entry_points(group="tailor.services")), key=_rank)


def _load(entry: EntryPoint) -> ServiceSpec:
    spec = entry.load()
    if not isinstance(spec, ServiceSpec):
        raise TypeError(f"entry point {entry.name} is not a ServiceSpec")
    return spec


def select(names: str | None = None) -> dict[str, ServiceSpec]:
    """The services named in a comma-separated list (all when None), in start order."""
    entries = {entry.name: entry for entry in entry_points(group="tailor.services")}
    wanted = [name.strip() for name in names.split(",") if name.strip()] if names else list(entries)
    unknown = [name for name in wanted if name not in entries]
    if unknown:
        raise UnknownService(f"unknown service(s): {', '.join(unknown)}; available: {', '.join(service_names())}")
    return {name: _load(entries[name]) for name in sorted(set(wanted), key=_rank)}


def available_services() -> dict[str, ServiceSpec]:
    return select(None)
