from dataclasses import replace
from datetime import datetime, timedelta

from tailor_consent.domain.model import Cause, ConsentRecord
from tailor_consent.domain.rules import merge_consents
from tailor_consent.domain.unmerges import (
    AuditEntry,
    Reverted,
    inherited_withdrawals,
    merge_request_id,
    removal,
    replay,
    revert_merge,
)
from tailor_consent.testing import T0, record

MERGED_AT = T0 + timedelta(days=10)


class Survivor:
    """A survivor's audit log and current records, kept as the service keeps them."""

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.audit: list[AuditEntry] = []

    def add(self, cause: Cause, *records: ConsentRecord, written_at: datetime | None = None) -> None:
        for item in records:
            self.audit.append(AuditEntry(len(self.audit) + 1, cause, item, written_at))

    def merge(self, merge_id: str, absorbed: list[ConsentRecord]) -> None:
        taken = merge_consents(self.current().values(), absorbed)
        self.add(
            Cause.MERGE,
            *(
                replace(
                    t,
                    customer_id=self.customer_id,
                    updated_at=t.updated_at if t.granted else MERGED_AT,  # as ConsentService.merge dates them
                    request_id=merge_request_id(merge_id, t),
                )
                for t in taken
            ),
        )

    def current(self) -> dict[tuple[str, str], ConsentRecord]:
        return replay(self.audit)


def audit_of(*entries: tuple[ConsentRecord, str]) -> dict[str, AuditEntry]:
    """Audit entries by request id, written when their records say (as a SetConsent's are)."""
    return {item.request_id: AuditEntry(n, cause, item) for n, (item, cause) in enumerate(entries, 1)}


def test_replay_keeps_the_newest_record_per_key_and_obeys_an_unmerge_entry() -> None:
    older, newer = record("s", "marketing", "email", True, 5), record("s", "marketing", "email", False, 9)
    late_import = record("s", "marketing", "email", True, 1)  # audited, but older: never current
    assert replay([AuditEntry(1, "set", older), AuditEntry(2, "set", newer), AuditEntry(3, "import", late_import)]) == {
        ("marketing", "email"): newer
    }
    restored = AuditEntry(4, Cause.UNMERGE, older)
    assert replay([AuditEntry(2, "set", newer), restored])[("marketing", "email")] == older
    gone = AuditEntry(5, Cause.UNMERGE, removal("s", ("marketing", "email"), T0, "u"))
    assert replay([AuditEntry(2, "set", newer), gone]) == {}


def test_reversal_removes_a_grant_the_survivor_only_had_from_the_absorbed_customer() -> None:
    survivor = Survivor("s")
    survivor.merge("m1", [record("a", "marketing", "email", True, 3)])
    assert survivor.current()[("marketing", "email")].granted

    [reverted] = revert_merge("m1", survivor.audit, survivor.current(), [])

    assert reverted.key == ("marketing", "email") and reverted.restored is None


def test_reversal_gives_back_the_survivors_own_record_with_its_original_time() -> None:
    own = record("s", "marketing", "email", True, 1)
    survivor = Survivor("s")
    survivor.add(Cause.SET, own)
    survivor.merge("m1", [record("a", "marketing", "email", False, 2)])  # a withdrawal anywhere wins
    assert not survivor.current()[("marketing", "email")].granted

    assert revert_merge("m1", survivor.audit, survivor.current(), []) == [
        Reverted(("marketing", "email"), survivor.current()[("marketing", "email")], own)
    ]


def test_a_change_made_after_the_merge_is_kept() -> None:
    survivor = Survivor("s")
    survivor.merge("m1", [record("a", "marketing", "email", True, 1), record("a", "analytics", "", True, 1)])
    survivor.add(Cause.SET, replace(record("s", "marketing", "email", False, 0), updated_at=MERGED_AT + timedelta(1)))

    reverted = revert_merge("m1", survivor.audit, survivor.current(), [])

    assert [item.key for item in reverted] == [("analytics", "")]


def test_a_grant_given_while_merged_is_kept_by_no_one() -> None:
    """It may have come from the person now restored: the survivor goes back to its own record
    from before the merge (or none), and the restored customer does not get it either."""
    own = record("s", "marketing", "email", False, 1)
    survivor = Survivor("s")
    survivor.add(Cause.SET, own)
    survivor.merge("m1", [record("a", "analytics", "", True, 1)])
    while_merged = MERGED_AT + timedelta(days=1)
    survivor.add(Cause.SET, replace(record("s", "marketing", "email", True, 0), updated_at=while_merged))
    survivor.add(Cause.IMPORT, replace(record("s", "marketing", "sms", True, 0), updated_at=while_merged))
    current = survivor.current()

    reverted = revert_merge("m1", survivor.audit, current, [], merged_at=MERGED_AT)

    assert reverted == [
        Reverted(("analytics", ""), current[("analytics", "")], None),
        Reverted(("marketing", "email"), current[("marketing", "email")], own),
        Reverted(("marketing", "sms"), current[("marketing", "sms")], None),
    ]
    assert not inherited_withdrawals(current.values(), {}, {"a": {}}, since=MERGED_AT, own_only=False)


