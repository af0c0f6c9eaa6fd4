"""The SSRF guard's rules as pure functions: what a callback URL may name."""

from __future__ import annotations

import pytest

from worker.services import urlguard


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("ftp://example.com/", "url_scheme"),
        ("file:///etc/passwd", "url_scheme"),
        ("/relative/path", "url_parsing"),
        ("http://", "url_parsing"),
        ("http://user:pw@example.com/", "url_parsing"),
        ("http://example.com:99999/", "url_parsing"),
        ("http://example.com:0/", "url_parsing"),
        ("http://exa mple.com/", "url_parsing"),
        ("http://a..b.example/", "url_parsing"),  # an empty label: no IDNA form
        ("http://" + "x" * 64 + ".example/", "url_parsing"),  # a label over 63
        ("http://" + "\u00fc" * 60 + ".de/", "url_parsing"),  # too long once encoded
        ("http://example.com/" + "a" * 2100, "url_too_long"),
    ],
)
def test_malformed_urls_are_refused_with_their_kind(url: str, kind: str) -> None:
    with pytest.raises(urlguard.UrlRefused) as refused:
        urlguard.parse(url)
    assert refused.value.kind == kind


def test_parse_keeps_host_port_and_request_target() -> None:
    assert urlguard.parse("HTTPS://Example.COM/a/b?c=1#frag") == urlguard.Target(
        "https", "example.com", 443, "/a/b?c=1"
    )
    assert urlguard.parse("http://[::1]:8080") == urlguard.Target("http", "::1", 8080, "/")


def test_parse_gives_an_international_host_in_its_idna_form() -> None:
    assert urlguard.parse("http://B\u00dccher.example/stra\u00dfe") == urlguard.Target(
        "http", "xn--bcher-kva.example", 80, "/stra%C3%9Fe"
    )
    # Full-width digits and dots map to ASCII, so the literal below is seen as one.
    full_width = "\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11"
    assert urlguard.parse(f"http://{full_width}/").host == "127.0.0.1"
    with pytest.raises(urlguard.UrlRefused) as refused:
        urlguard.check_submitted(f"http://{full_width}/", allow_private=False)
    assert refused.value.kind == urlguard.FORBIDDEN


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("example.com", None),
    ],
)
def test_literal_addresses_in_every_form_are_recognised(host: str, address: str | None) -> None:
    assert urlguard.literal_address(host) == address


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1%eth0",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",
        "64:ff9b::7f00:1",
        "fec0::1",  # site-local, fec0::/10
        "feff:ffff::1",
    ],
)
def test_non_public_addresses_are_not_public(address: str) -> None:
    assert not urlguard.is_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_public(address: str) -> None:
    assert urlguard.is_public(address)


def test_submission_refuses_private_literals_and_accepts_unresolvable_names() -> None:
    with pytest.raises(urlguard.UrlRefused) as refused:
        urlguard.check_submitted("http://2130706433/", allow_private=False)
    assert refused.value.kind == urlguard.FORBIDDEN
    with pytest.raises(urlguard.UrlRefused) as refused:
        urlguard.check_submitted("http://localhost/", allow_private=False)
    assert refused.value.kind == urlguard.FORBIDDEN
    assert urlguard.check_submitted("http://nothing.invalid/", allow_private=False).host == (
        "nothing.invalid"
    )
    assert urlguard.check_submitted("http://127.0.0.1/", allow_private=True).port == 80


def test_delivery_resolution_refuses_private_and_reports_unresolved() -> None:
    target = urlguard.parse("http://localhost:1/")
    with pytest.raises(urlguard.UrlRefused) as refused:
        urlguard.resolve(target, allow_private=False)
    assert refused.value.kind == urlguard.FORBIDDEN
    assert "127.0.0.1" in urlguard.resolve(target, allow_private=True)
    with pytest.raises(urlguard.UrlRefused) as refused:
        urlguard.resolve(urlguard.parse("http://nothing.invalid/"), allow_private=True)
    assert refused.value.kind == urlguard.UNRESOLVED
