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


def test_an_accent_composed_or_decomposed_is_one_email() -> None:
    composed, decomposed = "Jos\u00e9@example.com", "Jose\u0301@example.com"
    assert normalize_email(composed) == normalize_email(decomposed) == "jos\u00e9@example.com"


def test_an_internationalized_domain_is_one_domain_however_written() -> None:
    assert normalize_email("ann@B\u00fccher.de") == normalize_email("ann@xn--bcher-kva.de") == "ann@xn--bcher-kva.de"
    with pytest.raises(ValueError, match="not a valid email"):
        normalize_email("ann@b\u00fccher..de")


@pytest.mark.parametrize("raw", ["ann\x00@example.com", "an\x1bn@example.com", "ann\u200b@example.com", "a\x7f@x.com"])
def test_control_and_invisible_characters_are_not_an_email(raw: str) -> None:
    with pytest.raises(ValueError, match="not a valid email"):
        normalize_email(raw)


def test_a_phone_extension_is_part_of_the_key() -> None:
    """Colleagues behind one switchboard number are different people: dropping the extension
    would merge them."""
    assert normalize_phone("+1 650 253 0000 ext. 123") == "+16502530000;ext=123"
    assert normalize_phone("+1 650 253 0000 x123") == "+16502530000;ext=123"
    assert normalize_phone("+1 650 253 0000 x124") != normalize_phone("+1 650 253 0000 x123")
    assert normalize_phone("+1 650 253 0000") == "+16502530000"


def test_full_width_opaque_ids_are_the_ascii_ones() -> None:
    assert normalize_identifier("loyalty_id", "\uff21\uff22\uff23\uff11\uff12\uff13", "") == ("ABC123", "")
    assert normalize_identifier("pos_customer_id", "Jose\u0301", "") == ("Jos\u00e9", "")


@pytest.mark.parametrize(
    ("written", "plain"),
    [
        ("Straße", "Strasse"),
        ("Søren Kierkegaard", "Soren Kierkegaard"),
        ("Łukasz Wałęsa", "Lukasz Walesa"),
        ("Ærø", "Aero"),
        ("Đorđe", "Dorde"),
        ("O\u2019Neil", "O'Neil"),  # a typographic apostrophe (phone keyboards) is an apostrophe
    ],
)
def test_letters_without_a_decomposition_and_typographic_punctuation_fold_like_their_plain_forms(
    written: str, plain: str
) -> None:
    assert normalize_name(written) == normalize_name(plain)


def test_names_in_other_scripts_are_kept() -> None:
    """Folding to ASCII left nothing of a Cyrillic or Chinese name: the record lost its person."""
    assert normalize_name("  Иван  ПЕТРОВ ") == "иван петров"
    assert normalize_name("王小明") == "王小明"
    assert normalize_name("İstanbul") == normalize_name("Istanbul") == "istanbul"
    assert normalize_address("ул. Ленина, 5") == "ул ленина 5"
