"""``redact.pii`` on JSON integers: a phone or card number sent as a number is redacted as the same
number in a string would be, in named fields, under them and in the scan-everywhere default; other
integers, floats, booleans and negative numbers stay exactly as they were."""

from __future__ import annotations

import copy
import hashlib
import hmac
from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestlayer.pipeline.event import PipelineEvent, StepContext
from ingestlayer.pipeline.steps.pii.detectors import ALL_TYPES, Scanner
from ingestlayer.pipeline.steps.pii.phones import PhoneFinder
from ingestlayer.pipeline.steps.redact_pii import RedactPii, RedactPiiConfig

KEY = "test-key"
PHONE = 14155550123  # US, with its country code: +1 415-555-0123
PHONE_GB = 447911123456  # +44 7911 123456, a UK mobile
CARD = 4242424242424242
MODES = ["mask", "hash", "remove", "replace"]
# Regions whose numbering plans differ (see test_redact_pii_phones.py).
REGIONS = [
    *["US", "CA", "GB", "DE", "FR", "IN", "BR", "AR", "MX"],
    *["JP", "AU", "RU", "CN", "IT", "AT", "AG", "CO"],
]
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def step(**config: Any) -> RedactPii:
    return RedactPii(RedactPiiConfig.model_validate(config))


def redact(payload: dict[str, Any], **config: Any) -> dict[str, Any]:
    """``payload`` redacted; its top-level fields are named unless ``fields`` is given (integers
    are read only in fields named, see test_scanning_everything_leaves_integers_alone)."""
    config.setdefault("fields", list(payload))
    out, _ = step(**config).redact(payload, KEY.encode())
    return out


def hmac16(value: str) -> str:
    return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


# What PHONE, PHONE_GB and CARD become in each mode (`remove`: deleted).
RENDERED: dict[str, dict[int, str]] = {
    "mask": {PHONE: "*******0123", PHONE_GB: "********3456", CARD: "**** **** **** 4242"},
    "hash": {
        PHONE: "phone_" + hmac16("+14155550123"),
        PHONE_GB: "phone_" + hmac16("+447911123456"),
        CARD: "card_" + hmac16("4242424242424242"),
    },
    "replace": {PHONE: "[REDACTED]", PHONE_GB: "[REDACTED]", CARD: "[REDACTED]"},
}


# ---------------------------------------------------------------------------------- named fields


@pytest.mark.parametrize("mode", MODES)
def test_phone_and_card_integers_in_named_fields_each_mode(mode: str) -> None:
    payload = {"phone": PHONE, "card_number": CARD, "contact": {"phone": PHONE_GB}, "amount": 1999}
    out, counts = step(mode=mode, fields=["phone", "card_number", "contact.phone", "amount"]).redact(
        payload, KEY.encode()
    )
    assert counts == {"phone": 2, "card": 1}
    if mode == "remove":
        assert out == {"contact": {}, "amount": 1999}
    else:
        r = RENDERED[mode]
        assert out == {
            "phone": r[PHONE],
            "card_number": r[CARD],
            "contact": {"phone": r[PHONE_GB]},
            "amount": 1999,
        }


def test_replace_type_names_integer_phones_and_cards() -> None:
    out = redact({"phone": PHONE, "card": CARD}, fields=["phone", "card"], mode="replace", replacement="type")
    assert out == {"phone": "[PHONE]", "card": "[CARD]"}


@pytest.mark.parametrize("mode", MODES)
def test_integers_under_a_named_object_or_list_each_mode(mode: str) -> None:
    payload = {
        "contact": {"phones": [PHONE, 1999, PHONE_GB], "card": CARD, "id": 100234},
        "other": {"phone": PHONE},  # not named: left alone
    }
    out = redact(payload, mode=mode, fields=["contact"])
    if mode == "remove":
        assert out == {"contact": {"phones": [1999], "id": 100234}, "other": {"phone": PHONE}}
    else:
        r = RENDERED[mode]
        assert out == {
            "contact": {"phones": [r[PHONE], 1999, r[PHONE_GB]], "card": r[CARD], "id": 100234},
            "other": {"phone": PHONE},
        }


