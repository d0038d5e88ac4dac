from __future__ import annotations

import pytest
from tailor_identity.domain.normalize import (
    EmailRules,
    normalize_address,
    normalize_date,
    normalize_email,
    normalize_identifier,
    normalize_name,
    normalize_phone,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ann.Lee@Example.COM ", "ann.lee@example.com"),
        ("a.n.n+promo@gmail.com", "ann@gmail.com"),
        ("ann@googlemail.com", "ann@gmail.com"),
        ("ann+x@outlook.com", "ann@outlook.com"),
        ("ann+x@example.com", "ann+x@example.com"),  # other providers: +tags are significant
    ],
)
def test_emails(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


def test_email_rules_are_configurable() -> None:
    rules = EmailRules.of(ignore_dots=[], strip_plus_tags=["example.com"])
    assert normalize_email("a.b+c@example.com", rules) == "a.b@example.com"
    assert normalize_email("a.b@gmail.com", rules) == "a.b@gmail.com"


@pytest.mark.parametrize("raw", ["no-at-sign", "a@b", "a@@b.com", "a b@c.com", "@example.com"])
def test_malformed_emails(raw: str) -> None:
    with pytest.raises(ValueError, match="not a valid email"):
        normalize_email(raw)


def test_phones_become_e164() -> None:
    assert normalize_phone("(415) 555-0100") == "+14155550100"
    assert normalize_phone("+49 30 901820") == "+4930901820"
    assert normalize_phone("030 901820", "DE") == "+4930901820"
    with pytest.raises(ValueError):
        normalize_phone("not a phone")
    with pytest.raises(ValueError):
        normalize_phone("+1 000")


def test_identifiers() -> None:
    assert normalize_identifier("external", " 42 ", "Shopify") == ("42", "shopify")
    with pytest.raises(ValueError, match="namespace is required"):
        normalize_identifier("external", "42", "")
    with pytest.raises(ValueError, match="namespace is only allowed"):
        normalize_identifier("loyalty_id", "42", "x")
    with pytest.raises(ValueError, match="required"):
        normalize_identifier("device_id", "  ", "")


def test_names_addresses_dates() -> None:
    assert normalize_name("  José-María  O'Neil ") == "jose maria o neil"
    assert normalize_address("12 Main St., Apt 3") == "12 main street apartment 3"
    assert normalize_date("1980-01-31") == normalize_date("19800131") == "19800131"
    with pytest.raises(ValueError):
        normalize_date("31/01/1980")
