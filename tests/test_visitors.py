"""The client address the public caps count: the socket's peer, or a trusted proxy's last hop."""
from types import SimpleNamespace

from app.ui.visitors import LOCAL, address_digest, address_of, behind_proxy


def request(host="203.0.113.9", forwarded=None):
    headers = {"x-forwarded-for": forwarded} if forwarded is not None else {}
    return SimpleNamespace(client=SimpleNamespace(host=host), headers=headers)


def test_socket_peer_unless_a_proxy_is_trusted():
    env = {}
    assert address_of(request(forwarded="198.51.100.1"), env) == "203.0.113.9"  # a forged header is ignored
    assert address_of(None, env) == LOCAL


def test_trusted_proxy_uses_the_hop_it_appended():
    env = {"INDISTILL_TRUST_PROXY": "1"}
    # the client wrote the first entry; the proxy appended the last one
    assert address_of(request(forwarded="1.2.3.4, 198.51.100.7"), env) == "198.51.100.7"
    assert address_of(request(forwarded="not-an-ip"), env) == "unknown"  # no fresh identity from junk
    assert behind_proxy({"SPACE_ID": "x/y"}) and not behind_proxy({"SPACE_ID": "x/y", "INDISTILL_TRUST_PROXY": "0"})


def test_ipv6_counts_per_56_and_mapped_ipv4_as_ipv4():
    env = {}
    a = address_of(request(host="2001:db8::1"), env)
    b = address_of(request(host="2001:db8::ffff:2"), env)
    assert a == b == "2001:db8::/56"
    assert address_of(request(host="::ffff:192.0.2.5"), env) == "192.0.2.5"


def test_digest_hides_the_address_under_the_servers_key(tmp_path):
    """Stable for one server, different on another (keyed), never the address itself."""
    import hashlib

    from app.ui import handlers as ui
    ui.configure(runs_root=tmp_path / "a")
    d = address_digest("198.51.100.7")
    assert len(d) == 16 and "198" not in d and d != address_digest("198.51.100.8") and d == address_digest("198.51.100.7")
    assert d != hashlib.sha256(b"indistill-address:198.51.100.7").hexdigest()[:16]  # not an unkeyed hash
    ui.configure(runs_root=tmp_path / "b")
    assert address_digest("198.51.100.7") != d


def test_a_forged_first_header_line_does_not_win_over_the_proxys_own_line():
    """A proxy that adds its own X-Forwarded-For line after the client's: the proxy's last hop counts."""
    from starlette.datastructures import Headers
    headers = Headers(raw=[(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"9.9.9.9")])
    req = SimpleNamespace(client=SimpleNamespace(host="127.0.0.1"), headers=headers)
    assert address_of(req, {"INDISTILL_TRUST_PROXY": "1"}) == "9.9.9.9"


def test_one_ipv6_customer_prefix_is_one_visitor():
    env = {}
    assert address_of(request(host="2001:db8:0:1::5"), env) == address_of(request(host="2001:db8:0:2::5"), env)
