"""Outbound webhook signatures: pinned golden values plus interop with Stripe and Standard Webhooks.

The golden strings below were computed once, independently of ingestlayer, with ``hmac``/``hashlib``
(see ``_independent_*``) and pasted as literals: if the implementation *and* the helper ever drifted
together, the literals would still catch it.
"""

from __future__ import annotations

import base64
import datetime
import doctest
import hashlib
import hmac
import time

import pytest
import standardwebhooks
import stripe
from hypothesis import given
from hypothesis import strategies as st

from ingestlayer.delivery import signing
from ingestlayer.delivery.signing import (
    SIGNATURE_HEADER,
    generate_secret,
    ingestlayer_signature,
    standard_webhooks_headers,
    validate_standard_secret,
)

SECRET = "whsec_test"
OLD_SECRET = "whsec_old"
T = 1717000000
BODY = b'{"type":"user.signed_up","payload":{"email":"ada@acme.com","plan":"pro"}}'
MSG_ID = "msg_2Qx7"
# A realistic Standard Webhooks secret (24 random bytes, base64, as Svix issues them).
STD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# HMAC-SHA256(b"whsec_test", b"1717000000." + BODY) and with b"whsec_old".
GOLDEN_V1 = "90654a5ef552884e4a0156eb75a22d2e71fc524ff3e673f254a86ad1327a675d"
GOLDEN_V1_OLD = "e5785f5bdb1dac0654d2524c22e334d09c007daa4ef211713b7f5439ca8a54f3"
# Same key, empty body.
GOLDEN_V1_EMPTY = "863fb1b5c588d44f690479c9eb5bfa3501ee6c1141dfe8940efc86544d56db6d"
# Standard Webhooks over b"msg_2Qx7.1717000000." + BODY; "whsec_test" decodes to b"\xb5\xeb-".
GOLDEN_STD = "v1,PdqLgZOVfL1NLlJgpGZQ/Fr84GzTlQkdcG3J0t+hi+U="
GOLDEN_STD_REAL = "v1,JgglUjgH/QMMfiyVkh+PxDYduGOgUkFasJ43F0aln/c="


