"""JetStream streams, one per domain. Provisioned idempotently by `tailor streams`, by the Helm hook
job and at service start-up; an existing stream is updated to this configuration."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)

DAY_S = 24 * 3600.0
DUPLICATE_WINDOW_S = 120.0


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float = 7 * DAY_S
    description: str = ""


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("TAILOR_INGEST", ("tailor.ingest.>",), 7 * DAY_S, "raw events from channel adapters"),
    StreamSpec("TAILOR_IDENTITY", ("tailor.identity.>",), 30 * DAY_S, "identity resolved and merged"),
    StreamSpec("TAILOR_PROFILE", ("tailor.profile.>",), 7 * DAY_S, "profile updates with changed traits"),
    StreamSpec("TAILOR_SEGMENT", ("tailor.segment.>",), 7 * DAY_S, "segment entered and exited"),
    StreamSpec("TAILOR_SCORE", ("tailor.score.>",), 7 * DAY_S, "score updates"),
    StreamSpec("TAILOR_OFFER", ("tailor.offer.>",), 30 * DAY_S, "offer decisions"),
    StreamSpec("TAILOR_CHANNEL", ("tailor.channel.>",), 7 * DAY_S, "deliveries for channel adapters"),
    StreamSpec("TAILOR_CONSENT", ("tailor.consent.>",), 30 * DAY_S, "consent changes"),
    StreamSpec("TAILOR_PRIVACY", ("tailor.privacy.>",), 90 * DAY_S, "erasure and access requests"),
    StreamSpec("TAILOR_DLQ", ("tailor.dlq.>",), 30 * DAY_S, "messages a consumer could not handle"),
)


def stream_config(spec: StreamSpec, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=spec.max_age_s,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )


def max_age_of(stream: str) -> float:
    """How long `stream` keeps a message (seconds): after that it can never be delivered again."""
    return next(spec.max_age_s for spec in STREAMS if spec.name == stream)


def stream_for(subject: str) -> str:
    """The stream that captures `subject` (every tailor subject has one)."""
    for spec in STREAMS:
        for pattern in spec.subjects:
            if subject.startswith(pattern.removesuffix(">")):
                return spec.name
    raise ValueError(f"no stream captures subject {subject!r}")


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> list[str]:
    """Create missing streams and bring existing ones to the configuration above."""
    changed = []
    for spec in STREAMS:
        config = stream_config(spec, replicas)
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(config)
            changed.append(f"created {spec.name}")
            continue
        await js.update_stream(config)
        changed.append(f"updated {spec.name}")
    log.info("streams provisioned", extra={"tailor_streams": changed})
    return changed
