from tailor_consent.domain.model import ConsentRecord, Reason
from tailor_consent.domain.rules import decide, merge_consents, supersedes
from tailor_consent.testing import record


def by_key(*records: ConsentRecord) -> dict[tuple[str, str], ConsentRecord]:
    return {r.key: r for r in records}


def test_nothing_recorded_is_denied() -> None:
    decision = decide({}, "marketing", "email")
    assert not decision.allowed
    assert decision.reason is Reason.NO_CONSENT_RECORDED
    assert decision.decided_by is None


def test_channel_grant_allows_that_channel_only() -> None:
    records = by_key(record("c", "marketing", "email", True, 0))
    assert decide(records, "marketing", "email").allowed
    assert not decide(records, "marketing", "sms").allowed
    assert not decide(records, "marketing", "").allowed
    assert not decide(records, "analytics", "email").allowed


def test_purpose_wide_grant_covers_every_channel() -> None:
    records = by_key(record("c", "marketing", "", True, 0))
    assert decide(records, "marketing", "sms").allowed
    assert decide(records, "marketing", "").reason is Reason.GRANTED


def test_later_purpose_wide_withdrawal_overrides_earlier_channel_grant() -> None:
    grant = record("c", "marketing", "email", True, 0)
    withdrawal = record("c", "marketing", "", False, 5)
    decision = decide(by_key(grant, withdrawal), "marketing", "email")
    assert not decision.allowed
    assert decision.reason is Reason.WITHDRAWN
    assert decision.decided_by == withdrawal


def test_later_channel_grant_overrides_earlier_purpose_wide_withdrawal() -> None:
    records = by_key(record("c", "marketing", "", False, 0), record("c", "marketing", "email", True, 5))
    assert decide(records, "marketing", "email").allowed
    assert not decide(records, "marketing", "sms").allowed


def test_withdrawal_wins_a_tie() -> None:
    records = by_key(record("c", "marketing", "", False, 0), record("c", "marketing", "email", True, 0))
    assert not decide(records, "marketing", "email").allowed


def test_merge_denial_anywhere_wins_even_if_older() -> None:
    survivor = [record("s", "marketing", "email", True, 10)]
    absorbed = [record("a", "marketing", "email", False, 0)]
    [taken] = merge_consents(survivor, absorbed)
    assert taken.customer_id == "a"
    assert not taken.granted


def test_merge_takes_latest_grant_when_nobody_denied() -> None:
    survivor = [record("s", "analytics", "", True, 0)]
    absorbed = [record("a", "analytics", "", True, 10), record("b", "analytics", "", True, 5)]
    [taken] = merge_consents(survivor, absorbed)
    assert taken.customer_id == "a"


def test_merge_keeps_survivor_record_when_it_already_wins() -> None:
    survivor = [record("s", "marketing", "sms", False, 10)]
    absorbed = [record("a", "marketing", "sms", True, 20), record("a", "profiling", "", True, 1)]
    taken = merge_consents(survivor, absorbed)
    assert [(t.purpose, t.channel, t.granted) for t in taken] == [("profiling", "", True)]


def test_merge_of_latest_denial_among_several() -> None:
    absorbed = [record("a", "marketing", "", False, 3), record("b", "marketing", "", False, 7)]
    [taken] = merge_consents([], absorbed)
    assert taken.customer_id == "b"


def test_the_later_record_supersedes_and_a_withdrawal_wins_a_tie_in_either_order() -> None:
    grant, withdrawal = record("c", "marketing", "", True, 5), record("c", "marketing", "", False, 5)
    assert supersedes(grant, None)
    assert supersedes(record("c", "marketing", "", True, 6), withdrawal)
    assert not supersedes(record("c", "marketing", "", False, 4), grant)
    assert supersedes(withdrawal, grant)
    assert not supersedes(grant, withdrawal)
