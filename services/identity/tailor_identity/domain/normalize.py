"""Normalization: the same identifier written differently must give the same key.

Emails: case, whitespace, and per-provider rules (dots and +tags ignored by e.g. Gmail). Phones:
E.164 via `phonenumbers`. Names and addresses: case, accents, punctuation, common abbreviations.
Every function raises `ValueError` with a message safe to show (it never echoes the value).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import phonenumbers

from tailor_identity.domain.model import IdType

MAX_VALUE_LENGTH = 256
# The local part: anything but @, whitespace and ASCII control characters (non-ASCII ones are
# checked by _unicode_email); the domain: ASCII labels (an IDN is turned into its A-labels first).
_DOMAIN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@" + _DOMAIN + "$")
_DOMAIN_NAME = re.compile(_DOMAIN + r"\Z")
_OPAQUE = re.compile(r"^[\w.:@/+=\-]{1,200}$")
_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
_EXTERNAL, _EMAIL_TYPE, _PHONE = IdType.EXTERNAL.value, IdType.EMAIL.value, IdType.PHONE.value
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")

ADDRESS_ABBREVIATIONS = {
    "st": "street",
    "str": "street",
    "rd": "road",
    "ave": "avenue",
    "av": "avenue",
    "dr": "drive",
    "ln": "lane",
    "pl": "place",
    "ct": "court",
    "cres": "crescent",
    "cr": "crescent",
    "hwy": "highway",
    "pde": "parade",
    "tce": "terrace",
    "blvd": "boulevard",
    "sq": "square",
    "apt": "apartment",
    "mt": "mount",
    "nth": "north",
    "sth": "south",
}


@dataclass(frozen=True)
class EmailRules:
    """Provider rules: for these domains, dots in the local part are ignored / +tags are dropped;
    `aliases` maps a domain to its canonical one (googlemail.com -> gmail.com)."""

    ignore_dots: frozenset[str] = frozenset({"gmail.com"})
    strip_plus_tags: frozenset[str] = frozenset({"gmail.com", "outlook.com", "hotmail.com", "icloud.com"})
    aliases: Mapping[str, str] = field(default_factory=lambda: {"googlemail.com": "gmail.com"})

    @classmethod
    def of(cls, ignore_dots: Collection[str], strip_plus_tags: Collection[str]) -> EmailRules:
        """Rules from configured domains, written the way normalized emails write them (an
        internationalized domain as its A-labels), so that a rule for bücher.de applies."""
        return cls(frozenset(map(email_domain, ignore_dots)), frozenset(map(email_domain, strip_plus_tags)))


def email_domain(configured: str) -> str:
    """A configured domain the way normalized emails write it."""
    domain = configured.strip().lower()
    try:
        domain = domain if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError:
        domain = ""
    if not _DOMAIN_NAME.match(domain):
        raise ValueError(f"{configured!r} is not a domain name")
    return domain


def normalize_email(raw: str, rules: EmailRules = EmailRules()) -> str:
    value = raw.strip().lower()
    if not value.isascii():
        value = _unicode_email(value)
    if not _EMAIL.match(value):
        raise ValueError("is not a valid email address")
    local, domain = value.rsplit("@", 1)
    domain = rules.aliases.get(domain, domain)
    if domain in rules.strip_plus_tags:
        local = local.split("+", 1)[0]
    if domain in rules.ignore_dots:
        local = local.replace(".", "")
    if not local:
        raise ValueError("is not a valid email address")
    return f"{local}@{domain}"


def _unicode_email(value: str) -> str:
    """An internationalized email (RFC 6531) in one form: the local part in NFC (an accent composed
    or decomposed is one mailbox, RFC 6532) without control or invisible format characters (a
    zero-width space would make a look-alike key), the domain as its IDNA A-labels (bücher.de and
    xn--bcher-kva.de are one domain). Python's codec is IDNA 2003: it maps ß to ss."""
    local, at, domain = value.rpartition("@")
    if not at:
        return value  # not an email at all: the pattern rejects it
    local = unicodedata.normalize("NFC", local)
    if any(unicodedata.category(char)[0] == "C" for char in local):
        raise ValueError("is not a valid email address")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:  # its text names the label: never echo it
            raise ValueError("is not a valid email address") from None
    return f"{local}@{domain}"


