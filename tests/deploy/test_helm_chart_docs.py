"""The chart README documents every value, and its walkthrough matches the chart's defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "tailor"
README = (CHART / "README.md").read_text()
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
DOCUMENTED = set(re.findall(r"^\| `([^`]+)` \|", README, flags=re.MULTILINE))


def leaves(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in leaves(value, (*path, key))]
    return [path]


def test_readme_values_table_covers_every_value() -> None:
    undocumented = []
    for leaf in leaves({k: v for k, v in VALUES.items() if k != "services"}):
        if not any(".".join(leaf[:n]) in DOCUMENTED for n in range(1, len(leaf) + 1)):
            undocumented.append(".".join(leaf))
    for leaf in leaves(VALUES["services"]["consent"]):
        if "services.<name>." + ".".join(leaf) not in DOCUMENTED:
            undocumented.append("services.<name>." + ".".join(leaf))
    assert not undocumented, f"add to the values table in {CHART / 'README.md'}: {undocumented}"


def test_readme_documents_no_value_that_does_not_exist() -> None:
    for key in DOCUMENTED:
        if key.startswith("services.<name>."):
            continue
        node: Any = VALUES
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"README documents unknown value {key}"
            node = node[part]


def test_readme_walkthrough_uses_the_default_secret_names() -> None:
    assert VALUES["nats"]["existingSecret"] == "tailor-nats"
    assert "create secret generic tailor-nats" in README
    consent = VALUES["services"]["consent"]["database"]
    assert f"create secret generic {consent['existingSecret']}" in README
    assert "Deploy on Kubernetes" in README
