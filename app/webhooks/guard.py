"""No server-side request forgery: a webhook may only call public addresses.

At POST, `check_url` refuses what is wrong on its face (not https, credentials, a literal
private address). At delivery, `GuardedBackend` (the HTTP client's network layer) resolves the
host itself, refuses the connection when any address it resolves to is not public, and
connects to an address it checked: a name that resolves to a public address when checked and
to a private one a moment later (DNS rebinding) gains nothing. The URL keeps its host name, so
the Host header and the TLS server name (and certificate check) are the name's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import httpcore

MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
"""Cloud instance metadata services (each is also outside the public address space)."""

UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""A host name and port to the addresses to try, as text."""


class Refused(Exception):
    """The webhook's address is not one deliveries may call; the message says why."""


def forbidden(address: IPAddress) -> str | None:
    """Why a delivery may not connect to `address` (loopback, private...), or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA:
        return "a cloud metadata address"
    for name, test in (
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("a multicast address", address.is_multicast),
        ("an unspecified address", address.is_unspecified),
        ("a unique-local address", address in UNIQUE_LOCAL),
        ("a private address", address.is_private),
    ):
        if test:
            return name
    if not address.is_global:
        return "not a public address"
    return None


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL if a webhook may name it, else ValueError saying why: absolute `https` (`http`
    too when `allow_private`), a host, no credentials, at most 2,048 characters, and not a
    literal private address (nor localhost) unless `allow_private`."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a URL: {exc}") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise ValueError(
            "must be an absolute https URL"
            + ("" if allow_private else " (http needs WEBHOOK_ALLOW_PRIVATE=true)")
        )
    host = parts.hostname
    if not host:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (the job JSON shows the URL)")
    if port == 0:
        raise ValueError("must not name port 0")
    if allow_private:
        return url
    if host == "localhost" or host.endswith(".localhost"):
        raise ValueError("must not name localhost")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return url
    why = forbidden(address)
    if why is not None:
        raise ValueError(f"must not name {why} ({address})")
    return url


async def resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for `host`, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer for webhook deliveries: every new connection resolves its host
    with `resolver`, is refused (Refused) when any address is not public (unless
    `allow_private`), and opens through `connector` to the first checked address. Tests inject
    both: a resolver that answers a private address, a connector that opens loopback only."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver = resolve,
        connector: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow_private = allow_private
        self._resolver = resolver
        self._connector = connector or httpcore.AnyIOBackend()

    async def checked(self, host: str, port: int) -> str:
        """The address to connect to for `host`, or Refused."""
        try:
            found = await self._resolver(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(text.split("%")[0]) for text in found]
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        if not self._allow_private:
            for address in addresses:
                why = forbidden(address)
                if why is not None:
                    raise Refused(
                        f"{host} resolves to {why} ({address}); webhooks call public addresses only"
                    )
        return str(addresses[0])

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = await self.checked(host, port)
        return await self._connector.connect_tcp(
            address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise Refused("webhooks do not call Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._connector.sleep(seconds)
