"""A URL fit to show, with its credentials hidden: the one rule for every message and page.

Inline header values are hidden by one rule too (:func:`mask_headers`), in the API's answers and
on the dashboard alike.

The CLI's and the server's messages (a database that cannot be opened, a server address) and the
dashboard (destinations, endpoints, URLs inside free text) all show URLs through :func:`mask_url`.
What it hides is, by the same rule, what :func:`url_secrets` lists: the values a destination
scrubs from what a server answers it (a receiver may echo the URL it was called at).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, unquote_plus

MASK = "••••••"

# Names whose values are credentials: the dashboard masks a setting so named whatever it holds,
# and a destination keeps a header or query value so named out of what it stores.
SENSITIVE_NAME = re.compile(
    r"(secret|token|passw|api[_-]?key|credential|dsn|webhook_url|cookie|authorization|private[_-]?key|"
    r"session|signature)",
    re.IGNORECASE,
)
# A query value this long is taken for a credential whatever its name (`?k=…`, `?sig=…`);
# shorter ones only under a sensitive name, so `?format=json` does not scrub every "json".
LONG_QUERY_VALUE = 12

# "scheme://" at the start; without one, the URL starts with its authority ("user:pw@host:8000").
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*)://")
_WEB_SCHEMES = frozenset({"http", "https", "ws", "wss"})
# RFC 3986: the authority ends at the first '/', '?' or '#', and its userinfo at its last '@'.
_AUTHORITY_END = re.compile(r"[/?#]")
# SQLAlchemy's reading (sqlalchemy.engine.url._parse_url): the user ends at ':' or '/', and the
# password at the next '@', whatever it holds before it ('/', '?', '#').
_SQLALCHEMY_USERINFO = re.compile(r"[^:/]*(?::[^@]*)?@")
# An authority's host and port, as RFC 3986 reads them.
_HOST_PORT = re.compile(r"(?:\[[^\]]*\]|[^\s:@\[\]]*)(?::\d*)?")
# A URL template's placeholder, such as enrich.person's ``?email={email}``: not a secret.
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.]*\}")
# A web address's path segment that may be a credential: Slack's incoming webhooks
# (/services/T…/B…/<token>), Discord's (/api/webhooks/<id>/<token>), Telegram's bot token
# (/bot<id>:<token>/). Taken for one when it is this long, of a token's characters, and holds
# letters and digits, in mixed case or a quarter digits: ids (ULIDs, UUIDs) are masked too, and
# words (`notifications-service-v2`) are not.
PATH_TOKEN_LENGTH = 16
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-.:~+=%]+")


def mask_url(url: str) -> str:
    """``url`` as it may be shown: userinfo, query values and fragment masked.

    The scheme, host, port, path and query names are kept, and the user name beside a password
    (``postgresql://app:••••••@db:5432/prod``). A userinfo without a password is masked whole: a
    user name alone is often a token (``https://TOKEN@host``, ``https://API_KEY:@host``). Query
    values and the fragment are masked too: receivers take credentials as ``?token=…``, and
    PostgreSQL as ``?password=…``. So is each segment of a web address's path that looks like a
    token (see PATH_TOKEN_LENGTH): Slack, Discord and Telegram put theirs there.

    Nothing is parsed into parts and rebuilt, so a URL that no library accepts is masked as
    well; a password holding '@', ':' or percent-escapes is masked whole. A database URL is
    also read as SQLAlchemy reads it (``postgresql://u:pa/ss@host/db``: its password is
    ``pa/ss``), and the longer userinfo of the two readings is masked.
    """
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else (2 if url.startswith("//") else 0)
    head, after = url[:start], url[start:]
    web = scheme is None or scheme.group(1).lower() in _WEB_SCHEMES
    length = _userinfo_length(after, web=web)
    if length:
        user, _, password = after[: length - 1].partition(":")
        userinfo = f"{user}:{MASK}" if password else MASK
        head, after = f"{head}{userinfo}@", after[length:]
    rest, hash_, fragment = after.partition("#")
    rest, query_mark, query = rest.partition("?")
    if web:
        authority, slash, path = rest.partition("/")
        rest = authority + slash + "/".join(MASK if _is_path_token(p) else p for p in path.split("/"))
    if query:
        parts = []
        for part in query.split("&"):
            name, eq, value = part.partition("=")
            if not eq:  # a bare value, ?TOKEN
                name, value = "", name
            if value and not _PLACEHOLDER.fullmatch(value):
                value = MASK
            parts.append(f"{name}{eq}{value}")
        query = "&".join(parts)
    return head + rest + query_mark + query + hash_ + (MASK if fragment else "")


# Keys whose value is a URL as a whole (a webhook.out or endpoint url, a provider's url, an api_base).
_URL_KEY = re.compile(r"(?:^|_)(?:url|uri)$|^api_base$", re.IGNORECASE)
STARTS_WITH_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")


def is_url_key(key: str) -> bool:
    """Whether ``key`` names a setting that holds one URL (``url``, ``base_url``, ``api_base``…)."""
    return bool(_URL_KEY.search(key.replace("-", "_")))


def is_reference(value: Any) -> bool:
    """Whether ``value`` names a secret (``ref:NAME``) or an environment variable (``env:VAR``)
    instead of holding a value: fit to show."""
    return isinstance(value, str) and value.startswith(("ref:", "env:"))


def is_headers_key(key: str) -> bool:
    """Whether ``key`` names a mapping of inline header values (``headers``; not ``secret_headers``,
    which holds references only)."""
    return key.lower().replace("-", "_") == "headers"


def mask_headers(headers: dict[Any, Any]) -> dict[Any, Any]:
    """Header names as they are, each value :data:`MASK` unless it is a reference or empty.

    Header values are often credentials whatever their names (``X-Auth``, ``X-Api-Key``…), so no
    name is trusted to hold none: every answer and page shows the names only.
    """
    return {k: v if is_reference(v) or v in (None, "") else MASK for k, v in headers.items()}


def mask_url_settings(value: Any, key: str = "") -> Any:
    """A configuration as answers show it: each URL setting (:func:`is_url_key`) written inline
    masked as :func:`mask_url` does, and each inline header value (:func:`mask_headers`);
    everything else as it is (references name a secret without holding it). The dashboard masks
    more (:func:`ingestlayer.api.dashboard_views.mask`)."""
    if isinstance(value, dict):
        if key and is_headers_key(key):
            return mask_headers(value)
        return {k: mask_url_settings(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_url_settings(v, key) for v in value]
    if isinstance(value, str) and key and is_url_key(key) and STARTS_WITH_SCHEME.match(value):
        return mask_url(value)
    return value


def url_secrets(url: str) -> list[str]:
    """What :func:`mask_url` hides in ``url``, as a server called at it may echo it back.

    The password (or the user name, where there is no password: masked whole too), as written
    and percent-decoded; ``user:password`` as HTTP Basic sends it, decoded (scrubbing its base64
    form is the caller's, see :func:`ingestlayer.destinations.shared.secret_forms`); and each
    query value that is not a ``{placeholder}`` and is long (LONG_QUERY_VALUE) or under a
    sensitive name (SENSITIVE_NAME), as written and decoded (``%2B`` and ``+``); and each path
    segment taken for a token, as written and decoded. The fragment is never sent, so it is not
    listed. Read as :func:`mask_url` reads the URL, so the two cannot disagree about what is a
    credential.
    """
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else (2 if url.startswith("//") else 0)
    after = url[start:]
    web = scheme is None or scheme.group(1).lower() in _WEB_SCHEMES
    found: list[str] = []
    length = _userinfo_length(after, web=web)
    if length:
        userinfo = after[: length - 1]
        user, _, password = userinfo.partition(":")
        hidden = password or user
        found += [hidden, unquote(hidden), userinfo, f"{unquote(user)}:{unquote(password)}"]
        after = after[length:]
    rest, _, query = after.partition("#")[0].partition("?")
    if web:
        for segment in rest.partition("/")[2].split("/"):
            if _is_path_token(segment):
                found += [segment, unquote(segment)]
    for part in query.split("&") if query else []:
        name, eq, value = part.partition("=")
        if not eq:  # a bare value, ?TOKEN
            value = name
        secret = len(value) >= LONG_QUERY_VALUE or (eq and SENSITIVE_NAME.search(name))
        if value and secret and not _PLACEHOLDER.fullmatch(value):
            found += [value, unquote(value), unquote_plus(value)]
    return list(dict.fromkeys(f for f in found if f))


def _is_path_token(segment: str) -> bool:
    """Whether a web address's path segment is taken for a credential (see PATH_TOKEN_LENGTH)."""
    if len(segment) < PATH_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(segment):
        return False
    digits = sum(c.isdigit() for c in segment)
    if not digits or not any(c.isalpha() for c in segment):
        return False
    mixed_case = not segment.islower() and not segment.isupper()
    return mixed_case or digits * 4 >= len(segment)


def _userinfo_length(after: str, *, web: bool) -> int:
    """How much of ``after`` (what follows ``scheme://``) is a user, a password and their '@'.

    Read as RFC 3986 says and as SQLAlchemy does; where SQLAlchemy's reading is the longer, it
    wins, except for a web address that RFC 3986 reads as a host and a port
    (``https://host:8443/notify?to=ops@example.com`` holds no password).
    """
    end = _AUTHORITY_END.search(after)
    authority = after[: end.start()] if end else after
    rfc = authority.rfind("@") + 1
    sqlalchemy = _SQLALCHEMY_USERINFO.match(after)
    if sqlalchemy is None or sqlalchemy.end() <= rfc:
        return rfc
    if web and _HOST_PORT.fullmatch(authority[rfc:]):
        return rfc
    return sqlalchemy.end()
