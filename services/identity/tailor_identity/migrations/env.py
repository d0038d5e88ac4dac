from tailor_identity.store import Base
from tailor_platform.migrations import run_migrations

run_migrations(Base.metadata)
