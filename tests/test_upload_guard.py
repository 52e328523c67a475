"""What a stranger can make a public server take in: no URL is ever fetched (page, plain HTTP API,
MCP), a missing picture gets a message, Gradio's upload route is capped per client address and in
all (what no event took is deleted within minutes), and uploaded datasets count per address, never
evicting a visitor who is still there."""
from __future__ import annotations

import http.server
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from app.config import ASSETS
from app.ui import datasets
from app.ui import handlers as ui
from app.limits import UploadCaps
from app.ui.uploads import URL_REFUSED, UploadError, load_upload
from conftest import make_image_folder, served_app

CAT = ASSETS / "examples" / "cat.jpg"


# ---------------------------------------------------------------- a trap: a local HTTP server counting requests

@pytest.fixture
def trap():
    hits: list[str] = []

    class Counting(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            self.wfile.write(CAT.read_bytes())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cat.jpg", hits
    server.shutdown()


@pytest.fixture
def fetching_gradio(monkeypatch):
    """Gradio's downloader replaced by one without its private-address rule, so a URL that reached it
    would really contact the trap: what stops the fetch must be the app's rule, before Gradio's."""
    from gradio import processing_utils
    calls = []

    async def download(url, cache_dir):
        calls.append(url)
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
        path = Path(cache_dir) / "fetched" / "cat.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(response.content)
        return str(path)
    monkeypatch.setattr(processing_utils, "async_ssrf_protected_download", download)
    return calls


# ---------------------------------------------------------------- the served app, public mode

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app as a public server serves it, with MCP on, behind a trusted proxy (so a test can
    speak for several client addresses through ``X-Forwarded-For``) and its own upload cache."""
    cache = tmp_path_factory.mktemp("gradio-cache")
    with served_app(tmp_path_factory, GRADIO_TEMP_DIR=str(cache), INDISTILL_TRUST_PROXY="1") as (url, demo, _):
        yield SimpleNamespace(url=url.rstrip("/"), demo=demo, ledger=demo.upload_ledger, cache=cache)


def call(server, api: str, data: list, headers: dict | None = None) -> tuple[str, object]:
    """A named endpoint over plain HTTP (``/gradio_api/call/<api>``): (event, data) of its answer."""
    event = httpx.post(f"{server.url}/gradio_api/call/{api}", json={"data": data}, headers=headers).json()["event_id"]
    text = httpx.get(f"{server.url}/gradio_api/call/{api}/{event}", timeout=120).text
    kind = [line[7:] for line in text.splitlines() if line.startswith("event: ")][-1]
    payload = [line[6:] for line in text.splitlines() if line.startswith("data: ")][-1]
    return kind, json.loads(payload)


def file_data(path: str, url: str | None = None) -> dict:
    return {"path": path, "url": url, "meta": {"_type": "gradio.FileData"}}


def upload(server, name: str, data: bytes, address: str) -> httpx.Response:
    return httpx.post(f"{server.url}/gradio_api/upload", files=[("files", (name, data))],
                      headers={"X-Forwarded-For": address})


# ---------------------------------------------------------------- no URL fetched

def test_no_input_fetches_a_url_over_plain_http(server, trap, fetching_gradio):
    """A FileData naming the trap, as the picture of /retrieve (both ``path`` and ``url``), through the
    queued route, and even in a text input of /start: refused by the app's rule with its message (the
    direct route is closed to queued endpoints on a public server); neither Gradio's downloader nor
    the trap is reached."""
    url, hits = trap
    answers = [call(server, "retrieve", [file_data(url, url), 3, "cosine", "", ""]),
               call(server, "retrieve", [file_data(url), 3, "cosine", "", ""]),
               call(server, "start", [file_data(url), "", ""])]
    direct = httpx.post(f"{server.url}/gradio_api/run/retrieve", json={"data": [file_data(url), 3, "cosine", "", ""]},
                        timeout=60)
    for kind, data in answers:
        assert kind == "error" and URL_REFUSED in data["error"] and url in data["error"], data
    # a public server serves queued endpoints through the queue only (api_open off): the direct route
    # refuses the call outright, before any input is processed
    assert direct.status_code == 404 and "join the queue" in direct.text
    assert hits == [] and fetching_gradio == []


def test_the_trap_is_real_without_the_rule(trap, fetching_gradio):
    """Control: the same URL given to a component outside the guarded app reaches the trap."""
    import asyncio

    import gradio as gr
    url, hits = trap
    asyncio.run(gr.File().async_move_resource_to_block_cache(url))
    assert fetching_gradio == [url] and hits == ["/cat.jpg"]


def test_no_tool_fetches_a_url_over_mcp(server, trap, fetching_gradio):
    pytest.importorskip("mcp")  # requirements-mcp.txt
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client
    url, hits = trap

    async def agent():
        async with streamablehttp_client(f"{server.url}/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as mcp:
                await mcp.initialize()
                return await mcp.call_tool("retrieve", {"picture": url, "k": 3, "metric": "cosine"})
    result = asyncio.run(agent())
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert URL_REFUSED in text, text
    assert hits == [] and fetching_gradio == []


def test_the_loader_refuses_urls_and_names_a_missing_picture(tmp_path):
    with pytest.raises(UploadError, match="is a URL; this server never downloads a URL"):
        load_upload("https://example.com/cat.jpg")
    with pytest.raises(UploadError, match="The picture 'gone.jpg' was not found.*upload a picture file"):
        load_upload(tmp_path / "gone.jpg")


def test_a_missing_picture_in_the_upload_folder_gets_a_message(server):
    """Issue 21's probe answered {"error": null}: now /retrieve says what is wrong."""
    kind, data = call(server, "retrieve", [file_data(str(server.cache / ("0" * 8) / "gone.jpg")), 3, "cosine", "", ""])
    assert kind == "complete" and "was not found" in data[0]["message"] and "upload a picture file" in data[0]["message"]


