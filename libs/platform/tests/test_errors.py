from google.rpc import error_details_pb2
from tailor.common.v1.common_pb2 import PageRequest
from tailor_platform.errors import FieldViolation, InvalidArgument
from tailor_platform.validation import Validator


def test_validator_collects_every_violation() -> None:
    check = Validator(prefix="record.")
    check.identifier("customer_id", "")
    check.identifier("request_id", "x" * 300)
    check.one_of("purpose", "nope", {"marketing"})
    check.one_of("channel", "", {"email"}, optional=True)
    assert [v.field for v in check.violations] == ["record.customer_id", "record.request_id", "record.purpose"]
    try:
        check.done()
    except InvalidArgument as error:
        assert "record.purpose" in error.message
    else:
        raise AssertionError("done() must raise")


def test_invalid_argument_carries_bad_request_details() -> None:
    status = InvalidArgument([FieldViolation("purpose", "unknown")]).to_status()
    assert status.code == 3  # INVALID_ARGUMENT
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    assert [(v.field, v.description) for v in detail.field_violations] == [("purpose", "unknown")]


def test_identifiers_refuse_whitespace_and_control_characters() -> None:
    for bad in ("a b", "tab\there", "new\nline", "ünïcode"):
        check = Validator()
        check.identifier("id", bad)
        assert not check.ok, bad
    check = Validator()
    check.identifier("id", "cust-42:web@shop.example_1")
    assert check.ok


def test_an_identifier_with_a_final_newline_is_refused() -> None:
    check = Validator()
    check.identifier("id", "abc\n")
    assert [v.field for v in check.violations] == ["id"]


def test_a_sequence_page_token_we_never_made_is_a_field_violation() -> None:
    for bad in ("²", "12a", "-1", str(2**63)):
        check = Validator()
        check.sequence_page(PageRequest(page_token=bad))
        assert [v.field for v in check.violations] == ["page.page_token"], bad
    check = Validator()
    assert check.sequence_page(PageRequest(page_size=10, page_token=str(2**63 - 1))) == (10, 2**63 - 1)
    assert check.ok


def test_text_and_timestamps_the_database_cannot_hold_are_field_violations() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    check = Validator()
    check.text("name", "a\x00b", 10)
    check.text("long", "x" * 11, 10)
    check.text("fine", "x" * 10, 10)
    assert check.timestamp("at", Timestamp(seconds=2**62)) is None
    assert check.timestamp("ok", Timestamp(seconds=86_400)) is not None
    assert [v.field for v in check.violations] == ["name", "long", "at"]
