"""The services that exist: every installed package that declares a `tailor.services` entry point."""

from __future__ import annotations

from importlib.metadata import entry_points

from tailor_platform.service import ServiceSpec

# The start order when several run together: callees before their callers.
ORDER = ("consent", "identity", "profile", "segmentation", "scoring", "offer")


def available_services() -> dict[str, ServiceSpec]:
    found: dict[str, ServiceSpec] = {}
    for entry in entry_points(group="tailor.services"):
        spec = entry.load()
        if not isinstance(spec, ServiceSpec):
            raise TypeError(f"entry point {entry.name} is not a ServiceSpec")
        found[entry.name] = spec
    return dict(sorted(found.items(), key=lambda item: _rank(item[0])))


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def select(names: str | None) -> dict[str, ServiceSpec]:
    """The services named in a comma-separated list (all when None); unknown names are an error."""
    services = available_services()
    if not names:
        return services
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in services]
    if unknown:
        raise KeyError(f"unknown service(s): {', '.join(unknown)}; available: {', '.join(services)}")
    return {name: services[name] for name in services if name in wanted}
