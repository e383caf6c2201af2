"""Where a completion webhook may go: the SSRF guard.

A callback host must match ``--webhook-allow-hosts`` (an exact host, ``*.example.com``,
or ``*`` for any public host). A host whose addresses include a loopback, link-local,
private or otherwise non-public one is refused unless that exact host is listed: a
pattern never opens the inside of the network. The check runs at submit (a 4xx) and
again before each delivery, which then connects to the address it checked, so a DNS
answer that changes in between cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from dlaas.errors import DlaasError

Resolver = Callable[[str, int], list[str]]


class WebhookRefused(DlaasError):
    """A callback URL is malformed, not allowed, or points inside the network."""


@dataclass(frozen=True)
class Target:
    """A checked callback: the URL as given, and the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def parse_allow_hosts(value: str) -> tuple[str, ...]:
    return tuple(h.strip().lower().rstrip(".") for h in value.split(",") if h.strip())


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookRefused(f"callback host {host!r} does not resolve ({exc})") from None
    return sorted({str(info[4][0]) for info in infos})


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not ip.is_multicast


def check_callback(url: str, allow_hosts: Sequence[str], resolver: Resolver = resolve) -> Target:
    """The target of ``url``, or WebhookRefused saying what is wrong and what to do."""
    if not allow_hosts:
        raise WebhookRefused(
            "completion webhooks are off on this service; the operator turns them on with "
            "--webhook-allow-hosts (and --webhook-secret)"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused(f"callback_url {url!r} must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("callback_url must not carry a user name or password")
    host = parts.hostname.lower().rstrip(".")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebhookRefused(f"callback_url {url!r} has an invalid port") from None
    exact = host in allow_hosts
    if not exact and not any(_matches(host, pattern) for pattern in allow_hosts):
        raise WebhookRefused(
            f"callback host {host!r} is not in --webhook-allow-hosts; "
            "use one of the hosts the operator allowed"
        )
    addresses = resolver(host, port)
    if not addresses:
        raise WebhookRefused(f"callback host {host!r} has no address")
    if not exact:
        inside = [a for a in addresses if not is_public(a)]
        if inside:
            raise WebhookRefused(
                f"callback host {host!r} resolves to a non-public address ({inside[0]}); "
                "only a host listed exactly in --webhook-allow-hosts may do that"
            )
    return Target(url=url, scheme=parts.scheme, host=host, port=port, address=addresses[0])


def _matches(host: str, pattern: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return False
