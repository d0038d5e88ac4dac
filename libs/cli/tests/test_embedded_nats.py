"""The embedded NATS server as the launcher and the tests start it."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tailor_cli.embedded import EmbeddedNats, free_port


def test_embedded_jetstream_fsyncs_every_second(tmp_path: Path) -> None:
    """Not NATS's default of every 2 minutes: a machine crash could lose acknowledged messages."""
    monitoring_port = free_port()
    server = EmbeddedNats(tmp_path, port=0, monitoring_port=monitoring_port)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitoring_port}/varz", timeout=10) as answer:
            config = json.load(answer)["jetstream"]["config"]
    finally:
        server.stop()
    assert config["sync_interval"] == 1_000_000_000  # nanoseconds
    assert config["store_dir"].startswith(str(tmp_path.resolve()))
