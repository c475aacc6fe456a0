"""The SSRF guard, with the allow-list off: every inward address is refused, before any
connection (the netguard makes a connection beyond loopback fail the test)."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from predq.shared.webhooks.ssrf import AllowList, BlockedAddress, UnsafeUrl, check_url, resolve
from tests.helpers.netguard import loopback_only

OFF = AllowList.parse([])

INWARD = [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.0.1", "172.31.255.254", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "100.127.255.254", "0.0.0.0", "224.0.0.1",
    "255.255.255.255", "240.0.0.1", "198.18.0.1", "::1", "::", "::ffff:127.0.0.1",
    "::ffff:8.8.8.8", "fe80::1", "fc00::1", "ff02::1", "64:ff9b::7f00:1",
    "2002:7f00:1::1", "2001::1",
]


@pytest.fixture(autouse=True)
def _no_traffic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with loopback_only(monkeypatch) as refused:
        yield
    assert refused == []


def _resolver(*addresses: str) -> Any:
    def resolve_(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in addresses]
    return resolve_


def _url(ip: str) -> str:
    return f"http://[{ip}]:8080/x" if ":" in ip else f"http://{ip}:8080/x"


@pytest.mark.parametrize("ip", INWARD)
def test_literal_inward_addresses_are_refused_at_submit(ip: str) -> None:
    with pytest.raises(UnsafeUrl, match="webhooks must reach a public address"):
        check_url(_url(ip), OFF)


@pytest.mark.parametrize("ip", INWARD)
def test_names_resolving_inward_are_refused_at_delivery(ip: str) -> None:
    shown = re.escape(str(ipaddress.ip_address(ip)))
    with pytest.raises(BlockedAddress, match=f"hooks.example.com resolves to {shown}, which"):
        resolve("https://hooks.example.com/x", OFF, _resolver(ip))


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "api.localhost", "localhost.",
                                  "127.1", "0x7f000001", "2130706433", "0"])
def test_loopback_names_and_legacy_forms_are_refused_at_submit(host: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url(f"http://{host}/hook", OFF)


@pytest.mark.parametrize(("url", "why"), [
    ("not a url", "whitespace"), ("hooks.example.com/x", "only http:// and https://"),
    ("ftp://hooks.example.com/x", "not ftp://"), ("file:///etc/passwd", "not file://"),
    ("gopher://h/x", "not gopher://"), ("http:///x", "no host"),
    ("http://hooks.example.com:99999/", "port"), ("http://h\x00.example.com/", "control"),
])
def test_non_http_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrl, match=why):
        check_url(url, OFF)


def test_any_bad_address_among_good_ones_refuses() -> None:
    with pytest.raises(BlockedAddress, match="10.0.0.7"):
        resolve("https://hooks.example.com/", OFF, _resolver("93.184.216.34", "10.0.0.7"))


def test_a_public_name_is_pinned_to_its_checked_address() -> None:
    t = resolve("https://user:pw@Hooks.Example.com:8443/p?q=1", OFF,
                _resolver("93.184.216.34", "2606:2800:220:1::1"))
    assert t.url == "https://user:pw@93.184.216.34:8443/p?q=1"
    assert t.host_header == "Hooks.Example.com:8443"
    assert t.sni_hostname == "hooks.example.com"
    t6 = resolve("http://hooks.example.com/", OFF, _resolver("2606:2800:220:1::1"))
    assert t6.url == "http://[2606:2800:220:1::1]:80/" and t6.sni_hostname is None


def test_public_literals_pass_without_dns() -> None:
    check_url("https://93.184.216.34/hook", OFF)

    def no_dns(*a: Any, **k: Any) -> Any:
        raise AssertionError("a literal address needs no DNS")

    assert str(resolve("https://93.184.216.34/hook", OFF, no_dns).ip) == "93.184.216.34"


def test_unresolvable_names_raise_gaierror() -> None:
    def nx(*a: Any, **k: Any) -> Any:
        raise socket.gaierror("Name or service not known")

    with pytest.raises(socket.gaierror):
        resolve("https://nx.example.com/", OFF, nx)


def test_the_allow_list_exempts_hosts_and_networks() -> None:
    allow = AllowList.parse(["127.0.0.1", "10.0.0.0/8", "LocalHost", "[::1]"])
    for url in ("http://127.0.0.1:9/", "http://10.2.3.4/", "http://localhost:9/",
                "http://[::1]:9/"):
        check_url(url, allow)
    assert str(resolve("http://svc.internal/", allow, _resolver("10.9.9.9")).ip) == "10.9.9.9"
    with pytest.raises(BlockedAddress):
        resolve("http://svc.internal/", allow, _resolver("192.168.0.1"))
    with pytest.raises(UnsafeUrl):
        check_url("http://127.0.0.2/", allow)


def test_international_names_go_out_in_their_ascii_form() -> None:
    seen: list[str] = []

    def resolver(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        seen.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    t = resolve("https://bücher.example:8443/x", OFF, resolver)
    assert seen == ["xn--bcher-kva.example"]
    assert t.sni_hostname == "xn--bcher-kva.example"
    assert t.host_header == "xn--bcher-kva.example:8443"


def test_allowing_127_0_0_1_allows_localhost_through_that_address_only() -> None:
    allow = AllowList.parse(["127.0.0.1"])
    check_url("http://localhost:9/hook", allow)  # was refused: "a loopback name"
    check_url("http://api.localhost:9/hook", allow)
    # localhost resolves to ::1 and 127.0.0.1: the delivery goes to the allowed one.
    target = resolve("http://localhost:9/hook", allow, _resolver("::1", "127.0.0.1"))
    assert str(target.ip) == "127.0.0.1" and target.host_header == "localhost:9"
    with pytest.raises(BlockedAddress, match="PREDQ_WEBHOOK_ALLOW_HOSTS"):
        resolve("http://localhost:9/hook", allow, _resolver("::1"))
    with pytest.raises(BlockedAddress, match="PREDQ_WEBHOOK_ALLOW_HOSTS"):
        resolve("http://localhost:9/hook", allow, _resolver("93.184.216.34"))
    # Allowing another network does not allow localhost.
    with pytest.raises(UnsafeUrl, match="PREDQ_WEBHOOK_ALLOW_HOSTS"):
        check_url("http://localhost:9/hook", AllowList.parse(["10.0.0.0/8"]))


@pytest.mark.parametrize("url", ["http://localhost/hook", "http://127.0.0.1/hook",
                                 "http://10.1.2.3/hook", "http://[::1]/hook"])
def test_submit_time_refusals_name_the_setting(url: str) -> None:
    with pytest.raises(UnsafeUrl, match="add it to PREDQ_WEBHOOK_ALLOW_HOSTS"):
        check_url(url, OFF)