def _independent_v1(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _independent_std(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- golden values ---------------------------------------------------------------------------------


def test_golden_literals_match_an_independent_computation() -> None:
    assert _independent_v1(SECRET, T, BODY) == GOLDEN_V1
    assert _independent_v1(OLD_SECRET, T, BODY) == GOLDEN_V1_OLD
    assert _independent_v1(SECRET, T, b"") == GOLDEN_V1_EMPTY
    assert _independent_std(SECRET, MSG_ID, T, BODY) == GOLDEN_STD
    assert _independent_std(STD_SECRET, MSG_ID, T, BODY) == GOLDEN_STD_REAL


def test_header_name() -> None:
    assert SIGNATURE_HEADER == "X-Ingestlayer-Signature"


def test_ingestlayer_signature_golden() -> None:
    assert ingestlayer_signature([SECRET], T, BODY) == f"t=1717000000,v1={GOLDEN_V1}"


def test_ingestlayer_signature_empty_body_golden() -> None:
    assert ingestlayer_signature([SECRET], T, b"") == f"t=1717000000,v1={GOLDEN_V1_EMPTY}"


def test_ingestlayer_signature_rotation_keeps_order() -> None:
    assert ingestlayer_signature([SECRET, OLD_SECRET], T, BODY) == (
        f"t=1717000000,v1={GOLDEN_V1},v1={GOLDEN_V1_OLD}"
    )
    assert ingestlayer_signature([OLD_SECRET, SECRET], T, BODY) == (
        f"t=1717000000,v1={GOLDEN_V1_OLD},v1={GOLDEN_V1}"
    )


def test_standard_headers_golden() -> None:
    assert standard_webhooks_headers([SECRET], MSG_ID, T, BODY) == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": "1717000000",
        "webhook-signature": GOLDEN_STD,
    }


def test_standard_headers_rotation_space_separated_in_order() -> None:
    headers = standard_webhooks_headers([STD_SECRET, SECRET], MSG_ID, T, BODY)
    assert headers["webhook-signature"] == f"{GOLDEN_STD_REAL} {GOLDEN_STD}"


def test_standard_secret_prefix_and_padding_are_optional() -> None:
    # "dGVzdA==" is base64("test"); all spellings must derive the same key.
    spellings = ["whsec_dGVzdA==", "dGVzdA==", "whsec_dGVzdA", "dGVzdA"]
    sigs = {standard_webhooks_headers([s], MSG_ID, T, BODY)["webhook-signature"] for s in spellings}
    assert len(sigs) == 1


def test_ingestlayer_key_is_the_whole_secret_string() -> None:
    # Stripe-style: the "whsec_" prefix is part of the HMAC key, unlike Standard Webhooks.
    assert ingestlayer_signature(["test"], T, BODY) != ingestlayer_signature(["whsec_test"], T, BODY)


def test_non_ascii_secret_is_utf8_encoded() -> None:
    header = ingestlayer_signature(["sécret"], T, BODY)
    assert header == f"t={T},v1={_independent_v1('sécret', T, BODY)}"


# --- interop with Stripe's own verifier ------------------------------------------------------------


def test_stripe_verify_header_accepts_our_header() -> None:
    now = int(time.time())
    header = ingestlayer_signature([SECRET], now, BODY)
    assert stripe.WebhookSignature.verify_header(BODY.decode(), header, SECRET, 300) is True


def test_stripe_verify_header_accepts_golden_header_without_tolerance() -> None:
    # tolerance=None disables Stripe's clock check, so the fixed golden timestamp can be used.
    header = f"t=1717000000,v1={GOLDEN_V1}"
    assert stripe.WebhookSignature.verify_header(BODY.decode(), header, SECRET, None) is True


def test_stripe_verify_header_accepts_either_secret_during_rotation() -> None:
    now = int(time.time())
    header = ingestlayer_signature([SECRET, OLD_SECRET], now, BODY)
    for secret in (SECRET, OLD_SECRET):
        assert stripe.WebhookSignature.verify_header(BODY.decode(), header, secret, 300) is True


def test_stripe_verify_header_rejects_tampered_body() -> None:
    header = ingestlayer_signature([SECRET], int(time.time()), BODY)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(BODY.decode().replace("pro", "free"), header, SECRET, 300)


def test_stripe_own_helper_produces_our_header() -> None:
    expected = stripe.WebhookSignature.generate_signature_header(BODY.decode(), SECRET, timestamp=T)
    assert ingestlayer_signature([SECRET], T, BODY) == expected


# --- interop with the standardwebhooks reference package -------------------------------------------


def test_standardwebhooks_package_accepts_our_headers() -> None:
    now = int(time.time())
    headers = standard_webhooks_headers([STD_SECRET], MSG_ID, now, BODY)
    payload = standardwebhooks.Webhook(STD_SECRET).verify(BODY, headers)
    assert payload == {"type": "user.signed_up", "payload": {"email": "ada@acme.com", "plan": "pro"}}


def test_standardwebhooks_package_accepts_either_secret_during_rotation() -> None:
    now = int(time.time())
    other = generate_secret("standard")
    headers = standard_webhooks_headers([other, STD_SECRET], MSG_ID, now, BODY)
    for secret in (other, STD_SECRET):
        standardwebhooks.Webhook(secret).verify(BODY, headers)


def test_standardwebhooks_package_rejects_tampered_body() -> None:
    headers = standard_webhooks_headers([STD_SECRET], MSG_ID, int(time.time()), BODY)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(STD_SECRET).verify(BODY.replace(b"pro", b"free"), headers)


@given(
    key=st.binary(min_size=1, max_size=64),
    prefixed=st.booleans(),
    padded=st.booleans(),
    msg_id=st.from_regex(r"msg_[A-Za-z0-9]{1,26}", fullmatch=True),
    body=st.text(max_size=200).map(lambda s: s.encode()),
)
def test_standard_signature_matches_reference_for_any_key(
    key: bytes, prefixed: bool, padded: bool, msg_id: str, body: bytes
) -> None:
    encoded = base64.b64encode(key).decode()
    if not padded:
        encoded = encoded.rstrip("=")
    secret = ("whsec_" if prefixed else "") + encoded
    ours = standard_webhooks_headers([secret], msg_id, T, body)["webhook-signature"]
    # The reference's sign() takes the body as str, hence the UTF-8 text bodies above.
    reference = standardwebhooks.Webhook(secret).sign(msg_id, _utc(T), body.decode())
    assert ours == reference


def _utc(timestamp: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret", [STD_SECRET, "whsec_test", "dGVzdA==", "whsec_dGVzdA", "whsec_a+b/", "whsec_YWI="]
)
def test_validate_standard_secret_accepts(secret: str) -> None:
    validate_standard_secret(secret)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_", "empty"),
        ("", "empty"),
        ("whsec_==", "empty"),
        ("whsec_abc-def_", "URL-safe"),
        ("whsec_dGVzdA==\n", "whitespace"),
        ("whsec_dGVz dA==", "whitespace"),
        ("whsec_not base64!", "must be base64"),
        ("whsec_dG=VzdA", "must be base64"),
        ("whsec_dGVzd", "length"),
        ("whsec_dGVzdA===", "must be base64"),
    ],
)
def test_validate_standard_secret_rejects_with_clear_message(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_standard_secret(secret)


def test_validate_standard_secret_does_not_echo_the_secret() -> None:
    with pytest.raises(ValueError) as info:
        validate_standard_secret("whsec_supersecret-value")
    assert "supersecret" not in str(info.value)


def test_standard_headers_reject_invalid_secret_even_among_valid_ones() -> None:
    with pytest.raises(ValueError, match="URL-safe"):
        standard_webhooks_headers([STD_SECRET, "whsec_a-b_"], MSG_ID, T, BODY)


@pytest.mark.parametrize("msg_id", ["", "msg 1", "msg\r\nX-Evil: 1", "msg\t1"])
def test_standard_headers_reject_bad_msg_id(msg_id: str) -> None:
    with pytest.raises(ValueError, match="msg_id"):
        standard_webhooks_headers([STD_SECRET], msg_id, T, BODY)


def test_no_secrets_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ingestlayer_signature([], T, BODY)
    with pytest.raises(ValueError, match="at least one"):
        standard_webhooks_headers([], MSG_ID, T, BODY)


def test_bare_string_secret_is_refused_not_split_into_characters() -> None:
    with pytest.raises(TypeError, match=r"\[secret\]"):
        ingestlayer_signature(SECRET, T, BODY)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match=r"secrets\[1\] is empty"):
        ingestlayer_signature([SECRET, ""], T, BODY)


