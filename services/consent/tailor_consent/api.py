"""ConsentService over gRPC: validate, translate, delegate. No business logic here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

from tailor.common.v1.common_pb2 import ItemError, PageResponse
from tailor.consent.v1 import consent_pb2 as pb
from tailor.consent.v1 import consent_pb2_grpc
from tailor_platform.interceptors import Context
from tailor_platform.protobuf import timestamp
from tailor_platform.validation import Validator

from tailor_consent.domain.model import ConsentRecord
from tailor_consent.domain.registry import Registry
from tailor_consent.service import ConsentService

IMPORT_BATCH_SIZE = 500


class ConsentApi(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(self, service: ConsentService, registry: Registry) -> None:
        self.service = service
        self.registry = registry

    async def SetConsent(self, request: pb.SetConsentRequest, context: Context) -> pb.SetConsentResponse:
        check = Validator()
        record = self._record(check, request, datetime.now(UTC))
        check.done()
        stored, applied = await self.service.set_consent(record)
        return pb.SetConsentResponse(consent=to_proto(stored), applied=applied)

    async def CheckConsent(self, request: pb.CheckConsentRequest, context: Context) -> pb.CheckConsentResponse:
        check = Validator()
        check.identifier("customer_id", request.customer_id)
        check.one_of("purpose", request.purpose, self.registry.purposes)
        check.one_of("channel", request.channel, self.registry.channels, optional=True)
        check.done()
        decision = await self.service.check(request.customer_id, request.purpose, request.channel)
        response = pb.CheckConsentResponse(allowed=decision.allowed, reason=decision.reason.value)
        if decision.decided_by is not None:
            response.decided_by.CopyFrom(to_proto(decision.decided_by))
        return response

    async def GetConsents(self, request: pb.GetConsentsRequest, context: Context) -> pb.GetConsentsResponse:
        check = Validator()
        check.identifier("customer_id", request.customer_id)
        check.done()
        records = await self.service.records(request.customer_id)
        return pb.GetConsentsResponse(consents=[to_proto(r) for _, r in sorted(records.items())])

    async def ConsentHistory(self, request: pb.ConsentHistoryRequest, context: Context) -> pb.ConsentHistoryResponse:
        check = Validator()
        check.identifier("customer_id", request.customer_id)
        page_size, after = check.sequence_page(request.page)
        check.done()
        # One more than a page: a token only when another entry follows (none after an exactly full
        # last page).
        entries = await self.service.history(request.customer_id, after, page_size + 1)
        more, entries = len(entries) > page_size, entries[:page_size]
        next_token = str(entries[-1][0]) if more else ""
        return pb.ConsentHistoryResponse(
            entries=[audit_entry(sequence, cause, record) for sequence, cause, record in entries],
            page=PageResponse(next_page_token=next_token),
        )

    async def ImportConsents(
        self, request_iterator: AsyncIterator[pb.ImportConsentsRequest], context: Context
    ) -> pb.ImportConsentsResponse:
        response = pb.ImportConsentsResponse()
        batch: list[ConsentRecord] = []
        async for item in request_iterator:
            # Each record's own "now" (when it arrived): a stream may run for minutes, and a record
            # stamped after the stream began is not in the future.
            now = datetime.now(UTC)
            index = response.received
            response.received += 1
            check = Validator(prefix="record.")
            record = self._record(check, item.record, now)
            # recorded_at sits beside the record, not in it: its violations are named without the prefix.
            when = Validator()
            recorded_at = _recorded_at(when, item, now)
            if recorded_at is not None:
                record = replace(record, updated_at=recorded_at)
            if not (check.ok and when.ok):
                response.errors.extend(
                    ItemError(index=index, field=v.field, description=v.description)
                    for v in [*check.violations, *when.violations]
                )
                continue
            batch.append(record)
            if len(batch) >= IMPORT_BATCH_SIZE:
                await self._import(batch, response)
                batch = []
        await self._import(batch, response)
        return response

    async def ListPurposes(self, request: pb.ListPurposesRequest, context: Context) -> pb.ListPurposesResponse:
        return pb.ListPurposesResponse(purposes=sorted(self.registry.purposes), channels=sorted(self.registry.channels))

    async def _import(self, batch: list[ConsentRecord], response: pb.ImportConsentsResponse) -> None:
        if not batch:
            return
        outcome = await self.service.import_batch(batch)
        response.imported += outcome.imported
        response.skipped += outcome.skipped

    def _record(self, check: Validator, request: pb.SetConsentRequest, at: datetime) -> ConsentRecord:
        check.identifier("customer_id", request.customer_id)
        check.one_of("purpose", request.purpose, self.registry.purposes)
        check.one_of("channel", request.channel, self.registry.channels, optional=True)
        if check.required("source", request.source):
            check.text("source", request.source, 200)
        check.one_of("legal_basis", request.legal_basis, self.registry.legal_bases, optional=True)
        check.text("policy_version", request.policy_version, 64)
        check.identifier("request_id", request.request_id, max_length=200)
        return ConsentRecord(
            customer_id=request.customer_id,
            purpose=request.purpose,
            channel=request.channel,
            granted=request.granted,
            source=request.source,
            legal_basis=request.legal_basis or "consent",
            policy_version=request.policy_version,
            updated_at=at,
            request_id=request.request_id,
        )


def _recorded_at(check: Validator, item: pb.ImportConsentsRequest, now: datetime) -> datetime | None:
    """When an imported record was recorded (None: not given, or not a usable time)."""
    if not item.HasField("recorded_at"):
        return None
    recorded_at = check.timestamp("recorded_at", item.recorded_at)
    if recorded_at is None:
        return None
    if recorded_at > now:
        check.fail("recorded_at", "lies in the future")
        return None
    return recorded_at


def to_proto(record: ConsentRecord) -> pb.Consent:
    return pb.Consent(
        customer_id=record.customer_id,
        purpose=record.purpose,
        channel=record.channel,
        granted=record.granted,
        source=record.source,
        legal_basis=record.legal_basis,
        policy_version=record.policy_version,
        updated_at=timestamp(record.updated_at),
    )


def audit_entry(sequence: int, cause: str, record: ConsentRecord) -> pb.AuditEntry:
    return pb.AuditEntry(
        sequence=sequence,
        customer_id=record.customer_id,
        purpose=record.purpose,
        channel=record.channel,
        granted=record.granted,
        source=record.source,
        legal_basis=record.legal_basis,
        policy_version=record.policy_version,
        request_id=record.request_id,
        cause=cause,
        recorded_at=timestamp(record.updated_at),
        removed=record.removed,
    )