def test_a_server_path_is_refused_with_a_message(server):
    """Gradio refuses a path outside its upload folder but answered {"error": null}; now it says why."""
    for path in ("/etc/passwd", "file:///etc/passwd", str(ASSETS / ".." / "app" / "config.py")):
        kind, data = call(server, "retrieve", [file_data(path), 3, "cosine", "", ""])
        assert kind == "error" and "not uploaded to this server" in data["error"], data


# ---------------------------------------------------------------- Gradio's upload route, capped

def test_the_upload_route_is_capped_per_client_and_in_all(server, monkeypatch):
    """One client uploading past its cap is refused (429, naming the cap) while another still
    uploads; past the total, everyone is refused (503); a file an event used stays while what no
    event took goes at the sweep, and with it the client's hold; an upload of unknown size is refused."""
    ledger = server.ledger
    monkeypatch.setattr(ledger, "caps", UploadCaps(per_client_bytes=300_000, total_bytes=620_000))
    blob = os.urandom(200_000)
    a, b, c = "203.0.113.5", "198.51.100.7", "192.0.2.9"
    first = upload(server, "a1.bin", blob, a)
    assert first.status_code == 200
    over = upload(server, "a2.bin", os.urandom(200_000), a)
    assert over.status_code == 429 and "the limit is 0.3 MB and 1,000 files per client address" in over.text
    assert upload(server, "b1.bin", os.urandom(200_000), b).status_code == 200    # another client still can
    assert upload(server, "c1.bin", os.urandom(200_000), c).status_code == 200
    full = upload(server, "c2.bin", os.urandom(50_000), "192.0.2.10")
    assert full.status_code == 503 and "the limit is 0.6 MB for all visitors" in full.text

    picture = upload(server, "cat.jpg", CAT.read_bytes(), "192.0.2.10")   # the picture fits: a few kB
    assert picture.status_code == 200
    kind, data = call(server, "retrieve", [file_data(picture.json()[0]), 3, "cosine", "", ""])
    assert kind == "complete" and "cat" in data[0]["message"]       # an uploaded picture works as before
    unclaimed = Path(first.json()[0])
    swept = ledger.reap(now=time.time() + ledger.caps.unclaimed_s + 1)
    assert str(unclaimed) in swept and not unclaimed.exists() and Path(picture.json()[0]).exists()
    assert upload(server, "a3.bin", blob, a).status_code == 200     # the sweep gave client a its room back

    def stream():
        yield b"x" * 1000
    chunked = httpx.post(f"{server.url}/gradio_api/upload", content=stream(),
                         headers={"Content-Type": "multipart/form-data; boundary=x", "X-Forwarded-For": b})
    assert chunked.status_code == 411 and "Content-Length" in chunked.text


# ---------------------------------------------------------------- uploaded datasets: per address, visitors still there kept

def request_from(address: str):
    """What a handler reads of Gradio's request: the socket's client address (no proxy here)."""
    return SimpleNamespace(client=SimpleNamespace(host=address), headers={})