# -------------------------------------------------------------------------------- scan everywhere


@pytest.mark.parametrize("mode", MODES)
def test_scanning_everything_leaves_integers_alone_each_mode(mode: str) -> None:
    """Across a whole payload integers are mostly ids, amounts and timestamps, many of which read
    as phone numbers: only fields named as holding PII have theirs read."""
    payload = {
        "phone": PHONE,
        "contact": {"phone": PHONE_GB, "email": "ada@acme.com"},
        "payments": [{"card_number": CARD, "amount": 1999}, [CARD, 7]],
        "created": 1795752180,
    }
    out, counts = step(mode=mode).redact(payload, KEY.encode())
    assert counts == {"email": 1}
    assert out["phone"] == PHONE and out["payments"] == payload["payments"]
    assert out["contact"]["phone"] == PHONE_GB and out["created"] == 1795752180
    named, counts = step(mode=mode, fields=["phone", "contact", "payments"]).redact(payload, KEY.encode())
    assert counts == {"phone": 2, "card": 2, "email": 1}
    assert named["created"] == 1795752180


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("number", [PHONE, 4155550123, 16045550123, CARD, 378282246310005, 5555555555554444])
def test_integer_renders_as_the_same_number_in_a_string(mode: str, number: int) -> None:
    """Written as digits (no ``+`` needed), the integer and the string are redacted alike."""
    for config in ({"fields": ["v", "list"]}, {"fields": ["v", "list"], "detect": ["phone", "card"]}):
        as_int = redact({"v": number, "list": [number, "x"]}, mode=mode, **config)
        as_str = redact({"v": str(number), "list": [str(number), "x"]}, mode=mode, **config)
        assert as_int == as_str != {"v": str(number), "list": [str(number), "x"]}


def test_an_integer_is_also_read_after_a_plus() -> None:
    """An integer cannot carry the ``+`` of an international number: its digits are read after one
    too, so a number of another country than ``default_region`` is found and hashes as it does
    written with its ``+``."""
    numbers = {"gb": PHONE_GB, "fr": 33142685300, "de": 4930901820, "au": 61291234567}
    strings = {
        "gb": "+44 7911 123456",
        "fr": "+33 1 42 68 53 00",
        "de": "+49 30 901820",
        "au": "+61 2 9123 4567",
    }
    assert redact(numbers, mode="hash") == redact(strings, mode="hash")
    assert redact(numbers) == {
        "gb": "********3456",
        "fr": "*******5300",
        "de": "******1820",
        "au": "*******4567",
    }
    # The same digits in a string are read as written: nationally, not a US number.
    assert redact({"gb": str(PHONE_GB)}) == {"gb": str(PHONE_GB)}
    # With the number's own region as the default, the digits are read nationally, to the same number.
    assert redact({"gb": PHONE_GB}, default_region="GB", mode="hash") == {
        "gb": "phone_" + hmac16("+447911123456")
    }


def test_every_example_number_as_an_integer_is_redacted() -> None:
    """Every example number phonenumbers ships, stored as the integer of its E.164 digits, is
    found with the default settings (region US), whatever its country."""
    scanner = Scanner()
    missed = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in phonenumbers.PhoneNumberType.values():
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            found = scanner.integer(int(e164[1:]))
            if found is None or found.type not in ("phone", "card"):
                missed.append((region, e164))
    assert missed == []


# ------------------------------------------------------------------------------------ what stays


NOT_PII = [
    1999,  # an amount in cents
    0,
    94107,  # a ZIP code
    100234,  # an order number
    1795752180,  # a unix timestamp
    1795752180634,  # in milliseconds
    1795752180634000,  # in microseconds
    4242424242424241,  # 16 digits failing Luhn
    1234567812345670,  # Luhn-valid, no card network
    -PHONE,
    -CARD,
    -1999,
    10**30,
    10**5000,  # too many digits for `str` to write: never written
    True,
    False,
    float(PHONE),
    float(CARD),
    1999.99,
]


