"""Probabilistic matching: blocking, field comparisons, a Fellegi-Sunter model and EM.

Blocking keeps the comparisons few: two person records are compared only when they share a block
key (several passes, so one typo cannot hide a true pair). Each comparison turns a pair into a
pattern of agreement levels, one per field (0 = exact, higher = weaker agreement, -1 = a value is
missing). The Fellegi-Sunter model gives each level of each field an m-probability (among true
matches) and a u-probability (among non-matches); a pattern's match weight is the sum of
log2(m/u) and its match probability follows from the prior λ. m, u and λ are estimated by EM from
the patterns of all pairs compared so far (kept as counts per pattern), not set by hand: the hand-set
values below are only EM's starting point.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import jellyfish
from rapidfuzz import fuzz
from rapidfuzz.distance import OSA, JaroWinkler

from tailor_identity.domain.model import Person

Pattern = tuple[int, ...]
MISSING = -1


@dataclass(frozen=True)
class Comparison:
    """One field: how to read it from a person and how to grade two values into a level."""

    name: str
    value: Callable[[Person], str]
    grade: Callable[[str, str], int]
    levels: tuple[str, ...]


def _grade_name(a: str, b: str) -> int:
    return 0 if a == b else _name_level(JaroWinkler.similarity(a, b))


def _name_level(similarity: float) -> int:
    """The level of two different names from their Jaro-Winkler similarity."""
    if similarity >= 0.92:
        return 1
    if similarity >= 0.80:
        return 2
    return 3


def _grade_date(a: str, b: str) -> int:
    if a == b:
        return 0
    # One mistyped digit, two neighbouring digits swapped (one edit in optimal string alignment),
    # or day and month swapped.
    edits = OSA.distance(a, b, score_cutoff=3)
    if edits <= 1 or (a[:4] == b[:4] and a[4:6] == b[6:8] and a[6:8] == b[4:6]):
        return 1
    if edits <= 2:
        return 2
    return 3


def _grade_address(a: str, b: str) -> int:
    if a == b:
        return 0
    # Tokens in any order, or the same letters with the spaces misplaced ("28 dinnisonc ircuit").
    ratio = fuzz.token_set_ratio(a, b)
    if ratio < 90:
        ratio = max(ratio, fuzz.ratio(a.replace(" ", ""), b.replace(" ", "")))
    if ratio >= 90:
        return 1
    if ratio >= 70:
        return 2
    return 3


def _grade_code(a: str, b: str) -> int:
    if a == b:
        return 0
    return 1 if OSA.distance(a, b, score_cutoff=2) <= 1 else 2  # a typo or two digits swapped


def _grade_city(a: str, b: str) -> int:
    if a == b:
        return 0
    return 1 if JaroWinkler.similarity(a, b) >= 0.88 else 2


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("given_name", lambda p: p.given_name, _grade_name, ("exact", "jw>=0.92", "jw>=0.80", "different")),
    Comparison("surname", lambda p: p.surname, _grade_name, ("exact", "jw>=0.92", "jw>=0.80", "different")),
    Comparison("date_of_birth", lambda p: p.date_of_birth, _grade_date, ("exact", "1 edit", "2 edits", "different")),
    Comparison("address", lambda p: p.address, _grade_address, ("exact", "sim>=90", "sim>=70", "different")),
    Comparison("postcode", lambda p: p.postcode, _grade_code, ("exact", "1 edit", "different")),
    Comparison("city", lambda p: p.city, _grade_city, ("exact", "jw>=0.88", "different")),
)


def compare(a: Person, b: Person) -> Pattern:
    """The agreement pattern of two person records. Given name and surname written in each other's
    fields (a frequent data-entry error) are compared the way round that agrees best."""
    levels = []
    others = COMPARISONS
    if a.given_name and a.surname and b.given_name and b.surname:
        # The four similarities decide the way round and then grade the names (compare is the
        # inner loop of matching: each is computed once).
        given = JaroWinkler.similarity(a.given_name, b.given_name)
        surname = JaroWinkler.similarity(a.surname, b.surname)
        given_crossed = JaroWinkler.similarity(a.given_name, b.surname)
        surname_crossed = JaroWinkler.similarity(a.surname, b.given_name)
        other_given, other_surname = b.given_name, b.surname
        if given_crossed + surname_crossed > given + surname:
            given, surname = given_crossed, surname_crossed
            other_given, other_surname = other_surname, other_given
        levels = [
            0 if a.given_name == other_given else _name_level(given),
            0 if a.surname == other_surname else _name_level(surname),
        ]
        others = COMPARISONS[2:]
    for comparison in others:
        left, right = comparison.value(a), comparison.value(b)
        levels.append(comparison.grade(left, right) if left and right else MISSING)
    return tuple(levels)


def describe(pattern: Pattern) -> dict[str, str]:
    """Readable evidence for a review queue: field -> level name."""
    return {
        comparison.name: comparison.levels[level] if level != MISSING else "missing"
        for comparison, level in zip(COMPARISONS, pattern, strict=True)
    }


def pattern_key(pattern: Pattern) -> str:
    return ",".join(str(level) for level in pattern)


def parse_pattern(key: str) -> Pattern:
    return tuple(int(level) for level in key.split(","))


def block_keys(person: Person) -> list[str]:
    """Blocking passes; a pair is compared if it shares any key. The passes overlap so that a typo
    in one field, or given name and surname swapped, cannot hide a true pair: both names' sounds
    with the birth year, with the postcode and with the full birth date, and the two name prefixes
    in either order."""
    keys: set[str] = set()
    dob, postcode = person.date_of_birth, person.postcode
    for name in (person.given_name, person.surname):
        if not name:
            continue
        sound = jellyfish.soundex(name)
        if dob:
            keys.add(f"y{sound}|{dob[:4]}")
            keys.add(f"d{sound}|{dob}")
        if postcode:
            keys.add(f"p{sound}|{postcode}")
    if len(person.given_name) >= 3 and len(person.surname) >= 3:
        keys.add("n" + "|".join(sorted((person.given_name[:3], person.surname[:3]))))
    if dob and postcode:
        keys.add(f"b{dob}|{postcode}")
    # Where names are wrong altogether: house number with postcode, and birth date with city.
    house = person.address.split(" ", 1)[0] if person.address else ""
    if house and postcode:
        keys.add(f"a{house}|{postcode}")
    if house and person.city:
        keys.add(f"h{house}|{jellyfish.soundex(person.city)}")
    if dob and person.city:
        keys.add(f"c{dob}|{jellyfish.soundex(person.city)}")
    return sorted(keys)


def _start_m(levels: int) -> list[float]:
    weights = [0.9, 0.06, 0.02, 0.02][:levels]
    return [w / sum(weights) for w in weights]


def _start_u(levels: int) -> list[float]:
    weights = [0.01, 0.02, 0.07, 0.9][-levels:]
    return [w / sum(weights) for w in weights]


@dataclass
class MatchModel:
    """m and u per field and level, and λ (the share of true matches among compared pairs)."""

    m: list[list[float]] = field(default_factory=lambda: [_start_m(len(c.levels)) for c in COMPARISONS])
    u: list[list[float]] = field(default_factory=lambda: [_start_u(len(c.levels)) for c in COMPARISONS])
    prior: float = 0.05
    pairs: int = 0
    _factors: dict[Pattern, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Bayes factors by pattern: a few hundred distinct patterns cover every compared pair. (A model
    is never changed once made: estimation makes new ones.)"""

    def bayes_factor_log2(self, pattern: Pattern) -> float:
        factor = self._factors.get(pattern)
        if factor is None:
            factor = 0.0
            for index, level in enumerate(pattern):
                if level != MISSING:
                    factor += math.log2(self.m[index][level] / self.u[index][level])
            self._factors[pattern] = factor
        return factor

    def weight(self, pattern: Pattern) -> float:
        """The Fellegi-Sunter match weight, prior included."""
        return math.log2(self.prior / (1 - self.prior)) + self.bayes_factor_log2(pattern)

    def probability(self, pattern: Pattern) -> float:
        weight = self.weight(pattern)
        if weight > 60:
            return 1.0
        odds = math.pow(2.0, weight)
        return odds / (1 + odds)

    def to_json(self) -> dict[str, object]:
        return {"m": self.m, "u": self.u, "prior": self.prior, "pairs": self.pairs}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> MatchModel:
        return cls(
            m=cast(list[list[float]], data["m"]),
            u=cast(list[list[float]], data["u"]),
            prior=float(cast(float, data["prior"])),
            pairs=int(cast(int, data["pairs"])),
        )


