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
    """The name of an endpoint's first secret (its signing secret or, with auth: bearer, the token
    it sends). Each secret set after it (rotated, or sent in a PATCH) is stored under a new name,
    ``<this>.2``, ``<this>.3``…; older versions named rotated-out copies ``<this>.previous…``."""
    return f"endpoint-{endpoint_id}"


def is_endpoint_secret(name: str, endpoint_id: str) -> bool:
    base = endpoint_secret_name(endpoint_id)
    return name == base or name.startswith(f"{base}.")


def secret_endpoint(name: str, cfg: ProjectConfig) -> str | None:
    """The endpoint whose managed secret ``name`` is, if any."""
    if name.startswith("endpoint-"):
        for p in cfg.pipelines:
            if p.endpoint and is_endpoint_secret(name, p.id):
                return p.id
    return None