def _id(value: Any) -> str:
    text = (
        str(value) if not isinstance(value, int) or value.bit_length() < 128 else f"{value.bit_length()}-bit"
    )
    return f"{type(value).__name__}:{text}"


@pytest.mark.parametrize("value", NOT_PII, ids=_id)
def test_integers_that_are_not_pii_stay_exactly_as_they_were(value: Any) -> None:
    payload = {"phone": PHONE, "value": value, "list": [value, CARD], "nested": {"value": value}}
    for config in ({}, {"fields": ["phone", "value", "list", "nested"]}):
        out = redact(payload, **config)
        assert out == {
            "phone": "*******0123",
            "value": value,
            "list": [value, "**** **** **** 4242"],
            "nested": {"value": value},
        }
        for kept in (out["value"], out["list"][0], out["nested"]["value"]):
            assert kept is value or (type(kept) is type(value) and kept == value)
        assert out["nested"] is payload["nested"]  # nothing in it changed: not copied


def test_detect_without_phone_leaves_phone_integers_alone() -> None:
    payload = {"phone": PHONE, "contact": {"phone": PHONE_GB}, "card": CARD}
    out, counts = step(detect=["card"], fields=list(payload)).redact(payload)
    assert out == {"phone": PHONE, "contact": {"phone": PHONE_GB}, "card": "**** **** **** 4242"}
    assert type(out["phone"]) is int and out["contact"] is payload["contact"]
    assert counts == {"card": 1}
    out, counts = step(detect=["phone"], fields=["phone", "card"]).redact(payload)
    assert out == {"phone": "*******0123", "contact": {"phone": PHONE_GB}, "card": CARD}
    assert counts == {"phone": 1}
    # Detectors that cannot match a number leave every integer alone.
    assert step(detect=["email", "ip", "iban", "secret"], fields=list(payload)).redact(payload) == (
        payload,
        {},
    )


def test_integer_floor_follows_the_enabled_detectors() -> None:
    """Integers with fewer digits than the shortest phone or card number of the enabled detectors
    cost one comparison; the floor is what `scan` asks of a string's digits."""
    assert Scanner().integer_min == 10 ** (Scanner().phone_min_digits - 1)
    assert Scanner(["card"]).integer_min == 10**12
    assert Scanner(["card"]).integer(999_999_999_999) is None
    assert Scanner(["email", "ip", "iban", "secret"]).integer(CARD) is None
    assert Scanner().integer(Scanner().integer_min - 1) is None


# ------------------------------------------------------------------------------------ whole fields


def test_whole_field_integers_are_rendered_as_their_type() -> None:
    payload = {"card": CARD, "phone": PHONE, "intl": PHONE_GB, "zip": 94107, "ts": 1795752180}
    whole = ["card", "phone", "intl", "zip", "ts"]
    # `detect` does not limit the type a whole field is rendered as, for integers as for strings.
    assert redact(payload, detect=["email"], fields=[], whole_fields=whole) == {
        "card": "**** **** **** 4242",
        "phone": "*******0123",
        "intl": "********3456",
        "zip": "***",
        "ts": "***",
    }
    assert redact(payload, whole_fields=whole, mode="replace", replacement="type") == {
        "card": "[CARD]",
        "phone": "[PHONE]",
        "intl": "[PHONE]",
        "zip": "[REDACTED]",
        "ts": "[REDACTED]",
    }
    assert redact(payload, whole_fields=whole, mode="hash") == {
        "card": "card_" + hmac16("4242424242424242"),
        "phone": "phone_" + hmac16("+14155550123"),
        "intl": "phone_" + hmac16("+447911123456"),
        "zip": "value_" + hmac16("94107"),
        "ts": "value_" + hmac16("1795752180"),
    }
    # As a string field holding the same card is.
    assert redact({"card": str(CARD)}, whole_fields=["card"], mode="hash") == {
        "card": "card_" + hmac16(str(CARD))
    }
    _, counts = step(whole_fields=whole).redact(payload)
    assert counts == {"phone": 2, "card": 1, "value": 2}