def test_an_import_written_while_merged_counts_as_while_merged_whatever_time_it_carries() -> None:
    """An import may bring a decision dated before the merge; it still arrived for an id that stood
    for both people: its grant is kept by no one, its withdrawal goes to the restored customer too."""
    survivor = Survivor("s")
    survivor.merge("m1", [record("a", "analytics", "", True, 1)])
    dated_before = T0 + timedelta(days=2)
    arrived = MERGED_AT + timedelta(hours=3)
    grant = replace(record("s", "marketing", "sms", True, 0), updated_at=dated_before)
    withdrawal = replace(record("s", "research", "", False, 0), updated_at=dated_before)
    survivor.add(Cause.IMPORT, grant, withdrawal, written_at=arrived)
    own_from_before = replace(record("s", "marketing", "email", True, 0), updated_at=dated_before)
    survivor.add(Cause.SET, own_from_before, written_at=dated_before)
    current = survivor.current()

    reverted = revert_merge("m1", survivor.audit, current, [], merged_at=MERGED_AT)

    assert [(item.key, item.restored) for item in reverted] == [(("analytics", ""), None), (("marketing", "sms"), None)]
    audit = {entry.record.request_id: entry for entry in survivor.audit}
    copies = inherited_withdrawals(current.values(), audit, {"a": {}}, since=MERGED_AT, own_only=True)
    assert copies == [replace(withdrawal, customer_id="a")]


def test_customers_still_merged_into_the_survivor_count_once_the_merge_is_gone() -> None:
    survivor = Survivor("s")
    b_grant = record("b", "marketing", "sms", True, 1)
    a_withdrawal = record("a", "marketing", "sms", False, 2)
    survivor.merge("m1", [a_withdrawal])
    survivor.merge("m2", [b_grant])  # A's withdrawal was more restrictive: B's grant took nothing
    assert len(survivor.audit) == 1

    [reverted] = revert_merge("m1", survivor.audit, survivor.current(), [b_grant])

    assert reverted.restored == b_grant


def test_another_merges_takeovers_are_not_touched() -> None:
    survivor = Survivor("s")
    survivor.merge("m1", [record("a", "marketing", "email", True, 1)])
    survivor.merge("m2", [record("b", "analytics", "", True, 1)])

    assert [item.key for item in revert_merge("m2", survivor.audit, survivor.current(), [])] == [("analytics", "")]
    assert revert_merge("m9", survivor.audit, survivor.current(), []) == []


def test_restored_customers_take_withdrawals_recorded_on_the_survivor_after_the_merge_only() -> None:
    before = record("s", "marketing", "email", False, 1)
    after = replace(record("s", "marketing", "sms", False, 0), updated_at=MERGED_AT + timedelta(hours=1))
    granted_after = replace(record("s", "analytics", "", True, 0), updated_at=MERGED_AT + timedelta(hours=1))
    taken = replace(
        record("b", "marketing", "push", False, 0), customer_id="s", updated_at=MERGED_AT + timedelta(hours=2)
    )
    audit = audit_of((before, "set"), (after, "set"), (granted_after, "set"), (taken, "merge"))

    copies = inherited_withdrawals(
        [before, after, granted_after, taken], audit, {"a": {}}, since=MERGED_AT, own_only=True
    )

    assert copies == [replace(after, customer_id="a")]


def test_a_restored_customers_newer_record_is_not_overridden() -> None:
    withdrawal = record("s", "marketing", "email", False, 5)
    newer_grant = record("a", "marketing", "email", True, 6)
    older_grant = record("c", "marketing", "email", True, 4)

    copies = inherited_withdrawals(
        [withdrawal],
        audit_of((withdrawal, "set")),
        {"a": {newer_grant.key: newer_grant}, "c": {older_grant.key: older_grant}},
        since=None,
        own_only=False,
    )

    assert copies == [replace(withdrawal, customer_id="c")]


def test_a_split_off_customer_takes_every_withdrawal_and_no_grant() -> None:
    withdrawal = record("s", "marketing", "", False, 1)
    merged_withdrawal = replace(record("b", "research", "", False, 2), customer_id="s", request_id="merge:m:b:x:")
    grant = record("s", "analytics", "", True, 3)

    copies = inherited_withdrawals(
        [withdrawal, merged_withdrawal, grant],
        audit_of((withdrawal, "set"), (merged_withdrawal, "merge"), (grant, "set")),
        {"n": {}},
        since=None,
        own_only=False,
    )

    assert [(copy.customer_id, copy.key) for copy in copies] == [("n", ("marketing", "")), ("n", ("research", ""))]
