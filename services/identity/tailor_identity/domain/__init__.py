"""Identity domain logic: pure functions and data, no I/O (normalization, keys, rules, matching)."""