@pytest.fixture
def public_studio(tmp_path, monkeypatch):
    monkeypatch.setenv("INDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("INDISTILL_TRUST_PROXY", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    return ui.configure(runs_root=tmp_path / "runs", public=True)


def dataset_archive(tmp_path, name: str) -> tuple[Path, int]:
    """A two-class zip and the bytes its images take once extracted."""
    from zipfile import ZipFile
    tree = make_image_folder(tmp_path / name, classes=("ant", "bee"), per_class=3)
    path = tmp_path / f"{name}.zip"
    with ZipFile(path, "w") as z:
        for f in sorted(tree.rglob("*.png")):
            z.write(f, f.relative_to(tree))
    return path, sum(f.stat().st_size for f in tree.rglob("*.png"))


def test_minted_sessions_share_their_address_cap(public_studio, tmp_path, monkeypatch):
    """Sessions are free to mint, an address is not: one address's third dataset is refused naming the
    cap per address, while a visitor from another address still uploads."""
    path, size = dataset_archive(tmp_path, "d")
    public_studio.limits = public_studio.limits.changed(datasets={"per_address_bytes": int(2.5 * size)})
    stranger = request_from("203.0.113.5")
    msgs = [datasets.upload_dataset(None, str(path), request=stranger)[1] for _ in range(3)]
    assert "ready" in msgs[0] and "ready" in msgs[1]
    assert "**Upload refused:**" in msgs[2] and "per address, whatever the number of sessions" in msgs[2]
    session, msg, _ = datasets.upload_dataset(None, str(path), request=request_from("198.51.100.7"))
    assert "ready" in msg and Path(session["upload"]).is_dir()


def test_a_visitor_still_there_keeps_their_dataset_when_the_space_is_full(public_studio, tmp_path, monkeypatch):
    """Issue 21's probe: a visitor who had uploaded (no run yet) lost the dataset to a newcomer's
    eviction. Now the newcomer is refused naming the cap while that visitor is active; once they have
    gone, the newcomer's upload makes room by evicting theirs."""
    path, size = dataset_archive(tmp_path, "d")
    public_studio.limits = public_studio.limits.changed(datasets={"total_bytes": int(1.5 * size)})
    here, msg, _ = datasets.upload_dataset(None, str(path), request=request_from("203.0.113.5"))
    assert "ready" in msg
    datasets.mark_active(here)                      # the status poll
    newcomer = ui.session_of(None)
    _, msg, _ = datasets.upload_dataset(newcomer, str(path), request=request_from("198.51.100.7"))
    assert "space for uploaded datasets is full" in msg and "visitors still here" in msg and "in all" in msg
    assert Path(here["upload"]).is_dir()
    public_studio.limits = public_studio.limits.changed(datasets={"active_s": -1})  # gone: no poll within active_s
    newcomer, msg, _ = datasets.upload_dataset(newcomer, str(path), request=request_from("198.51.100.7"))
    assert "ready" in msg and not Path(here["upload"]).exists()


def test_an_upload_with_nothing_to_train_on_is_refused(public_studio, tmp_path):
    tree = make_image_folder(tmp_path / "t", classes=("ant", "bee"), per_class=2)
    for f in (tree / "train").rglob("*.png"):
        f.write_bytes(b"\0" * 100)
    from zipfile import ZipFile
    path = tmp_path / "zeros.zip"
    with ZipFile(path, "w") as z:
        for f in sorted(tree.rglob("*.png")):
            z.write(f, f.relative_to(tree))
    session, msg, _ = datasets.upload_dataset(None, str(path), request=request_from("203.0.113.5"))
    assert msg.startswith("**Upload refused:**") and "nothing to train on" in msg and session["upload"] is None


# ---------------------------------------------------------------- a run folder without checkpoints

def test_a_run_folder_without_checkpoints_gives_no_models(tmp_path):
    from app.ui.inspect import ModelSet, load_if_there
    assert ModelSet.from_run(tmp_path / "evicted-run", {}).models == []
    assert load_if_there(tmp_path / "checkpoints" / "teacher.pt", "teacher") is None


def test_an_mcp_agent_sends_its_picture_as_a_data_url(server):
    """What retrieve's description tells an agent to do works: the picture inline, base64."""
    pytest.importorskip("mcp")
    import asyncio
    import base64

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client
    inline = "data:image/jpeg;base64," + base64.b64encode(CAT.read_bytes()).decode()

    async def agent():
        async with streamablehttp_client(f"{server.url}/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as mcp:
                await mcp.initialize()
                return await mcp.call_tool("retrieve", {"picture": inline, "k": 3, "metric": "cosine"})
    text = " ".join(getattr(c, "text", "") for c in asyncio.run(agent()).content)
    answer = json.loads(text)
    assert answer["neighbours"] and URL_REFUSED not in answer["message"], answer


def test_api_polls_without_a_session_share_one_state_per_address(server):
    """A script polling /run/status with no session_hash gets its address's one session state, not a
    new whole-page state per call (Gradio's ~15 ms each); a body naming its session keeps it."""
    from app.ui.api_session import shared_hash
    holder = server.demo.state_holder
    before = set(holder.session_data)
    for address in ("203.0.113.1",) * 3 + ("203.0.113.2",) * 2:
        answer = httpx.post(f"{server.url}/gradio_api/run/status", json={"data": ["", ""]},
                            headers={"X-Forwarded-For": address}).json()
        assert answer["data"][0]["state"] is None  # the status answer itself is unchanged
    assert set(holder.session_data) - before == {shared_hash("203.0.113.1"), shared_hash("203.0.113.2")}
    httpx.post(f"{server.url}/gradio_api/run/status", json={"data": ["", ""], "session_hash": "mine12345"})
    assert "mine12345" in holder.session_data


def test_a_datasets_decoded_cache_counts_against_its_space(tmp_path):
    """Runs on an upload write decoded tensors beside it (<home>/<token>/cache): the space caps count them,
    not only the archive's size recorded at extraction."""
    import json as _json
    home = tmp_path / "home"
    (home / "tok" / "cache").mkdir(parents=True)
    (home / datasets.VISITOR).write_text(_json.dumps({"address": "a", "bytes": 100}))
    (home / "tok" / "cache" / "decoded.pt").write_bytes(b"x" * 1000)
    assert datasets._visitor(home) == {"address": "a", "bytes": 1100}
