"""The delivery client's resolver applies the egress policy to every address it returns."""

from __future__ import annotations

import pytest

from ingestlayer.delivery.egress import MAX_CACHED_NAMES, AddressResolver, EgressDenied, EgressPolicy


async def test_a_name_resolving_only_to_private_addresses_is_refused() -> None:
    resolve = AddressResolver(EgressPolicy(allow_private=False))
    with pytest.raises(EgressDenied, match="private"):
        await resolve("localhost", 80)  # a name, checked after resolution


async def test_private_names_resolve_when_private_destinations_are_allowed() -> None:
    resolve = AddressResolver(EgressPolicy(allow_private=True))
    addresses = await resolve("localhost", 80)
    assert addresses and set(addresses) <= {"127.0.0.1", "::1"}


@pytest.mark.parametrize(
    "literal",
    [
        "10.0.0.7",
        "169.254.169.254",
        "::1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        # Shared address space (CGNAT): Alibaba Cloud's metadata service, Tailscale's network.
        "100.64.0.1",
        "100.100.100.200",
        "fec0::1",  # site-local
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo: a tunnel to an address hidden in it
        "224.0.0.251",  # multicast
    ],
)
async def test_literal_private_addresses_are_refused(literal: str) -> None:
    with pytest.raises(EgressDenied):
        await AddressResolver(EgressPolicy(allow_private=False))(literal, 443)


@pytest.mark.parametrize(
    "literal", ["93.184.216.34", "2606:4700:4700::1111", "2002:808:808::1", "64:ff9b::808:808"]
)
async def test_literal_public_addresses_need_no_lookup(literal: str) -> None:
    assert await AddressResolver(EgressPolicy(allow_private=False))(literal, 443) == [literal]


async def test_unknown_names_fail_with_an_os_error() -> None:
    with pytest.raises(OSError):
        await AddressResolver(EgressPolicy(allow_private=True))("no-such-host.invalid", 80)


async def test_answers_kept_are_bounded_however_many_hosts_were_delivered_to() -> None:
    """One answer was kept for every host and port ever resolved, for the life of the process:
    a worker whose endpoints came and went held them all. Each lookup here is a real one."""
    resolve = AddressResolver(EgressPolicy(allow_private=True))
    for port in range(1, MAX_CACHED_NAMES + 1001):
        assert await resolve("localhost", port)
    assert len(resolve._cache) <= MAX_CACHED_NAMES
    assert await resolve("localhost", 80)  # answers are still kept and served


@pytest.mark.parametrize("url", ["http://hooks.example.com/in", "http://93.184.216.34/in"])
def test_plain_http_is_refused_unless_private_destinations_are_allowed(url: str) -> None:
    with pytest.raises(EgressDenied, match=r"plain http:// is for local work.*use https://"):
        EgressPolicy(allow_private=False).check_url(url)
    EgressPolicy(allow_private=True).check_url(url)
    EgressPolicy(allow_private=False).check_url(url.replace("http://", "https://"))


def test_a_private_address_is_named_before_the_scheme() -> None:
    with pytest.raises(EgressDenied, match="private"):
        EgressPolicy(allow_private=False).check_url("http://10.1.2.3/internal")


@pytest.mark.parametrize(
    "url", ["https://localhost./in", "https://api.localhost./in", "https://LOCALHOST/in"]
)
def test_localhost_by_any_spelling_is_refused_by_name(url: str) -> None:
    """With a final dot it reached the resolver, and the attempt failed as a DNS error."""
    with pytest.raises(EgressDenied, match="is local"):
        EgressPolicy(allow_private=False).check_url(url)
