"""IdentityService over gRPC: validate and normalize, translate, delegate. No business logic here.

Identifier values never appear in error messages or logs: a violation names the field and what is
wrong with it, not the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tailor.common.v1.common_pb2 import ItemError, PageResponse
from tailor.identity.v1 import identity_pb2 as pb
from tailor.identity.v1 import identity_pb2_grpc
from tailor_platform.interceptors import Context
from tailor_platform.protobuf import timestamp
from tailor_platform.validation import Validator

from tailor_identity.domain.keys import KeyMaker
from tailor_identity.domain.model import Conflict, Key, Record
from tailor_identity.domain.rekey import ReKeyCursor
from tailor_identity.service import Graph, IdentityService, Resolution

MAX_BATCH = 1000
MAX_IDENTIFIERS = 50
DEFAULT_REKEY_LIMIT = 10_000
MAX_REKEY_LIMIT = 100_000
"""Rows per ReKey call: one transaction holds them all, locked and in memory."""


class IdentityApi(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, service: IdentityService, keys: KeyMaker) -> None:
        self.service = service
        self.keys = keys

    async def Resolve(self, request: pb.ResolveRequest, context: Context) -> pb.ResolveResponse:
        check = Validator()
        record = self._record(check, request)
        check.done()
        [result] = await self.service.resolve_batch([record])
        return to_response(result)

    async def ResolveBatch(self, request: pb.ResolveBatchRequest, context: Context) -> pb.ResolveBatchResponse:
        check = Validator()
        if not request.records:
            check.fail("records", "at least one record is required")
        elif len(request.records) > MAX_BATCH:
            check.fail("records", f"at most {MAX_BATCH} records per call (got {len(request.records)})")
        check.done()
        response = pb.ResolveBatchResponse()
        records: list[Record] = []
        positions: list[int] = []
        for index, item in enumerate(request.records):
            item_check = Validator()
            record = self._record(item_check, item)
            if item_check.ok:
                records.append(record)
                positions.append(index)
            else:
                response.errors.extend(
                    ItemError(index=index, field=v.field, description=v.description) for v in item_check.violations
                )
        resolved = dict(zip(positions, await self.service.resolve_batch(records), strict=True))
        for index in range(len(request.records)):
            result = resolved.get(index)
            slot = response.results.add()
            if result is not None:
                fill_response(slot, result)
        return response

    async def Link(self, request: pb.LinkRequest, context: Context) -> pb.LinkResponse:
        check = Validator()
        check.identifier("customer_id", request.customer_id)
        keys = self._keys(check, request.identifiers, required=True)
        check.max_length("evidence", request.evidence, 200)
        check.done()
        result = await self.service.link(request.customer_id, keys, request.evidence or "link")
        return pb.LinkResponse(
            customer_id=result.customer_id,
            linked=result.linked,
            merged_ids=result.merged_ids,
            conflicts=[to_conflict(c) for c in result.conflicts],
        )

    async def GetGraph(self, request: pb.GetGraphRequest, context: Context) -> pb.GetGraphResponse:
        check = Validator()
        subject = request.WhichOneof("subject")
        if subject == "identifier":
            keys = self._keys(check, [request.identifier], required=True, prefix="identifier")
            check.done()
            customer_id = await self.service.owner_of(keys[0])
        else:
            check.identifier("customer_id", request.customer_id)
            check.done()
            customer_id = request.customer_id
        return to_graph(await self.service.graph(customer_id))

    async def Merge(self, request: pb.MergeRequest, context: Context) -> pb.MergeResponse:
        check = Validator()
        check.identifier("survivor_id", request.survivor_id)
        if not request.absorbed_ids:
            check.fail("absorbed_ids", "at least one customer id is required")
        for index, absorbed in enumerate(request.absorbed_ids):
            check.identifier(f"absorbed_ids[{index}]", absorbed)
            if absorbed == request.survivor_id:
                check.fail(f"absorbed_ids[{index}]", "must differ from survivor_id")
        if len(set(request.absorbed_ids)) != len(request.absorbed_ids):
            check.fail("absorbed_ids", "must not repeat a customer id")
        if check.required("reason", request.reason):
            check.max_length("reason", request.reason, 500)
        check.done()
        merge_id = await self.service.merge(request.survivor_id, list(request.absorbed_ids), request.reason)
        return pb.MergeResponse(merge_id=merge_id, survivor_id=request.survivor_id)

    async def Unmerge(self, request: pb.UnmergeRequest, context: Context) -> pb.UnmergeResponse:
        check = Validator()
        check.identifier("customer_id", request.customer_id)
        check.max_length("reason", request.reason, 500)
        if bool(request.merge_id) == bool(request.identifiers):
            check.fail("merge_id", "give either merge_id (reverse a merge) or identifiers (split them off)")
        keys: list[Key] = []
        if request.merge_id:
            check.identifier("merge_id", request.merge_id)
        else:
            keys = self._keys(check, request.identifiers, required=True)
        check.done()
        if request.merge_id:
            unmerge_id, restored = await self.service.unmerge(request.customer_id, request.merge_id, request.reason)
        else:
            unmerge_id, restored = await self.service.split(request.customer_id, keys, request.reason)
        return pb.UnmergeResponse(unmerge_id=unmerge_id, restored_ids=restored)

    async def FindCandidates(self, request: pb.FindCandidatesRequest, context: Context) -> pb.FindCandidatesResponse:
        check = Validator()
        if request.customer_id:  # else the whole review queue
            check.identifier("customer_id", request.customer_id)
        page_size, after = check.sequence_page(request.page)
        check.done()
        candidates, conflicts = await self.service.find_candidates(request.customer_id, after, page_size)
        response = pb.FindCandidatesResponse(
            candidates=[to_candidate(row) for row in candidates],
            page=PageResponse(next_page_token=str(candidates[-1].id) if len(candidates) == page_size else ""),
        )
        response.candidates.extend(
            pb.Candidate(
                customer_id=row.customer_id,
                other_customer_id=row.other_customer_id,
                status="conflict",
                reason=row.reason,
                comparisons={"identifier_type": row.id_type},
            )
            for row in conflicts
        )
        return response

    async def ResolveCandidate(
        self, request: pb.ResolveCandidateRequest, context: Context
    ) -> pb.ResolveCandidateResponse:
        check = Validator()
        if request.candidate_id <= 0:
            check.fail("candidate_id", "is required")
        check.max_length("reason", request.reason, 500)
        check.done()
        row, merge_id = await self.service.resolve_candidate(request.candidate_id, request.accept, request.reason)
        return pb.ResolveCandidateResponse(candidate=to_candidate(row), merge_id=merge_id)

    async def ReKey(self, request: pb.ReKeyRequest, context: Context) -> pb.ReKeyResponse:
        check = Validator()
        if not 0 <= request.limit <= MAX_REKEY_LIMIT:
            check.fail("limit", f"must be between 0 (the default, {DEFAULT_REKEY_LIMIT:,}) and {MAX_REKEY_LIMIT:,}")
        cursor = None
        if request.cursor:
            try:
                cursor = ReKeyCursor.parse(request.cursor)
            except ValueError as error:
                check.fail("cursor", str(error))
        check.done()
        outcome = await self.service.rekey(request.limit or DEFAULT_REKEY_LIMIT, cursor)
        return pb.ReKeyResponse(
            rekeyed=outcome.rekeyed,
            remaining=outcome.remaining,
            active_key_id=outcome.active_key_id,
            active_index_key_id=outcome.active_index_key_id,
            cursor=outcome.cursor,
        )

    # -- validation ------------------------------------------------------------------------------

    def _record(self, check: Validator, request: pb.ResolveRequest) -> Record:
        keys = self._keys(check, request.identifiers, required=False)
        person = None
        if request.HasField("person"):
            attrs = request.person
            try:
                person = self.keys.person(
                    attrs.given_name, attrs.surname, attrs.date_of_birth, attrs.address, attrs.postcode, attrs.city
                )
            except ValueError as error:
                name, _, description = str(error).partition(": ")
                check.fail(f"person.{name}", description)
            if person is not None and person.is_empty():
                person = None
        if not request.identifiers and person is None and check.ok:
            check.fail("identifiers", "a record needs at least one identifier or person attribute")
        return Record(keys, person)

    def _keys(
        self, check: Validator, identifiers: Sequence[pb.Identifier], *, required: bool, prefix: str = "identifiers"
    ) -> list[Key]:
        if required and not identifiers:
            check.fail(prefix, "at least one identifier is required")
        if len(identifiers) > MAX_IDENTIFIERS:
            check.fail(prefix, f"at most {MAX_IDENTIFIERS} identifiers per record")
            return []
        keys = []
        make_key = self.keys.key
        for index, identifier in enumerate(identifiers):
            try:
                keys.append(make_key(identifier.type, identifier.value, identifier.namespace))
            except ValueError as error:
                field = prefix if prefix == "identifier" else f"{prefix}[{index}]"
                check.fail(f"{field}.{_field_of(str(error))}", str(error))
        return keys


def _field_of(message: str) -> str:
    if message.startswith("unknown identifier type"):
        return "type"
    if message.startswith("namespace"):
        return "namespace"
    return "value"


def to_conflict(conflict: Conflict) -> pb.Conflict:
    return pb.Conflict(
        customer_id=conflict.customer_id,
        other_customer_id=conflict.other_customer_id,
        identifier_type=conflict.id_type,
        reason=conflict.reason,
    )


def to_response(result: Resolution) -> pb.ResolveResponse:
    response = pb.ResolveResponse()
    fill_response(response, result)
    return response


def fill_response(response: pb.ResolveResponse, result: Resolution) -> None:
    """Only the fields that are set (the batch hot path builds 1,000 of these per call)."""
    response.customer_id = result.customer_id
    response.matched_by = result.matched_by
    if result.created:
        response.created = True
    if result.merged_ids:
        response.merged_ids.extend(result.merged_ids)
    if result.conflicts:
        response.conflicts.extend(to_conflict(c) for c in result.conflicts)
    if result.probability:
        response.match_probability = result.probability


def to_candidate(row: Any) -> pb.Candidate:
    return pb.Candidate(
        candidate_id=row.id,
        customer_id=row.customer_id,
        other_customer_id=row.other_customer_id,
        match_probability=row.probability,
        match_weight=row.weight,
        comparisons=row.comparisons,
        status=row.status,
        reason=row.reason,
    )


def to_graph(graph: Graph) -> pb.GetGraphResponse:
    customer = graph.customer
    return pb.GetGraphResponse(
        customer_id=customer.id,
        status=customer.status,
        merged_into=customer.merged_into or "",
        links=[
            pb.IdentifierLink(
                identifier=pb.Identifier(type=link.id_type, value=link.value, namespace=link.namespace),
                source=link.row.source,
                evidence=link.row.evidence,
                linked_at=timestamp(link.row.created_at),
            )
            for link in graph.links
        ],
        merges=[
            pb.MergeEntry(
                merge_id=entry.id,
                kind=entry.kind,
                survivor_id=entry.survivor_id,
                absorbed_ids=entry.absorbed_ids,
                reason=entry.reason,
                evidence=entry.evidence,
                created_at=timestamp(entry.created_at),
                reverted_by=entry.reverted_by or "",
            )
            for entry in graph.merges
        ],
        conflicts=[
            pb.Conflict(
                customer_id=row.customer_id,
                other_customer_id=row.other_customer_id,
                identifier_type=row.id_type,
                reason=row.reason,
                created_at=timestamp(row.created_at),
            )
            for row in graph.conflicts
        ],
        person_records=graph.person_records,
    )
