"""identity -> NATS -> consent: when identity merges two customers, consent folds the absorbed
customer's consents into the survivor (the identity.merged contract), and when an operator reverses
the merge, each gets back its own (identity.unmerged); end to end with both services as real
processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from tailor.consent.v1 import consent_pb2, consent_pb2_grpc
from tailor.identity.v1 import identity_pb2, identity_pb2_grpc
from tailor_cli.launcher import Platform


@pytest.fixture
def platform(start_platform: Callable[..., Platform]) -> Platform:
    return start_platform(["consent", "identity"])


async def test_identity_merge_moves_consent_to_the_survivor_and_unmerge_takes_it_back(platform: Platform) -> None:
    async with (
        grpc.aio.insecure_channel(platform.address("identity")) as identity_channel,
        grpc.aio.insecure_channel(platform.address("consent")) as consent_channel,
    ):
        identity = identity_pb2_grpc.IdentityServiceStub(identity_channel)
        consent = consent_pb2_grpc.ConsentServiceStub(consent_channel)
        app, shop = await asyncio.gather(
            identity.Resolve(
                identity_pb2.ResolveRequest(identifiers=[identity_pb2.Identifier(type="email", value="m@example.com")]),
                timeout=10,
            ),
            identity.Resolve(
                identity_pb2.ResolveRequest(identifiers=[identity_pb2.Identifier(type="loyalty_id", value="L-77")]),
                timeout=10,
            ),
        )
        await consent.SetConsent(
            consent_pb2.SetConsentRequest(
                customer_id=app.customer_id,
                purpose="marketing",
                channel="email",
                granted=True,
                source="app:signup",
                request_id="consent-app-1",
            ),
            timeout=10,
        )
        # A till receipt shows both: the loyalty customer survives (higher priority) and absorbs.
        both = await identity.Resolve(
            identity_pb2.ResolveRequest(
                identifiers=[
                    identity_pb2.Identifier(type="email", value="m@example.com"),
                    identity_pb2.Identifier(type="loyalty_id", value="L-77"),
                ]
            ),
            timeout=10,
        )
        assert both.customer_id == shop.customer_id and list(both.merged_ids) == [app.customer_id]
        check = consent_pb2.CheckConsentRequest(customer_id=shop.customer_id, purpose="marketing", channel="email")
        for _ in range(100):  # the merge travels through the outbox relay and consent's consumer
            if (await consent.CheckConsent(check, timeout=5)).allowed:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("consent never saw the merge")

        graph = await identity.GetGraph(identity_pb2.GetGraphRequest(customer_id=shop.customer_id), timeout=10)
        [merge] = graph.merges
        await identity.Unmerge(
            identity_pb2.UnmergeRequest(customer_id=shop.customer_id, merge_id=merge.merge_id, reason="two people"),
            timeout=10,
        )
        for _ in range(100):  # the survivor only had the grant from the customer it absorbed
            decision = await consent.CheckConsent(check, timeout=5)
            if not decision.allowed:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("consent never saw the unmerge")
        assert decision.reason == "no_consent_recorded"
        own = consent_pb2.CheckConsentRequest(customer_id=app.customer_id, purpose="marketing", channel="email")
        assert (await consent.CheckConsent(own, timeout=5)).allowed