def test_bad_timestamp_and_body_types() -> None:
    with pytest.raises(TypeError, match="timestamp"):
        ingestlayer_signature([SECRET], 1717000000.5, BODY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timestamp"):
        ingestlayer_signature([SECRET], True, BODY)
    with pytest.raises(ValueError, match="timestamp"):
        ingestlayer_signature([SECRET], -1, BODY)
    with pytest.raises(TypeError, match="body"):
        ingestlayer_signature([SECRET], T, BODY.decode())  # type: ignore[arg-type]


# --- secret generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hmac", "standard"])
def test_generate_secret_format(kind: str) -> None:
    secret = generate_secret(kind)  # type: ignore[arg-type]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    validate_standard_secret(secret)


def test_generate_secret_is_random() -> None:
    assert len({generate_secret() for _ in range(50)}) == 50


def test_generated_secret_works_for_both_schemes() -> None:
    secret = generate_secret()
    now = int(time.time())
    header = ingestlayer_signature([secret], now, BODY)
    assert stripe.WebhookSignature.verify_header(BODY.decode(), header, secret, 300) is True
    headers = standard_webhooks_headers([secret], MSG_ID, now, BODY)
    standardwebhooks.Webhook(secret).verify(BODY, headers)


def test_generate_secret_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        generate_secret("rsa")  # type: ignore[arg-type]


def test_docstring_examples() -> None:
    result = doctest.testmod(signing, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
