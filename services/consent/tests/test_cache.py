from datetime import UTC, datetime

from tailor_consent.domain.cache import ConsentCache, Redirect
from tailor_consent.domain.model import ConsentRecord

RECORD = ConsentRecord("c1", "marketing", "email", True, "web", "consent", "v1", datetime.now(UTC), "r1")


def test_miss_then_hit() -> None:
    cache = ConsentCache(10)
    assert cache.get("c1") is None
    assert cache.put("c1", {RECORD.key: RECORD}, cache.ticket("c1"))
    assert cache.get("c1") == {RECORD.key: RECORD}
    assert (cache.hits, cache.misses) == (1, 1)


def test_load_that_raced_an_invalidation_is_not_cached() -> None:
    cache = ConsentCache(10)
    ticket = cache.ticket("c1")  # a read starts loading from the database
    cache.invalidate("c1")  # meanwhile the consent changes
    assert not cache.put("c1", {RECORD.key: RECORD}, ticket)
    assert cache.get("c1") is None


def test_clear_voids_loads_in_flight() -> None:
    cache = ConsentCache(10)
    ticket = cache.ticket("c1")
    cache.clear()
    assert not cache.put("c1", {}, ticket)


def test_least_recently_used_customer_is_evicted() -> None:
    cache = ConsentCache(2)
    for customer in ("a", "b"):
        cache.put(customer, {}, cache.ticket(customer))
    cache.get("a")
    cache.put("c", {}, cache.ticket("c"))
    assert cache.get("b") is None
    assert cache.get("a") == {}
    assert len(cache) == 2


def test_invalidation_counters_stay_bounded() -> None:
    cache = ConsentCache(1)
    for number in range(10):
        cache.invalidate(f"c{number}")
    assert len(cache._generations) <= 4


def test_a_merged_away_customer_is_a_redirect_dropped_like_any_entry() -> None:
    cache = ConsentCache(10)
    assert cache.put("absorbed", Redirect("survivor"), cache.ticket("absorbed"))
    assert cache.get("absorbed") == Redirect("survivor")
    cache.invalidate("absorbed")  # the merge was reversed
    assert cache.get("absorbed") is None


def test_a_load_that_raced_an_invalidation_is_not_cached_after_the_customer_was_evicted() -> None:
    cache = ConsentCache(1)
    slow = cache.ticket("c1")  # a read of c1 starts loading; the database answers slowly
    assert cache.put("c1", {}, cache.ticket("c1"))  # another read of c1 loads and caches
    cache.invalidate("c1")  # c1's consent changes (a grant is withdrawn)
    assert cache.put("c1", {}, cache.ticket("c1"))  # a read loads the withdrawal
    assert cache.put("c2", {}, cache.ticket("c2"))  # c1 is evicted to make room
    stale = {RECORD.key: RECORD}  # what the slow read loaded before the change
    assert not cache.put("c1", stale, slow)
    assert cache.get("c1") is None
