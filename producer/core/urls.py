"""Which addresses a worker may connect to: the outbound URL policy.

Callers hand us webhook URLs and providers hand us file URLs (and redirects); a worker that
followed them anywhere would be a way into the network it runs in (the cloud metadata
address, Redis on localhost, the private network) and, reading back status codes, a port
scanner. So every URL a worker connects to, other than the API's own origin, must resolve to
a public address: loopback, private, CGNAT, link-local, unique-local, site-local, multicast,
reserved and unspecified addresses are refused, in whatever spelling (`127.1`, `0x7f000001`,
`2130706433`, `[::ffff:127.0.0.1]`, `[2002:7f00:1::]`, `localhost`). An IPv6 address that
carries an IPv4 one for a translator or tunnel to reach (IPv4-mapped, NAT64's well-known
prefix, 6to4) is judged by the IPv4 address it carries. `VIDEOQUEUE_URL_ALLOWLIST` (CIDRs and
host names) lets chosen ones through. Literal addresses are checked at enqueue (producer) and
every resolved address at connect time (worker/egress.py), which then connects to the address
it checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges no public service lives in (beyond what ipaddress flags as private or reserved).
_MAX_VERDICTS = 4096
_REFUSED = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/96", "100::/64", "2001::/32", "64:ff9b:1::/48", "fc00::/7", "fe80::/10",
        "fec0::/10", "ff00::/8",
    )
]  # fmt: skip
# Teredo (2001::/32) and local-use NAT64 (64:ff9b:1::/48) are refused whole: Teredo relays to
# any IPv4 host, and a local-use prefix's translator is the operator's own, inside the network.
# IPv4-compatible addresses (::/96, with :: and ::1) are deprecated and lead nowhere public.
# The ones below reach the IPv4 address in them (bits 96-127, 6to4's 16-47), judged as such.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to through a translator or tunnel: IPv4-mapped
    (::ffff:a.b.c.d), NAT64's well-known prefix (64:ff9b::a.b.c.d), 6to4 (2002:aabb:ccdd::)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, in any spelling an HTTP client would accept
    (dotted, shortened `127.1`, hex, octal, one integer, bracketed IPv6); None for a name."""
    host = host.strip().rstrip(".").strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # inet_aton takes the legacy spellings (127.1, 0x7f000001, 2130706433, 0177.1) that
        # resolvers and browsers also take, which ipaddress refuses.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


class UrlPolicy:
    """The outbound policy with its allowlist.

    Args:
        allowlist: CIDRs ("127.0.0.0/8") and host names ("hooks.internal") let through.
    """

    def __init__(self, allowlist: Iterable[str] = ()) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.hosts: set[str] = set()
        self._verdicts: dict[str, str | None] = {}
        for item in (x.strip() for x in allowlist):
            if not item:
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.hosts.add(item.lower().rstrip("."))

    def address_refusal(self, address: IPAddress) -> str | None:
        """Why a connection to address is refused; None if it is allowed."""
        if any(address in n for n in self.networks if n.version == address.version):
            return None
        if isinstance(address, ipaddress.IPv6Address) and (v4 := embedded_ipv4(address)):
            return self.address_refusal(v4)  # 2002:7f00:1:: is 127.0.0.1
        if (
            any(address in n for n in _REFUSED if n.version == address.version)
            or address.is_private
            or address.is_reserved
            or address.is_multicast
            or address.is_unspecified
            or address.is_loopback
            or address.is_link_local
        ):
            return f"{address} is not a public address"
        return None

    def host_refusal(self, host: str) -> str | None:
        """Why a host is refused before any lookup (a literal address, localhost); None when
        it is allowed or must be resolved first."""
        if host in self._verdicts:
            return self._verdicts[host]
        if len(self._verdicts) >= _MAX_VERDICTS:
            self._verdicts.clear()  # a host's verdict never changes: losing them costs time only
        verdict = self._verdicts[host] = self._host_refusal(host)
        return verdict

    def _host_refusal(self, host: str) -> str | None:
        name = host.strip().lower().rstrip(".").strip("[]")
        if name in self.hosts:
            return None
        if not name:
            return "the URL has no host"
        if name == "localhost" or name.endswith(".localhost"):
            return f"{host} is this machine"
        address = literal_address(name)
        return self.address_refusal(address) if address is not None else None

    def url_refusal(self, url: str) -> str | None:
        """host_refusal() of a URL's host."""
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            return "the URL does not parse"
        return self.host_refusal(host)

    def trusts_name(self, host: str) -> bool:
        """An allowlisted host name is connected to without checking what it resolves to."""
        return host.strip().lower().rstrip(".") in self.hosts


@lru_cache(maxsize=16)
def url_policy(allowlist: tuple[str, ...]) -> UrlPolicy:
    """One policy per allowlist: its host verdicts are cached (every job names its webhook)."""
    return UrlPolicy(allowlist)


def check_outbound(url: str | None, field: str, policy: UrlPolicy) -> None:
    """Refuse a URL a worker will connect to whose host is a refused address.

    Raises:
        InvalidRequest: naming field; nothing was written.
    """
    from producer.core.errors import InvalidRequest

    if url is None or (reason := policy.url_refusal(url)) is None:
        return
    message = f"{field}: not a URL a worker may call ({reason}); see VIDEOQUEUE_URL_ALLOWLIST"
    raise InvalidRequest(message, [{"field": field, "message": message}])
