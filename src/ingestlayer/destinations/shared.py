"""Helpers shared by destinations.

- credential fields: ``ref:NAME`` / ``env:VAR`` only, with an error that names the field and never
  repeats the value (it may be a pasted password);
- :func:`scrub`: take every credential out of a text before it becomes an attempt's error or
  excerpt (a server may echo what it was sent; a driver may put a DSN in a message);
- the private-address policy for raw TCP (SMTP, PostgreSQL): :func:`check_host` resolves a host
  and refuses it when any address is private, loopback or link-local (unless
  ``INGESTLAYER_ALLOW_PRIVATE_DESTINATIONS``); :func:`connect_checked` connects to an address
  it has just checked, so DNS cannot swap in an internal address between check and connect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import re
import socket
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

import orjson

from ingestlayer.delivery.egress import EgressDenied, EgressPolicy, is_public_address
from ingestlayer.secret_names import SECRET_NAME, SECRET_NAME_RULE
from ingestlayer.stored_config import reading_stored
from ingestlayer.urlmask import url_secrets

REDACTED = "<redacted>"
# Shorter values are not scrubbed: replacing every "a" of a message helps nobody.
MIN_SCRUB_CHARS = 4


# What an environment variable a pipeline may read can be called (POSIX's portable names).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_reference(value: str) -> bool:
    kind, _, name = value.partition(":")
    return kind in ("ref", "env") and bool(name) and name == name.strip()


def check_reference(field_name: str, value: str, what: str) -> str:
    """A credential field must be ``ref:NAME`` (a name a secret can have) or ``env:VAR``; the
    message never repeats the value, which may be the credential itself."""
    if not is_reference(value):
        raise ValueError(
            f"{field_name} must be a secret reference, `ref:NAME` (stored encrypted with "
            f"`ingestlayer secrets set NAME`) or `env:VAR`, never the {what} itself"
        )
    kind, _, name = value.partition(":")
    # Stored before every setting checked the name (and read back now): such a reference never
    # resolves, and fails where it is used, as a secret that does not exist.
    if not reading_stored() and not (SECRET_NAME if kind == "ref" else ENV_NAME).fullmatch(name):
        rule = SECRET_NAME_RULE if kind == "ref" else "environment variable names are letters, digits and '_'"
        what_is = "a secret" if kind == "ref" else "an environment variable"
        raise ValueError(f"{field_name}: the name after `{kind}:` is not one {what_is} can have: {rule}")
    return value


def secret_forms(value: str) -> list[str]:
    """A credential and the encodings a server may echo it in (base64, as in SMTP AUTH and HTTP
    Basic; a JSON string's escapes, as a receiver that echoes the request in JSON writes it)."""
    forms = [value, orjson.dumps(value).decode()[1:-1], json.dumps(value)[1:-1]]
    raw = value.encode()
    forms.append(base64.b64encode(raw).decode())
    forms.append(base64.urlsafe_b64encode(raw).decode())
    forms += percent_forms(value)
    return [f for f in forms if len(f) >= MIN_SCRUB_CHARS]


def percent_forms(value: str) -> list[str]:
    """``value`` percent-encoded, as a server echoing the URL it was called at may write it (a
    Telegram token's ``:`` as ``%3A``), where that differs from the value as written."""
    return [f for f in dict.fromkeys((quote(value, safe=""), quote(value, safe="/"))) if f != value]


def url_credentials(url: str | None) -> list[str]:
    """What the dashboard masks in a configured URL (its password, ``user:password``, its query
    values: :func:`ingestlayer.urlmask.url_secrets`), for :func:`scrub`: a receiver may echo the
    URL it was called at, and the ``Authorization: Basic`` made from its userinfo."""
    return url_secrets(url) if url else []


# A path segment this long, in a URL that is a credential, is taken for the token it holds
# (Slack's and Discord's webhook URLs: /services/T…/B…/<token>, /webhooks/<id>/<token>).
LONG_PATH_SEGMENT = 16


def held_url_parts(url: str) -> list[str]:
    """A URL that is itself a credential (kept as a secret), as a server may echo parts of it:
    the URL, its path, each long path segment and its query. Its password and query values are
    :func:`url_credentials`."""
    parts = urlsplit(url)
    found = [url]
    if parts.path and parts.path != "/":
        found.append(parts.path)
        found += [segment for segment in parts.path.split("/") if len(segment) >= LONG_PATH_SEGMENT]
    if parts.query:
        found.append(parts.query)
    return found


def credential_forms(secrets: Iterable[str], known: Iterable[str] = ()) -> list[str]:
    """Every form of every credential (:func:`secret_forms`), with ``known`` forms made before
    (of credentials that do not change), the longest first: one may hold another."""
    forms = {*known, *(f for s in secrets if s for f in secret_forms(s))}
    return sorted(forms, key=len, reverse=True)


def scrub_forms(text: str, forms: Iterable[str]) -> str:
    """``text`` with each of ``forms`` (from :func:`credential_forms`) replaced by ``<redacted>``."""
    for form in forms:
        text = text.replace(form, REDACTED)
    return text


def scrub(text: str | None, secrets: Iterable[str]) -> str | None:
    """``text`` with every credential (and its base64 forms) replaced by ``<redacted>``."""
    if text is None:
        return None
    return scrub_forms(text, credential_forms(secrets))


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
    """The TCP addresses of ``host``: ``(family, sockaddr)``, in the resolver's order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    out: list[tuple[socket.AddressFamily, tuple[str, int]]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            out.append((family, (str(sockaddr[0]), int(sockaddr[1]))))
    return out


def _denied(host: str) -> EgressDenied:
    return EgressDenied(
        f"destination host {host!r} is a private, loopback or link-local address; private "
        "destinations are not allowed (set INGESTLAYER_ALLOW_PRIVATE_DESTINATIONS=1 to allow)"
    )


async def check_host(policy: EgressPolicy, host: str, port: int) -> list[str]:
    """Refuse ``host`` unless every address it resolves to is public (or private is allowed).
    Returns the addresses checked (``[host]`` when private ones are allowed): connect to those,
    not to the name, which may resolve elsewhere the second time (DNS rebinding).

    Unix-socket paths and an empty host (the driver's local default) are local, so refused too.
    Resolution failures raise :class:`OSError` (a transient condition: retried).
    """
    if policy.allow_private:
        return [host]
    if not host or host.startswith("/") or host == "localhost" or host.endswith(".localhost"):
        raise _denied(host or "(local default)")
    literal = _literal_ip(host)
    if literal is not None:
        if not is_public_address(literal):
            raise _denied(host)
        return [literal]
    addresses = await resolve(host, port)
    if not addresses or any(not is_public_address(sa[0]) for _, sa in addresses):
        raise _denied(host)
    return list(dict.fromkeys(sa[0] for _, sa in addresses))


async def connect_checked(policy: EgressPolicy, host: str, port: int) -> socket.socket:
    """A connected, non-blocking TCP socket to ``host``, only ever to an address that passed
    the policy (addresses that fail it are skipped; none left: :class:`EgressDenied`)."""
    if not policy.allow_private and (host == "localhost" or host.endswith(".localhost")):
        raise _denied(host)
    addresses = await resolve(host, port)
    if not addresses:
        raise OSError(f"{host!r} has no IPv4 or IPv6 address")
    if not policy.allow_private:
        addresses = [a for a in addresses if is_public_address(a[1][0])]
        if not addresses:
            raise _denied(host)
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:  # cancelled (a timeout): never leak the socket
            sock.close()
            raise
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    assert last is not None
    raise last
