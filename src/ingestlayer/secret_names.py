"""What a stored secret may be called: the rule the API, the CLI and ``ref:NAME`` share.

And the names of the secrets an endpoint manages itself (its signing secret and those rotated
out), which no one else may set. A module of its own so that the CLI checks a name without
importing the web application.
"""

from __future__ import annotations

import re

from ingestlayer.records import ProjectConfig

# ``isalnum`` took any Unicode letter: names that look alike but differ, in references (ref:NAME).
# '/' or '?' in a name would reach the API as another URL.
SECRET_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")

SECRET_NAME_RULE = "secret names are 1 to 200 ASCII letters, digits, '-', '_' and '.'"


def endpoint_secret_name(endpoint_id: str) -> str:
    """The secret an endpoint signs with (or, with auth: bearer, the token it sends)."""
    return f"endpoint-{endpoint_id}"


def endpoint_previous_name(endpoint_id: str) -> str:
    """The first name for an endpoint's rotated-out secrets; more are ``<this>.2``, ``<this>.3``…"""
    return f"{endpoint_secret_name(endpoint_id)}.previous"


def is_endpoint_secret(name: str, endpoint_id: str) -> bool:
    previous = endpoint_previous_name(endpoint_id)
    return name in (endpoint_secret_name(endpoint_id), previous) or name.startswith(f"{previous}.")


def secret_endpoint(name: str, cfg: ProjectConfig) -> str | None:
    """The endpoint whose managed secret ``name`` is, if any."""
    if name.startswith("endpoint-"):
        for p in cfg.pipelines:
            if p.endpoint and is_endpoint_secret(name, p.id):
                return p.id
    return None
