"""Receiver-side verification (ingestlayer.sdk.webhooks.verify) for both signature schemes."""

from __future__ import annotations

import datetime
import doctest
import json
import time

import pytest
import standardwebhooks
import stripe
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from ingestlayer.delivery.signing import generate_secret, ingestlayer_signature, standard_webhooks_headers
from ingestlayer.sdk import webhooks
from ingestlayer.sdk.webhooks import WebhookVerificationError, verify

SECRET = "whsec_test"
OLD_SECRET = "whsec_old"
T = 1717000000
NOW = T + 10
BODY = b'{"type":"user.signed_up","payload":{"email":"ada@acme.com","plan":"pro"}}'
EVENT = {"type": "user.signed_up", "payload": {"email": "ada@acme.com", "plan": "pro"}}
# Pinned in test_signing.py too: HMAC-SHA256(b"whsec_test", b"1717000000." + BODY), and for whsec_old.
GOLDEN_V1 = "90654a5ef552884e4a0156eb75a22d2e71fc524ff3e673f254a86ad1327a675d"
GOLDEN_V1_OLD = "e5785f5bdb1dac0654d2524c22e334d09c007daa4ef211713b7f5439ca8a54f3"
GOLDEN_HEADER = f"t=1717000000,v1={GOLDEN_V1}"
STD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_2Qx7"
GOLDEN_STD = "v1,JgglUjgH/QMMfiyVkh+PxDYduGOgUkFasJ43F0aln/c="


def _h(value: str) -> dict[str, str]:
    return {"X-Ingestlayer-Signature": value}


def _std_headers(signature: str = GOLDEN_STD, timestamp: str = str(T)) -> dict[str, str]:
    return {"webhook-id": MSG_ID, "webhook-timestamp": timestamp, "webhook-signature": signature}


# --- X-Ingestlayer-Signature -----------------------------------------------------------------------


def test_accepts_golden_header() -> None:
    assert verify(SECRET, _h(GOLDEN_HEADER), BODY, now=NOW) == EVENT


def test_accepts_str_body() -> None:
    assert verify(SECRET, _h(GOLDEN_HEADER), BODY.decode(), now=NOW) == EVENT


def test_round_trip_with_signing() -> None:
    header = ingestlayer_signature([SECRET], T, BODY)
    assert verify(SECRET, _h(header), BODY, now=NOW) == EVENT


def test_default_now_is_current_time() -> None:
    header = ingestlayer_signature([SECRET], int(time.time()), BODY)
    assert verify(SECRET, _h(header), BODY) == EVENT


def test_rejects_tampered_body() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(SECRET, _h(GOLDEN_HEADER), BODY.replace(b"pro", b"free"), now=NOW)


def test_rejects_wrong_secret() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify("whsec_wrong", _h(GOLDEN_HEADER), BODY, now=NOW)


def test_rejects_tampered_timestamp() -> None:
    # Moving t= to look fresh invalidates the signature: the timestamp is part of the signed content.
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(SECRET, _h(f"t={T + 5},v1={GOLDEN_V1}"), BODY, now=NOW)


def test_rejects_stale_timestamp() -> None:
    with pytest.raises(WebhookVerificationError, match=r"timestamp outside tolerance: 301s old"):
        verify(SECRET, _h(GOLDEN_HEADER), BODY, now=T + 301)


def test_rejects_future_timestamp() -> None:
    with pytest.raises(WebhookVerificationError, match=r"timestamp outside tolerance: 301s in the future"):
        verify(SECRET, _h(GOLDEN_HEADER), BODY, now=T - 301)


def test_tolerance_boundary_is_inclusive() -> None:
    assert verify(SECRET, _h(GOLDEN_HEADER), BODY, now=T + 300) == EVENT
    assert verify(SECRET, _h(GOLDEN_HEADER), BODY, now=T - 300) == EVENT


