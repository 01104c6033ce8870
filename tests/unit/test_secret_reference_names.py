"""Every setting that takes a secret reference refuses a name no secret can have, naming the
setting: such a reference can never resolve (``ingestlayer secrets set`` refuses the name), so
accepting it only moved the failure to the first delivery."""

from __future__ import annotations

from typing import Any

import pytest

from ingestlayer.pipeline.config import ConfigError, parse_config
from ingestlayer.stored_config import stored_configuration

BAD = "ref:acme key"  # a space: not a name a secret can have


def _pipeline(step: dict[str, Any] | None = None, dest: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "p",
                "source": {"match": ["x.*"]},
                "steps": [step] if step else [],
                "destinations": [dest or {"webhook.out": {"url": "https://example.com/h"}}],
            }
        ]
    }


CASES = {
    "webhook.out secret": (
        _pipeline(dest={"webhook.out": {"url": "https://example.com/h", "auth": "hmac", "secret": BAD}}),
        "secret",
    ),
    "webhook.out secret_headers": (
        _pipeline(dest={"webhook.out": {"url": "https://example.com/h", "secret_headers": {"X-Key": BAD}}}),
        "X-Key",
    ),
    "classify api_key": (
        _pipeline(
            {
                "classify": {
                    "provider": "openai",
                    "field": "payload.body",
                    "model": "m",
                    "prompt": "p",
                    "labels": ["a", "b"],
                    "api_key": BAD,
                }
            }
        ),
        "api_key",
    ),
    "redact.pii hash_key": (_pipeline({"redact.pii": {"mode": "hash", "hash_key": BAD}}), "hash_key"),
    "source secret": (
        {"sources": [{"name": "s", "verify": "hmac-sha256", "secret": BAD}]},
        "secret",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_reference_to_a_name_no_secret_can_have_is_refused(case: str) -> None:
    doc, field = CASES[case]
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    message = str(info.value)
    assert f"{field}: the name after `ref:` is not one a secret can have" in message, message


def test_good_references_still_pass() -> None:
    doc = _pipeline(
        dest={"webhook.out": {"url": "https://example.com/h", "auth": "hmac", "secret": "ref:acme-key"}}
    )
    parse_config(doc)


@pytest.mark.parametrize("case", list(CASES))
def test_such_a_reference_stored_before_is_still_read(case: str) -> None:
    """A configuration stored by an earlier version loads; the reference fails where it is
    used, as a secret that does not exist."""
    doc, _ = CASES[case]
    with stored_configuration():
        parse_config(doc)
