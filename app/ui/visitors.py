"""Who a visitor is beyond their session key: the client address.

A session key is free to mint (an empty ``session_key`` or a fresh browser tab is a new
session), an address is not. Public caps (live runs, queued work, upload space, kept run folders)
count per session *and* per address. The address is the socket's peer unless the app is told it
sits behind a proxy that sets ``X-Forwarded-For`` (a Hugging Face Space, or
``INDISTILL_TRUST_PROXY=1``); then it is the address that proxy saw (the last hop the proxy
appended, which a client cannot forge).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Any

from app import settings

LOCAL = "local"          # no request (a script calling the handlers, the CLI, a test)


def behind_proxy(env: dict | None = None) -> bool:
    """Trust ``X-Forwarded-For``? On a Space (``SPACE_ID``), or when ``INDISTILL_TRUST_PROXY=1``
    (:func:`app.settings.behind_proxy`)."""
    return settings.behind_proxy(env)


def _canonical(text: str) -> str | None:
    """An IP address in one spelling (IPv6 grouped by /56: one home or cloud customer holds a /56), or None."""
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/56", strict=False).network_address) + "/56"
    return str(ip)


def address_of(request: Any, env: dict | None = None) -> str:
    """The client address of a Gradio request (``gr.Request``), as the caps count it.

    Behind a trusted proxy: the right-most entry of ``X-Forwarded-For`` (the one the proxy added);
    otherwise the socket's peer. Anything unreadable counts as one shared "unknown" client, so a
    malformed header never earns a fresh identity."""
    if request is None:
        return LOCAL
    if behind_proxy(env):
        headers = getattr(request, "headers", None) or {}
        try:  # every line of the header: a proxy may add its own line after the client's forged one
            lines = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") else \
                [headers.get("x-forwarded-for", "")]
            forwarded = ",".join(line for line in lines if isinstance(line, str))
        except Exception:  # noqa: BLE001 - a header object of an unexpected type
            forwarded = ""
        if isinstance(forwarded, str) and forwarded:
            found = _canonical(forwarded.split(",")[-1][:64])
            return found or "unknown"
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return (_canonical(host) if isinstance(host, str) else None) or "unknown"


def address_digest(address: str) -> str:
    """A short keyed digest of an address: what run folders keep (never the address itself). Keyed with
    this server's secret (``.address-key`` in the runs folder), so it can be neither recomputed nor
    reversed by a stranger (IPv4 has only 2³² addresses)."""
    from .keys import server_secret
    from .studio import studio
    key = server_secret(studio().runs_root, ".address-key", 32)
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:16]