def test_custom_tolerance() -> None:
    assert verify(SECRET, _h(GOLDEN_HEADER), BODY, tolerance=3600, now=T + 3000) == EVENT
    with pytest.raises(WebhookVerificationError, match="outside tolerance"):
        verify(SECRET, _h(GOLDEN_HEADER), BODY, tolerance=5, now=T + 6)


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/json"}, {"Stripe-Signature": "x"}])
def test_rejects_missing_header(headers: dict[str, str]) -> None:
    with pytest.raises(WebhookVerificationError, match="missing header"):
        verify(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "without '='"),
        ("garbage", "without '='"),
        (f"v1={GOLDEN_V1}", "no t="),
        ("t=1717000000", "no v1="),
        ("t=1717000000,v0=abc", "no v1="),
        (f"t=abc,v1={GOLDEN_V1}", "t= is not unix seconds"),
        (f"t=-5,v1={GOLDEN_V1}", "t= is not unix seconds"),
        (f"t=1717000000.5,v1={GOLDEN_V1}", "t= is not unix seconds"),
        (f"t=\uff11\uff17,v1={GOLDEN_V1}", "t= is not unix seconds"),  # fullwidth digits
        (f"t={'9' * 5000},v1={GOLDEN_V1}", "t= is not unix seconds"),
        (f"t=1717000000,t=1717000000,v1={GOLDEN_V1}", "several t="),
        ("t=1717000000,v1=nothex", "v1= is not a hex SHA-256"),
        (f"t=1717000000,v1={GOLDEN_V1[:-1]}", "v1= is not a hex SHA-256"),
        (f"t=1717000000,,v1={GOLDEN_V1}", "without '='"),
    ],
)
def test_rejects_malformed_header(value: str, why: str) -> None:
    with pytest.raises(WebhookVerificationError, match=f"malformed header: .*{why}"):
        verify(SECRET, _h(value), BODY, now=NOW)


@pytest.mark.parametrize(
    "name",
    [
        "X-Ingestlayer-Signature",
        "x-ingestlayer-signature",
        "X-INGESTLAYER-SIGNATURE",
        "x-IngestLayer-signature",
    ],
)
def test_header_name_is_case_insensitive(name: str) -> None:
    assert verify(SECRET, {name: GOLDEN_HEADER}, BODY, now=NOW) == EVENT


def test_works_with_a_framework_headers_object() -> None:
    headers = Headers(raw=[(b"x-ingestlayer-signature", GOLDEN_HEADER.encode()), (b"content-type", b"json")])
    assert verify(SECRET, headers, BODY, now=NOW) == EVENT


def test_conflicting_duplicate_headers_are_rejected() -> None:
    headers = {"X-Ingestlayer-Signature": GOLDEN_HEADER, "x-ingestlayer-signature": f"t={T},v1={'0' * 64}"}
    with pytest.raises(WebhookVerificationError, match="conflicting"):
        verify(SECRET, headers, BODY, now=NOW)


def test_identical_duplicate_headers_are_fine() -> None:
    headers = {"X-Ingestlayer-Signature": GOLDEN_HEADER, "x-ingestlayer-signature": GOLDEN_HEADER}
    assert verify(SECRET, headers, BODY, now=NOW) == EVENT


def test_rotation_two_v1_entries_either_secret_verifies() -> None:
    header = f"t={T},v1={GOLDEN_V1_OLD},v1={GOLDEN_V1}"
    assert verify(SECRET, _h(header), BODY, now=NOW) == EVENT
    assert verify(OLD_SECRET, _h(header), BODY, now=NOW) == EVENT
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify("whsec_other", _h(header), BODY, now=NOW)


def test_rotation_receiver_with_several_secrets() -> None:
    # The sender still signs with the old secret only; the receiver already knows both.
    header = ingestlayer_signature([OLD_SECRET], T, BODY)
    assert verify([SECRET, OLD_SECRET], _h(header), BODY, now=NOW) == EVENT
    assert verify((OLD_SECRET,), _h(header), BODY, now=NOW) == EVENT