SMOOTHING = 1e-4
MIN_EXPECTED_MATCHES = 20.0
"""Below this many expected true matches in the data, EM cannot tell what a match looks like: it
then keeps the starting m-probabilities and estimates only u and λ."""


def estimate_u(persons: Sequence[Person], max_pairs: int = 20_000, seed: int = 7) -> list[list[float]]:
    """u-probabilities from random pairs of records: almost every random pair is a non-match, so
    the level frequencies among them are what chance agreement looks like (as Splink does). Ten
    pairs per record, at most `max_pairs`: a small sample has few distinct pairs to draw anyway, and
    the estimate is repeated as the store grows."""
    rng = random.Random(seed)
    counts = [[SMOOTHING] * len(c.levels) for c in COMPARISONS]
    if len(persons) >= 2:
        for _ in range(min(max_pairs, 10 * len(persons))):
            a, b = rng.sample(range(len(persons)), 2)
            for index, level in enumerate(compare(persons[a], persons[b])):
                if level != MISSING:
                    counts[index][level] += 1
    return [[x / sum(row) for x in row] for row in counts]


def random_pair_prior(expected_matches: float, records: int) -> float:
    """The probability that two records drawn at random are the same person."""
    pairs = max(records * (records - 1) / 2, 1.0)
    return min(max(expected_matches / pairs, 1e-12), 0.5)


