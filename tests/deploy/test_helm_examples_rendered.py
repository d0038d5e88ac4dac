"""The rendered output of every example (and of the default values) is committed under
examples/rendered/ so that reviewers see manifest changes; it must match a fresh render.
Regenerate with deploy/helm/render-examples.sh."""

from __future__ import annotations

import difflib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "helm" / "render-examples.sh"
CHART = ROOT / "deploy" / "helm" / "tailor"
RENDERED = CHART / "examples" / "rendered"


def test_committed_rendered_examples_match_a_fresh_render(helm: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HELM": str(helm)},
    )
    assert proc.returncode == 0, proc.stderr
    fresh = {path.name: path.read_text() for path in sorted(tmp_path.glob("*.yaml"))}
    committed = {path.name: path.read_text() for path in sorted(RENDERED.glob("*.yaml"))}
    expected_names = {"default.yaml"} | {path.name for path in (CHART / "examples").glob("*.yaml")}
    assert set(fresh) == expected_names
    assert set(committed) == set(fresh), (
        "examples/rendered/ is missing or has stale files; run deploy/helm/render-examples.sh"
    )
    drift = []
    for name, text in fresh.items():
        if committed[name] != text:
            diff = difflib.unified_diff(
                committed[name].splitlines(),
                text.splitlines(),
                f"committed/{name}",
                f"rendered/{name}",
                lineterm="",
                n=2,
            )
            drift.append("\n".join(list(diff)[:60]))
    assert not drift, "rendered examples drifted; run deploy/helm/render-examples.sh\n" + "\n".join(drift)


def test_install_helm_is_idempotent_and_pinned(helm: Path) -> None:
    proc = subprocess.run(
        [str(ROOT / "deploy" / "helm" / "install-helm.sh")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "already installed" in proc.stdout
    version = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("v3.17.")