def test_unknown_schemes_are_ignored() -> None:
    header = f"t={T},v0=deadbeef,v2=whatever,v1={GOLDEN_V1}"
    assert verify(SECRET, _h(header), BODY, now=NOW) == EVENT


def test_whitespace_and_uppercase_hex_are_tolerated() -> None:
    header = f"t={T}, v1={GOLDEN_V1.upper()}"
    assert verify(SECRET, _h(header), BODY, now=NOW) == EVENT


def test_stripe_helper_header_is_accepted() -> None:
    # Stripe's own test helper builds the same header we expect, only under a different name.
    header = stripe.WebhookSignature.generate_signature_header(BODY.decode(), SECRET, timestamp=T)
    assert verify(SECRET, _h(header), BODY, now=NOW) == EVENT


def test_body_that_is_not_json_is_rejected_after_a_valid_signature() -> None:
    body = b"not json"
    header = ingestlayer_signature([SECRET], T, body)
    with pytest.raises(WebhookVerificationError, match="not JSON"):
        verify(SECRET, _h(header), body, now=NOW)
    invalid_utf8 = b'{"a": "\xff"}'
    header = ingestlayer_signature([SECRET], T, invalid_utf8)
    with pytest.raises(WebhookVerificationError, match="not JSON"):
        verify(SECRET, _h(header), invalid_utf8, now=NOW)


@given(
    secret=st.text(min_size=1, max_size=40),
    event=st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=20), max_size=5),
    flip=st.integers(min_value=0),
)
def test_round_trip_property_and_any_byte_change_is_rejected(
    secret: str, event: dict[str, object], flip: int
) -> None:
    body = json.dumps(event).encode()
    header = ingestlayer_signature([secret], T, body)
    assert verify(secret, _h(header), body, now=NOW) == event
    i = flip % len(body)
    tampered = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(secret, _h(header), tampered, now=NOW)


# --- Standard Webhooks ------------------------------------------------------------------------------


def test_standard_golden_headers_accepted() -> None:
    assert verify(STD_SECRET, _std_headers(), BODY, now=NOW) == EVENT


def test_standard_round_trip_with_signing_and_rotation() -> None:
    new = generate_secret("standard")
    headers = standard_webhooks_headers([new, STD_SECRET], MSG_ID, T, BODY)
    assert verify(new, headers, BODY, now=NOW) == EVENT
    assert verify(STD_SECRET, headers, BODY, now=NOW) == EVENT
    assert verify(["whsec_dGVzdA==", STD_SECRET], headers, BODY, now=NOW) == EVENT


def test_standard_headers_from_reference_package_accepted() -> None:
    now = int(time.time())
    signature = standardwebhooks.Webhook(STD_SECRET).sign(
        MSG_ID, datetime.datetime.fromtimestamp(now, datetime.UTC), BODY.decode()
    )
    headers = {"Webhook-Id": MSG_ID, "Webhook-Timestamp": str(now), "Webhook-Signature": signature}
    assert verify(STD_SECRET, headers, BODY) == EVENT


def test_standard_unprefixed_secret() -> None:
    assert verify(STD_SECRET.removeprefix("whsec_"), _std_headers(), BODY, now=NOW) == EVENT


def test_standard_rejects_tampered_body_wrong_secret_and_id() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(STD_SECRET, _std_headers(), BODY.replace(b"pro", b"free"), now=NOW)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify("whsec_dGVzdA==", _std_headers(), BODY, now=NOW)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(STD_SECRET, {**_std_headers(), "webhook-id": "msg_other"}, BODY, now=NOW)