# --------------------------------------------------------------------------- copy-on-write, trace


def test_integers_redacted_without_mutating_the_payload() -> None:
    payload: dict[str, Any] = {
        "phone": PHONE,
        "contact": {"phones": [PHONE_GB, 1999], "card": CARD},
        "untouched": {"amount": 1999, "ts": 1795752180},
    }
    before = copy.deepcopy(payload)
    for mode in MODES:
        for config in ({}, {"fields": ["phone", "contact"]}, {"whole_fields": ["phone"]}):
            out = redact(payload, mode=mode, **config)
            assert out != payload
            assert out["untouched"] is payload["untouched"]
    assert payload == before
    assert payload["contact"]["phones"][0] == PHONE_GB and type(payload["phone"]) is int


async def test_step_note_counts_integers() -> None:
    ctx = StepContext("prj_1", "signups")
    payload = {
        "email": "ada@acme.com",
        "phone": PHONE,
        "contact": {"phone": PHONE_GB},
        "cards": [CARD],
        "n": 3,
    }
    ev = PipelineEvent("evt_1", "order.paid", 1.0, 2.0, "sdk", payload)
    out = await step(fields=list(payload))(ev, ctx)
    assert isinstance(out, PipelineEvent) and out is not ev
    assert ctx.notes == ["redacted 1 email, 2 phone, 1 card"]
    assert out.payload["phone"] == "*******0123" and out.payload["n"] == 3
    assert ev.payload["phone"] == PHONE  # the event given is left as it was


# ------------------------------------------------------------------ the same checks as for strings


@st.composite
def number_digits(draw: st.DrawFn) -> str:
    """The digits of an integer: mostly a real number's (E.164 or national), sometimes any."""
    if draw(st.booleans()):
        return str(draw(st.integers(0, 10**21)))
    region = draw(st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)))
    kind = draw(st.sampled_from(phonenumbers.PhoneNumberType.values()))
    number = phonenumbers.example_number_for_type(region, kind) or phonenumbers.parse("+14155552671")
    fmt = draw(
        st.sampled_from([phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.NATIONAL])
    )
    digits = "".join(c for c in phonenumbers.format_number(number, fmt) if c.isdigit())
    return digits.lstrip("0") or "0"  # as an integer writes them


@PROPERTY
@given(
    number_digits(),
    st.sampled_from(REGIONS),
    st.sampled_from([ALL_TYPES, ("phone",), ("card",), ("phone", "card")]),
)
def test_scanner_integer_reads_digits_as_scan_reads_them(
    digits: str, region: str, detect: tuple[str, ...]
) -> None:
    """``Scanner.integer`` finds what ``Scanner.whole`` finds in the string of the digits (only a
    phone or a card can be all digits), failing that a phone number after a ``+``."""
    scanner = Scanner(detect, region)
    expected = scanner.whole(digits)
    if expected is None and scanner.phone:
        expected = scanner.whole("+" + digits)
    got = scanner.integer(int(digits))
    assert (got and (got.type, got.norm, got.value)) == (expected and (expected.type, expected.norm, digits))
    assert got is None or got.type in ("phone", "card")


@PROPERTY
@given(number_digits(), st.booleans(), st.sampled_from(REGIONS))
def test_phone_finder_whole_is_find_spanning_the_text(digits: str, plus: bool, region: str) -> None:
    text = ("+" if plus else "") + digits
    finder = PhoneFinder(region)
    spanning = [m.number for m in finder.find(text) if (m.start, m.end) == (0, len(text))]
    assert finder.whole(text) == (spanning[0] if spanning else None)
