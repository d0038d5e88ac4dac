"""Blocking, comparisons, the Fellegi-Sunter model and EM on synthetic data."""

from __future__ import annotations

import random
from collections import Counter

from tailor_identity.domain.matching import (
    MISSING,
    MatchModel,
    block_keys,
    compare,
    describe,
    estimate_u,
    fit_em,
    random_pair_prior,
)
from tailor_identity.domain.model import Person

ANN = Person("ann", "lee", "19800102", "1 main street", "2000", "sydney")


def test_compare_grades_each_field() -> None:
    assert compare(ANN, ANN) == (0, 0, 0, 0, 0, 0)
    typo = Person("anne", "lee", "19800201", "1 main street flat 2", "2001", "sydeny")
    assert compare(ANN, typo) == (1, 0, 1, 1, 1, 1)
    assert compare(ANN, Person("bob", ""))[:2] == (3, MISSING)
    assert describe(compare(ANN, ANN))["surname"] == "exact"


def test_swapped_digits_and_misplaced_spaces_are_small_errors() -> None:
    # Neighbouring digits swapped in a birth date or postcode are one edit, not two; an address
    # typed with its spaces in the wrong place is nearly the same address.
    typo = Person("ann", "lee", "19800120", "1 mainst reet", "2000", "sydney")
    assert compare(ANN, typo) == (0, 0, 1, 1, 0, 0)
    assert compare(ANN, Person("ann", "lee", postcode="0200"))[4] == 1
    assert compare(ANN, Person("ann", "lee", "19811202", "9 other road", "2999"))[2:5] == (3, 3, 2)


def test_swapped_names_are_compared_crosswise() -> None:
    swapped = Person("lee", "ann", "19800102", "1 main street", "2000", "sydney")
    assert compare(ANN, swapped) == (0, 0, 0, 0, 0, 0)
    assert set(block_keys(ANN)) & set(block_keys(swapped))


def test_blocking_survives_a_typo_in_any_one_field() -> None:
    variants = [
        Person("amn", "lee", "19800102", "1 main street", "2000", "sydney"),
        Person("ann", "lea", "19800102", "1 main street", "2000", "sydney"),
        Person("ann", "lee", "19810102", "1 main street", "2000", "sydney"),
        Person("ann", "lee", "19800102", "1 main street", "2900", "sydney"),
    ]
    for variant in variants:
        assert set(block_keys(ANN)) & set(block_keys(variant))


def test_weights_follow_m_and_u() -> None:
    model = MatchModel()
    agree, disagree = (0, 0, 0, 0, 0, 0), (3, 3, 3, 3, 2, 2)
    assert model.weight(agree) > 0 > model.weight(disagree)
    assert model.probability(agree) > 0.99 > 0.01 > model.probability(disagree)
    assert MatchModel.from_json(model.to_json()) == model


def synthetic(seed: int = 3) -> tuple[Counter[tuple[int, ...]], list[list[float]], list[list[float]]]:
    """Pairs drawn from known m and u (20% matches): EM must find them again."""
    rng = random.Random(seed)
    m = [
        [0.85, 0.1, 0.03, 0.02],
        [0.8, 0.12, 0.05, 0.03],
        [0.9, 0.05, 0.03, 0.02],
        [0.6, 0.3, 0.06, 0.04],
        [0.9, 0.05, 0.05],
        [0.85, 0.1, 0.05],
    ]
    u = [
        [0.02, 0.03, 0.1, 0.85],
        [0.01, 0.02, 0.07, 0.9],
        [0.005, 0.01, 0.05, 0.935],
        [0.001, 0.01, 0.05, 0.939],
        [0.05, 0.05, 0.9],
        [0.05, 0.05, 0.9],
    ]
    counts: Counter[tuple[int, ...]] = Counter()
    for _ in range(20_000):
        table = m if rng.random() < 0.2 else u
        counts[tuple(rng.choices(range(len(row)), weights=row)[0] for row in table)] += 1
    return counts, m, u


def test_em_recovers_m_u_and_the_share_of_matches() -> None:
    counts, m, u = synthetic()
    model = fit_em(counts)
    assert abs(model.prior - 0.2) < 0.01
    for fitted, true in ((model.m, m), (model.u, u)):
        for fitted_row, true_row in zip(fitted, true, strict=True):
            assert max(abs(a - b) for a, b in zip(fitted_row, true_row, strict=True)) < 0.03


def test_em_keeps_the_starting_m_without_enough_matches() -> None:
    model = fit_em(Counter({(3, 3, 3, 3, 2, 2): 500, (3, 3, 0, 3, 2, 2): 20}))
    assert model.m == MatchModel().m and model.prior < 0.05


def test_u_from_random_pairs_and_random_pair_prior() -> None:
    people = [Person(f"n{i}", f"s{i % 50}", f"19{i % 90:02d}0101", f"{i} road", f"{i % 9}", "x") for i in range(300)]
    u = estimate_u(people, max_pairs=5000)
    assert u[0][0] < 0.01 and u[5][0] > 0.99  # unique given names; everyone lives in "x"
    assert random_pair_prior(5000, 10_000) == 5000 / (10_000 * 9_999 / 2)
