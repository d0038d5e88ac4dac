"""Static checks of docker/Dockerfile (no Docker engine here): a multi-stage build whose final
stage is slim, runs as a numeric non-root user, has no build tools and starts the `tailor` CLI."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|cmake|build-essential|libc6?-dev|python3?-dev|pkg-config|cargo|rustc|git)\b"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Instructions with line continuations joined and comments dropped, grouped by stage."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            if keyword == "ARG" and "=" in args:
                key, _, value = args.partition("=")
                global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def resolve(base: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: GLOBAL_ARGS.get(m.group(1), m.group(0)), base)


def test_dockerfile_is_multi_stage_with_a_slim_python_311_final_stage() -> None:
    assert len(STAGES) >= 2
    assert STAGES[0].name == "builder"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", resolve(FINAL.base))
    # The virtual environment moves between stages, so both run the same Python.
    assert resolve(STAGES[0].base) == resolve(FINAL.base)


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = FINAL.all("USER")
    assert users, "final stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0), users[-1]
    # The chart's default securityContext runs as the same uid.
    assert "runAsUser: " + uid in (ROOT / "deploy" / "helm" / "tailor" / "values.yaml").read_text()


def test_final_stage_installs_no_build_tools_and_no_packages() -> None:
    for command in FINAL.all("RUN"):
        assert not BUILD_TOOLS.search(command), command
        assert not re.search(r"\b(apt-get|apt|apk|yum|dnf)\b.*\binstall\b", command), command
        assert not re.search(r"\b(pip|uv)\b\s+(pip\s+)?install\b", command), command
    copies = FINAL.all("COPY")
    assert copies == ["--from=builder /app/.venv /app/.venv"], copies


def test_entrypoint_is_the_tailor_cli() -> None:
    [entrypoint] = FINAL.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["tailor"]
    [cmd] = FINAL.all("CMD")
    assert json.loads(cmd)[0] == "serve"
    env = " ".join(FINAL.all("ENV"))
    assert "/app/.venv/bin" in env
    assert "TAILOR_SERVICE=${SERVICE}" in env
    assert "TAILOR_GRPC_PORT=50051" in env
    assert FINAL.all("EXPOSE") == ["50051"]


def test_builder_installs_one_service_and_the_cli_from_the_lock_without_dev_or_embedded() -> None:
    builder = STAGES[0]
    assert "SERVICE" in builder.all("ARG")
    runs = builder.all("RUN")
    [sync] = [run for run in runs if "uv sync" in run]
    args = shlex.split(sync[sync.index("uv sync") :])
    for flag in ("--frozen", "--no-dev", "--no-editable"):
        assert flag in args, flag
    packages = [args[i + 1] for i, arg in enumerate(args) if arg == "--package"]
    assert sorted(packages) == ["tailor-${SERVICE}", "tailor-cli"]
    assert "embedded" not in sync and "--all-extras" not in sync and "--extra" not in sync
    # Protobuf code is generated in the builder, with the generators in a throwaway venv.
    [generate] = [run for run in runs if "libs/proto/generate.py" in run]
    assert "grpcio-tools" in generate and "mypy-protobuf" in generate
    assert "/opt/protoc/bin/python libs/proto/generate.py" in generate
    assert runs.index(generate) < runs.index(sync), "the proto wheel is built by uv sync, after generation"
    assert any(re.search(r"pip install .*\buv==", run) for run in runs)


def test_dockerignore_keeps_local_state_and_generated_code_out_of_the_context() -> None:
    patterns = {
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    }
    for pattern in (".git", "**/.venv", "libs/proto/src", "tools", ".tailor", "**/__pycache__"):
        assert pattern in patterns, pattern
    for needed in ("uv.lock", "pyproject.toml", "libs", "services", "protos"):
        assert needed not in patterns and f"/{needed}" not in patterns, needed