def test_standard_rejects_stale_and_future() -> None:
    with pytest.raises(WebhookVerificationError, match="outside tolerance: 301s old"):
        verify(STD_SECRET, _std_headers(), BODY, now=T + 301)
    with pytest.raises(WebhookVerificationError, match="outside tolerance: 301s in the future"):
        verify(STD_SECRET, _std_headers(), BODY, now=T - 301)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_missing_header_is_named(missing: str) -> None:
    headers = _std_headers()
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=f"missing header: {missing}"):
        verify(STD_SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (_std_headers(timestamp="soon"), "webhook-timestamp is not unix seconds"),
        (_std_headers(timestamp="1717000000.0"), "webhook-timestamp is not unix seconds"),
        (_std_headers(signature="v1"), "not '<version>,<signature>'"),
        (_std_headers(signature="v1,@@@"), "not base64"),
        (_std_headers(signature="v1a,AAAA"), "no v1 signature"),
    ],
)
def test_standard_malformed(headers: dict[str, str], why: str) -> None:
    with pytest.raises(WebhookVerificationError, match=f"malformed header: .*{why}"):
        verify(STD_SECRET, headers, BODY, now=NOW)


def test_standard_other_versions_are_skipped() -> None:
    headers = _std_headers(signature=f"v1a,AAAA  v1,AAAA {GOLDEN_STD}")
    assert verify(STD_SECRET, headers, BODY, now=NOW) == EVENT


@pytest.mark.parametrize("secret", ["whsec_not-base64", "acme-hooks-secret-2024!"])
def test_standard_headers_with_a_secret_that_is_not_base64_are_no_match_not_a_crash(secret: str) -> None:
    """An endpoint's hmac secret need not be base64: one unsigned request carrying Standard
    Webhooks headers raised ValueError, a 500 (or a crash) in the receiver."""
    with pytest.raises(WebhookVerificationError, match="no secret given is one"):
        verify(secret, _std_headers(), BODY, now=NOW)
    assert verify([secret, STD_SECRET], _std_headers(), BODY, now=NOW) == EVENT


def test_a_standard_signature_that_is_not_ascii_is_malformed() -> None:
    with pytest.raises(WebhookVerificationError, match=r"malformed header: .*not base64"):
        verify(STD_SECRET, _std_headers(signature="v1,\u00e9\u00e9\u00e9\u00e9"), BODY, now=NOW)


def test_ingestlayer_header_wins_over_standard_headers() -> None:
    # A broken X-Ingestlayer-Signature is not rescued by valid Standard Webhooks headers: no downgrade.
    headers = {**_std_headers(), "X-Ingestlayer-Signature": f"t={T},v1={'0' * 64}"}
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(STD_SECRET, headers, BODY, now=NOW)
    both = {**_std_headers(), "X-Ingestlayer-Signature": ingestlayer_signature([STD_SECRET], T, BODY)}
    assert verify(STD_SECRET, both, BODY, now=NOW) == EVENT


# --- caller errors ---------------------------------------------------------------------------------


def test_no_secret_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        verify([], _h(GOLDEN_HEADER), BODY, now=NOW)
    with pytest.raises(ValueError, match="empty"):
        verify("", _h(GOLDEN_HEADER), BODY, now=NOW)


def test_negative_tolerance_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        verify(SECRET, _h(GOLDEN_HEADER), BODY, tolerance=-1, now=NOW)


def test_parsed_body_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="raw request body"):
        verify(SECRET, _h(GOLDEN_HEADER), EVENT, now=NOW)  # type: ignore[arg-type]


def test_bytearray_body_is_accepted() -> None:
    assert verify(SECRET, _h(GOLDEN_HEADER), bytearray(BODY), now=NOW) == EVENT  # type: ignore[arg-type]


def test_docstring_examples() -> None:
    result = doctest.testmod(webhooks, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_the_documented_import_path_verifies_and_refuses() -> None:
    """SPEC §8 names ``ingestlayer.webhooks.verify(secret, headers, raw_body, tolerance=300)``."""
    from ingestlayer.webhooks import WebhookVerificationError as DocumentedError
    from ingestlayer.webhooks import verify as documented_verify

    body = b'{"id":"evt_1","type":"invoice.paid"}'
    headers = {"X-Ingestlayer-Signature": ingestlayer_signature(["s3cret"], int(time.time()), body)}
    assert documented_verify("s3cret", headers, body, tolerance=300)["type"] == "invoice.paid"
    with pytest.raises(DocumentedError):
        documented_verify("wrong", headers, body)
