"""The root Makefile: a bare `make` lists the targets, and every target the READMEs name exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(*args: str) -> str:
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bare_make_lists_the_targets_and_builds_nothing() -> None:
    # Dry run of the default goal: it was tools/uv/bin/uv (a venv and a pip install of uv).
    dry_run = make("-n")
    assert "venv" not in dry_run and "pip install" not in dry_run, dry_run
    assert make() == make("help")


def test_help_lists_every_target_the_readmes_name() -> None:
    listed = set(re.findall(r"^\s+make (\S+)", make("help"), flags=re.MULTILINE))
    readmes = (ROOT / "README.md").read_text() + (ROOT / "deploy" / "helm" / "tailor" / "README.md").read_text()
    named = set(re.findall(r"`make ([a-z][a-z-]*)", readmes))
    assert named, "the READMEs name no make target"
    assert named <= listed, f"named in a README but not in `make help`: {sorted(named - listed)}"
