"""Processes a launcher started, recorded in its data directory, so that the next launcher on the
same directory stops the ones a dead launcher left running (killed with SIGKILL, crashed, its
terminal closed). Services and NATS run in sessions of their own, so nothing else stops them; and
a second NATS must never open the same JetStream store. PostgreSQL needs no record: the next start
on the same data directory finds its server by its pid file and uses it."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import psutil

STOP_TIMEOUT_S = 20.0
RECORD_FILE = "processes.json"
"""Where, in the data directory, a launcher records the processes it started."""


class Leftovers:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, name: str, process: subprocess.Popen[bytes]) -> None:
        entries = self._read()
        with contextlib.suppress(psutil.NoSuchProcess):
            entries[str(process.pid)] = {"name": name, "created": psutil.Process(process.pid).create_time()}
        self._write(entries)

    def forget(self, process: subprocess.Popen[bytes]) -> None:
        entries = self._read()
        if entries.pop(str(process.pid), None) is not None:
            self._write(entries)

    def stop_all(self) -> list[str]:
        """Stop (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) every recorded process still running;
        the names of those stopped. A pid reused by another process since is left alone: its
        start time differs."""
        alive: dict[str, psutil.Process] = {}
        for pid, entry in self._read().items():
            with contextlib.suppress(psutil.NoSuchProcess):
                process = psutil.Process(int(pid))
                if process.create_time() == entry["created"]:
                    alive[str(entry["name"])] = process
        for process in alive.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, stubborn = psutil.wait_procs(list(alive.values()), timeout=STOP_TIMEOUT_S)
        for process in stubborn:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.path.unlink(missing_ok=True)
        return sorted(alive)

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            found = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def _write(self, entries: dict[str, dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if entries:
            self.path.write_text(json.dumps(entries))
        else:
            self.path.unlink(missing_ok=True)
