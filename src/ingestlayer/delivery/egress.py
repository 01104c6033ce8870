"""Outbound address policy: refuse private, loopback and link-local targets unless allowed.

Checked on the addresses a host name resolves to (at connect time, via the resolver), so DNS
cannot be used to point an allowed name at the internal network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

T = TypeVar("T")


class EgressDenied(Exception):
    pass


# NAT64's well-known prefix: the last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_public_address(addr: str) -> bool:
    """Whether ``addr`` is globally routable: not private, loopback, link-local, shared (CGNAT,
    100.64.0.0/10, where some clouds' metadata services and overlay networks live), reserved or
    multicast. IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64) are judged by it; Teredo
    and site-local addresses are refused."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        nat64 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        for embedded in (ip.ipv4_mapped, ip.sixtofour, nat64):
            if embedded is not None:
                return is_public_address(str(embedded))
        if ip.teredo is not None or ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


@dataclass(frozen=True)
class EgressPolicy:
    allow_private: bool = False

    def allowed(self, host: str, found: list[T], address: Callable[[T], str] = str) -> list[T]:
        """What ``host`` resolved to, without the addresses the policy refuses; none left is
        an error naming the host."""
        if self.allow_private:
            return found
        public = [item for item in found if is_public_address(address(item))]
        if not public:
            raise EgressDenied(
                f"{host} resolves only to private addresses; private destinations are not allowed"
            )
        return public

    def check_url(self, url: str) -> None:
        """Reject URLs whose host is a literal private address (names are checked on resolve),
        and plain ``http://``, which is for local work only (SPEC §5)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if self.allow_private:
            return
        try:
            ipaddress.ip_address(host)
        except ValueError:
            name = host.rstrip(".")  # `localhost.` is the same name, fully qualified
            if name == "localhost" or name.endswith(".localhost"):
                raise EgressDenied(
                    f"destination host {host!r} is local; private destinations are not allowed"
                ) from None
        else:
            if not is_public_address(host):
                raise EgressDenied(
                    f"destination address {host} is private; "
                    "set INGESTLAYER_ALLOW_PRIVATE_DESTINATIONS=1 to allow"
                )
        if parts.scheme == "http":
            # Unencrypted, a delivery's body, signature and bearer token cross the network in clear.
            raise EgressDenied(
                "plain http:// is for local work, allowed only with private destinations "
                "(INGESTLAYER_ALLOW_PRIVATE_DESTINATIONS=1); use https://"
            )


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, then drops non-public addresses."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._inner = DefaultResolver()
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        return self._policy.allowed(host, found, lambda r: r["host"])

    async def close(self) -> None:
        await self._inner.close()


# Names (with their ports) whose answers are kept at once: a process that has delivered to a host
# once must not keep its answer after it stopped (endpoints come and go for as long as it runs).
MAX_CACHED_NAMES = 4096


class AddressResolver:
    """Host name → addresses for the delivery HTTP client, with the policy applied to every
    answer (literal addresses included) and answers kept for ``ttl`` seconds, at most
    ``MAX_CACHED_NAMES`` of them."""

    def __init__(self, policy: EgressPolicy, ttl: float = 60.0) -> None:
        self._policy = policy
        self._ttl = ttl
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def __call__(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            pass
        else:
            return self._policy.allowed(host, [host])
        hit = self._cache.get((host, port))
        if hit is not None and hit[0] > loop.time():
            return hit[1]
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        allowed = self._policy.allowed(host, found)
        now = loop.time()
        if len(self._cache) >= MAX_CACHED_NAMES:
            # Expired answers are only replaced when their name is resolved again: those of hosts
            # no longer delivered to stayed for the life of the process, one per host ever seen.
            self._cache = {key: hit for key, hit in self._cache.items() if hit[0] > now}
            if len(self._cache) >= MAX_CACHED_NAMES:
                self._cache.clear()
        self._cache[(host, port)] = (now + self._ttl, allowed)
        return allowed


def connector_kwargs(policy: EgressPolicy) -> dict[str, Any]:
    return {"resolver": GuardedResolver(policy)}
