"""What profile knows about events: the vocabulary, and the facts of one event that traits use.

`EventFacts` is the pure, already-validated essence of an event (times as epoch seconds, money in
minor units of the base currency), so that trait computation never touches protobuf or the clock.
"""

from __future__ import annotations

from typing import NamedTuple

DAY_S = 86_400

CHANNELS = frozenset({"web", "app", "pos", "email", "sms", "push", "call_center", "kiosk"})
ONLINE_ORDER = "order_completed"
STORE_PURCHASE = "pos_purchase"
PURCHASE_TYPES = frozenset({ONLINE_ORDER, STORE_PURCHASE})
CUSTOM_PREFIX = "custom."

EVENT_TYPES = frozenset(
    {
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "checkout_started",
        ONLINE_ORDER,
        STORE_PURCHASE,
        "return",
        "loyalty_earned",
        "loyalty_redeemed",
        "store_visit",
        "support_ticket_opened",
        "support_ticket_closed",
        "message_opened",
        "message_clicked",
        "app_opened",
    }
)


def is_known_type(event_type: str) -> bool:
    return event_type in EVENT_TYPES or (event_type.startswith(CUSTOM_PREFIX) and len(event_type) > len(CUSTOM_PREFIX))


class Item(NamedTuple):
    """A line item in base-currency minor units."""

    sku: str
    category: str
    quantity: int
    unit_price: int

    @property
    def amount(self) -> int:
        return self.quantity * self.unit_price


class EventFacts(NamedTuple):
    """What traits need to know about one event. (Named tuples, like `Item`: ingestion makes one
    per event, and a frozen dataclass took five times as long to make.)"""

    event_id: str
    type: str
    channel: str
    at: int
    """Epoch seconds."""
    store_id: str = ""
    items: tuple[Item, ...] = ()
    amount: int = 0
    """Purchase total or refund, minor units (line item sum when the event gave none)."""
    points: int = 0
    ticket_id: str = ""
    category: str = ""
    """For product views: the viewed product's category."""

    @property
    def day(self) -> int:
        return self.at // DAY_S
