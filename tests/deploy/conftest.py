"""Fixtures for the Helm chart and container image tests: a pinned helm binary and renderers.

No cluster and no Docker engine are needed: charts are rendered with `helm template` and
validated against the Kubernetes OpenAPI schemas shipped with kubernetes-validate.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM_DIR = ROOT / "deploy" / "helm"
CHART = HELM_DIR / "tailor"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
HELM_BIN = ROOT / "tools" / "bin" / "helm"

# Rendering is pinned so that output does not depend on the machine.
RELEASE = "tailor"
NAMESPACE = "tailor"
KUBE_VERSION = "1.30.0"

Manifest = dict[str, Any]


class Manifests(list[Manifest]):
    """Rendered manifests with lookups (test modules cannot import from conftest)."""

    def kind(self, kind: str, *, hooks: bool | None = None) -> dict[str, Manifest]:
        """Manifests of `kind` by name; hooks=False/True keeps only release resources/hooks."""
        return {m["metadata"]["name"]: m for m in self if m["kind"] == kind and (hooks is None or is_hook(m) == hooks)}

    def one(self, kind: str, name: str) -> Manifest:
        found = self.kind(kind)
        assert name in found, f"no {kind} {name}; rendered: {sorted(found)}"
        return found[name]


def is_hook(manifest: Manifest) -> bool:
    return "helm.sh/hook" in (manifest["metadata"].get("annotations") or {})


@dataclass(frozen=True)
class HelmResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def manifests(self) -> Manifests:
        assert self.returncode == 0, f"helm failed:\n{self.stderr}"
        return Manifests(doc for doc in yaml.safe_load_all(self.stdout) if doc)


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm binary, installed into tools/bin by deploy/helm/install-helm.sh if missing."""
    if not HELM_BIN.exists():
        subprocess.run([str(HELM_DIR / "install-helm.sh")], check=True, timeout=300)
    assert HELM_BIN.exists(), "install-helm.sh did not install tools/bin/helm"
    return HELM_BIN


def _set_args(values: dict[str, str] | None, set_json: dict[str, Any] | None) -> list[str]:
    args: list[str] = []
    for key, value in (values or {}).items():
        args += ["--set", f"{key}={value}"]
    for key, value in (set_json or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


@pytest.fixture(scope="session")
def helm_template(helm: Path) -> Callable[..., HelmResult]:
    """Run `helm template` with value files and --set / --set-json overrides."""

    def run(
        *value_files: Path,
        set_values: dict[str, str] | None = None,
        set_json: dict[str, Any] | None = None,
    ) -> HelmResult:
        cmd = [
            str(helm),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
        ]
        for value_file in value_files:
            cmd += ["--values", str(value_file)]
        cmd += _set_args(set_values, set_json)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return HelmResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture(scope="session")
def default_manifests(helm_template: Callable[..., HelmResult]) -> Manifests:
    return helm_template().manifests


@pytest.fixture(scope="session")
def full_manifests(helm_template: Callable[..., HelmResult]) -> Manifests:
    """All six services and every feature on (examples/full.yaml)."""
    return helm_template(CHART / "examples" / "full.yaml").manifests