def fit_em(
    counts: Mapping[Pattern, int], start: MatchModel | None = None, iterations: int = 200, *, fixed_u: bool = False
) -> MatchModel:
    """Expectation-maximisation over pattern counts (conditional independence of fields). With
    `fixed_u` the u-probabilities of `start` are kept (estimated from random pairs) and EM fits only
    m and λ: blocked pairs share the blocking fields by construction, so u from them is biased."""
    model = start or MatchModel()
    initial_m = [list(row) for row in MatchModel().m]
    total = sum(counts.values())
    if total == 0:
        return model
    items = list(counts.items())
    for _ in range(iterations):
        m_mass = [[SMOOTHING] * len(c.levels) for c in COMPARISONS]
        u_mass = [[SMOOTHING] * len(c.levels) for c in COMPARISONS]
        matches = 0.0
        for pattern, count in items:
            g = model.probability(pattern)
            matches += count * g
            for index, level in enumerate(pattern):
                if level != MISSING:
                    m_mass[index][level] += count * g
                    u_mass[index][level] += count * (1 - g)
        new_prior = min(max(matches / total, 1e-6), 0.5)
        new_m = [[x / sum(row) for x in row] for row in m_mass] if matches >= MIN_EXPECTED_MATCHES else initial_m
        new_u = model.u if fixed_u else [[x / sum(row) for x in row] for row in u_mass]
        change = abs(new_prior - model.prior) + max(
            abs(a - b)
            for new, old in ((new_m, model.m), (new_u, model.u))
            for r1, r2 in zip(new, old, strict=True)
            for a, b in zip(r1, r2, strict=True)
        )
        model = MatchModel(new_m, new_u, new_prior, total)
        if change < 1e-7:
            break
    return model


@dataclass(frozen=True)
class Thresholds:
    """Match probability at or above `auto_merge` links automatically; at or above `review` (and
    below auto_merge) goes to the review queue; below `review` is ignored."""

    auto_merge: float = 0.99
    review: float = 0.5
