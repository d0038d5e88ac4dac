"""Consent rules: pure functions over consent records, no I/O."""