@functools.lru_cache(maxsize=65536)
def normalize_phone(raw: str, default_region: str = "US") -> str:
    """E.164; numbers without a country code are read in `default_region`. An extension is kept
    (RFC 3966: "+16502530000;ext=123"): the people behind one switchboard number are different
    people, and dropping it would merge them."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        raise ValueError("is not a parseable phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("is not a valid phone number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return f"{e164};ext={number.extension}" if number.extension else e164


def normalize_opaque(raw: str) -> str:
    """Loyalty ids, POS numbers, device ids, external ids: trimmed, case kept (they are opaque).
    Non-ASCII ones in NFKC: a card number typed in full width (an East Asian input method) is the
    ASCII one, and an accent composed or decomposed is one character."""
    value = raw.strip()
    if not value.isascii():
        value = unicodedata.normalize("NFKC", value)
    if not _OPAQUE.match(value):
        raise ValueError("must be 1-200 characters: letters, digits and . _ : @ / + = -")
    return value


def normalize_identifier(
    id_type: str, raw: str, namespace: str, *, email_rules: EmailRules = EmailRules(), phone_region: str = "US"
) -> tuple[str, str]:
    """(normalized value, normalized namespace); ValueError naming what is wrong."""
    if not raw.strip():
        raise ValueError("value is required")
    if len(raw) > MAX_VALUE_LENGTH:
        raise ValueError(f"value must be at most {MAX_VALUE_LENGTH} characters")
    # Plain strings, not IdType members: enum attribute access costs on the resolve hot path.
    if id_type == _EXTERNAL:
        space = namespace.strip().lower()
        if not _NAMESPACE.match(space):
            raise ValueError("namespace is required for external ids (lowercase letters, digits, _ . -)")
        return normalize_opaque(raw), space
    if namespace:
        raise ValueError(f"namespace is only allowed for external ids, not {id_type}")
    if id_type == _EMAIL_TYPE:
        return normalize_email(raw, email_rules), ""
    if id_type == _PHONE:
        return normalize_phone(raw, phone_region), ""
    return normalize_opaque(raw), ""


_LATIN_LETTERS = str.maketrans(
    {
        "ß": "ss", "ø": "o", "ł": "l", "æ": "ae", "œ": "oe", "đ": "d", "ð": "d", "þ": "th", "\u0131": "i",
        "ħ": "h", "ŧ": "t", "ŀ": "l", "ŋ": "n",
    }
)  # fmt: skip
"""Lowercase Latin letters that have no decomposition into a base letter and an accent."""
_SEPARATORS = re.compile(r"[^a-z0-9\x80-\U0010ffff]+")
"""ASCII that is not a lowercase letter or digit (fold has already made other characters a space)."""


def fold(text: str) -> str:
    """Lowercase letters and digits and single spaces: accents removed, punctuation a space.

    Letters of other scripts are kept (a Cyrillic or Chinese name is a name, not nothing), Latin
    letters without a decomposition are spelt out (Straße is Strasse, Søren is Soren), and any
    punctuation separates (O\u2019Neil, with a typographic apostrophe, is O'Neil)."""
    text = text.lower()  # before decomposing: İ lowercases to i and a dot above, an accent
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text.translate(_LATIN_LETTERS))
        # Accents (combining marks) go; other marks stay, as part of their word (a Devanagari vowel
        # sign is no separator); whatever is not a letter, digit or mark separates.
        text = "".join(
            "" if unicodedata.combining(char) else char if unicodedata.category(char)[0] in "LNM" else " "
            for char in decomposed
        )
    return " ".join(_SEPARATORS.sub(" ", text).split())


def normalize_name(raw: str) -> str:
    return fold(raw)


def normalize_address(raw: str) -> str:
    return " ".join(ADDRESS_ABBREVIATIONS.get(token, token) for token in fold(raw).split())


def normalize_postcode(raw: str) -> str:
    return fold(raw).replace(" ", "")


def normalize_date(raw: str) -> str:
    """YYYYMMDD; ValueError unless it is YYYY-MM-DD or YYYYMMDD. Month and day are deliberately not
    checked against the calendar: a mistyped 19450493 is still strong evidence for matching."""
    match = _DATE.match(raw.strip())
    if not match:
        raise ValueError("must be YYYY-MM-DD or YYYYMMDD")
    return "".join(match.groups())
