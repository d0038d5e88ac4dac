from tailor_platform.migrations import run_migrations
from tailor_profile.store import metadata

run_migrations(metadata)
