"""One Limits object, read from the environment in one place and shown as one README table; the
ui modules offer each other public names only; one signing-key function; the handlers facade complete."""
import ast
import os
import re
import threading
from pathlib import Path

import pytest

from app.limits import ENV, ROWS, Limits, limits_table
from app.settings import VARIABLES, SettingError, Settings
from app.ui import handlers as ui
from app.ui import keys, studio as studio_module

ROOT = Path(__file__).resolve().parents[1]
UI = ROOT / "app" / "ui"


# ---------------------------------------------------------------- the environment, read in one place

@pytest.mark.parametrize("name, value, says", [
    ("INDISTILL_MAX_QUEUE", "abc", "is not a whole number"),
    ("INDISTILL_MAX_JOBS", "0", "is below 1"),
    ("INDISTILL_MAX_RUNS_PER_ADDRESS", "2.5", "is not a whole number"),
    ("INDISTILL_MAX_QUEUE_MINUTES_PER_ADDRESS", "nan", "is not a number"),
    ("INDISTILL_SHARING", "maybe", "is not 1 or 0"),
    ("INDISTILL_TRAIN_THREADS", "-2", "is below 0"),
])
def test_a_malformed_value_names_its_variable_and_what_it_accepts(name, value, says):
    with pytest.raises(SettingError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}={value!r} {says}") and "unset it for the default" in message


def test_a_server_with_a_malformed_variable_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv("INDISTILL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("INDISTILL_MAX_QUEUE", "thirty")
    studio_module.reset()
    with pytest.raises(SettingError, match="INDISTILL_MAX_QUEUE='thirty' is not a whole number"):
        ui.studio()
    studio_module.reset()


def test_every_variable_the_app_reads_is_declared_and_read_only_in_settings():
    """``INDISTILL_*`` is read (``environ``/``getenv``) nowhere in app/ but app/settings.py, save the modules
    still to move (listed: shrink the list, never grow it); every variable named in app/ is declared."""
    still_to_move: set[str] = set()
    readers, named = set(), set()
    for path in (ROOT / "app").rglob("*.py"):
        text, rel = path.read_text(), str(path.relative_to(ROOT))
        named |= set(re.findall(r"INDISTILL_[A-Z_]+", text))
        if re.search(r"(environ\.get\(|getenv\(|env\.get\()\s*[\"']INDISTILL_", text) or \
                re.search(r"environ\[[\"']INDISTILL_[A-Z_]+[\"']\](?!\s*=)", text):  # a read, not a write
            readers.add(rel)
    assert readers - still_to_move <= {"app/settings.py"}, readers
    assert named <= set(VARIABLES) | {"INDISTILL_TEST_DEVICE", "INDISTILL_LOAD_TIMES"}, named - set(VARIABLES)


def test_defaults_and_overrides():
    found = Settings.from_env({"INDISTILL_MAX_QUEUE": " 7 ", "INDISTILL_SHARING": "off", "INDISTILL_MCP": "",
                               "SPACE_ID": "me/space"})
    assert found.limits.queue.max_queue == 7 and found.sharing is False and found.mcp is None
    assert found.public and found.behind_proxy             # on a Space, unless told otherwise
    assert not Settings.from_env({"SPACE_ID": "x", "INDISTILL_PUBLIC": "0"}).public
    assert Limits.from_env({}) == Limits()


# ---------------------------------------------------------------- env overrides reach the enforcing code

@pytest.fixture
def held(monkeypatch):
    from test_queue import HeldTraining
    from app.experiment import Experiment
    training = HeldTraining()
    monkeypatch.setattr(Experiment, "run", lambda exp: training.run(exp))
    return training


def test_max_runs_per_address_from_the_environment_refuses_the_second_run(tmp_path, monkeypatch, held):
    from test_queue import controls, request_from, stop_all
    for name, value in {"INDISTILL_PUBLIC": "1", "INDISTILL_RUNS": str(tmp_path / "runs"),
                        "INDISTILL_CACHE": str(tmp_path / "cache"), "INDISTILL_MAX_RUNS_PER_ADDRESS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("INDISTILL_TRUST_PROXY", raising=False)
    studio_module.reset()
    s = ui.studio()
    try:
        assert s.public and s.limits.queue.max_runs_per_address == 1
        first = ui.start(None, *controls(student_epochs=1), request=request_from("10.0.0.9"))[2]
        second = ui.start(None, *controls(student_epochs=2), request=request_from("10.0.0.9"))[2]
        other = ui.start(None, *controls(student_epochs=3), request=request_from("10.0.0.10"))[2]
        assert first.startswith("Started run") and other.startswith("Started run"), (first, other)
        assert second.startswith("Not started") and "the limit per address is 1" in second, second
    finally:
        stop_all(s.manager)
        studio_module.reset()


def test_a_studio_with_smaller_limits_refuses_by_them(tmp_path):
    s = ui.configure(runs_root=tmp_path / "runs", limits=Limits().changed(retrieval={"max_k": 4}))
    _, message, _ = ui.retrieve(str(ROOT / "assets" / "examples" / "cat.jpg"), None, "cosine", 5)
    assert message == "**Neighbours per model must be 1 to 4; got 5.**"
    assert s.models.size == Limits().retrieval.model_sets


# ---------------------------------------------------------------- the README's table

def test_the_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- limits-table -->\n(.*?)<!-- /limits-table -->", readme, re.S)
    assert found, "README.md: the Limits table goes between <!-- limits-table --> and <!-- /limits-table -->"
    assert found.group(1) == limits_table(), "regenerate it: python -c 'from app.limits import limits_table; print(limits_table())'"


def test_every_cap_has_a_row_and_every_variable_a_cap_or_a_setting():
    for group, (_, fields) in ROWS.items():
        assert list(fields) == [f.name for f in getattr(Limits(), group).__dataclass_fields__.values()], group
    assert set(ROWS) == set(Limits.__dataclass_fields__)
    assert set(ENV.values()) <= set(VARIABLES)
    assert "| runs waiting in the queue (`queue.max_queue`) | 30 | `INDISTILL_MAX_QUEUE` |" in limits_table()


# ---------------------------------------------------------------- module boundaries by name

def _sibling_modules(tree: ast.Module) -> set[str]:
    """Names bound to app modules in a file: ``from . import x``, ``from app import x``, ``import app.x as y``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or node.module in ("app", "app.ui")) and node.module in (None, "app", "app.ui"):
            out |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.asname for a in node.names if a.name.startswith("app.") and a.asname}
    return out


def test_no_ui_module_reaches_for_another_modules_underscore_names():
    found = []
    for path in sorted(UI.glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = _sibling_modules(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("app")):
                found += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{path.name}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not found, found


def test_the_datasets_module_asks_the_job_manager_rather_than_reading_its_table():
    text = (UI / "datasets.py").read_text()
    assert "manager.lock" not in text and "manager.jobs" not in text and "live_owners()" in text


EVENTS = {"click", "change", "input", "upload", "tick", "then", "load", "submit", "select"}


def test_every_handler_the_page_wires_is_in_the_facade():
    """The page's event handlers (layout.py) are all re-exported by app.ui.handlers: the facade cannot drift."""
    from app.ui import api, layout
    tree = ast.parse((UI / "layout.py").read_text())
    wired = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EVENTS and node.args:
            fn = node.args[0]
            wired.append(fn.body.func if isinstance(fn, ast.Lambda) and isinstance(fn.body, ast.Call) else fn)
        wired += [k.value for k in getattr(node, "keywords", []) if k.arg == "delete_callback"]
    facade = {id(getattr(ui, name)) for name in ui.__all__}
    objects = []
    for fn in wired:
        if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name):
            objects.append((ast.unparse(fn), getattr(getattr(layout, fn.value.id), fn.attr)))
        elif isinstance(fn, ast.Name) and hasattr(layout, fn.id):
            objects.append((fn.id, getattr(layout, fn.id)))
    handlers = [(name, obj) for name, obj in objects if not name.startswith("views.")]  # views draw, they don't handle
    assert len(handlers) >= 20, handlers
    missing = [name for name, obj in handlers if id(obj) not in facade]
    assert not missing, f"wired in layout.py but not in app.ui.handlers: {missing}"
    assert all(id(getattr(api, name)) in facade for name in ("start", "status", "cancel", "retrieve"))


# ---------------------------------------------------------------- one signing-key function

def ask_at_once(path: Path, threads: int = 8) -> list[bytes]:
    """``keys.read_or_create(path)`` from ``threads`` threads released together."""
    barrier, got = threading.Barrier(threads), []

    def ask():
        barrier.wait()
        got.append(keys.read_or_create(path, 32))
    started = [threading.Thread(target=ask) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join()
    return got


@pytest.mark.parametrize("start", ["missing", "damaged"])
def test_a_server_secret_is_owner_only_and_made_once_under_concurrency(tmp_path, start):
    for round_ in range(5):   # a race shows in some rounds only: ask five times
        path = tmp_path / f"root-{round_}" / ".secret"
        if start == "damaged":   # emptied or cut: replaced whole, never used weak
            path.parent.mkdir()
            path.write_text("00")
        got = ask_at_once(path)
        assert len(got) == 8 and len(set(got)) == 1 and len(got[0]) == 32
        assert bytes.fromhex(path.read_text()) == got[0]
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert [p.name for p in path.parent.iterdir()] == [".secret"]   # no scratch file left behind


def test_the_page_and_the_api_keep_their_keys_through_the_one_function(tmp_path):
    from app.ui import api, layout
    s = ui.configure(runs_root=tmp_path / "runs")
    keys.forget()
    assert bytes.fromhex(layout.browser_key()) == keys.server_secret(s.runs_root, ".browser-key", 16)
    assert api.signing_key() == keys.server_secret(s.runs_root, api.SIGNING_KEY_FILE, 32)
    for name in (".browser-key", api.SIGNING_KEY_FILE):
        assert os.stat(s.runs_root / name).st_mode & 0o777 == 0o600
    source = (UI / "layout.py").read_text() + (UI / "api.py").read_text()
    assert "token_bytes" not in source and "token_hex(16)" not in source and "O_EXCL" not in source


def test_a_class_behind_one_address_can_keep_more_run_folders(tmp_path, monkeypatch):
    """INDISTILL_MAX_KEPT_PER_ADDRESS reaches the retention a public server enforces."""
    monkeypatch.setenv("INDISTILL_MAX_KEPT_PER_ADDRESS", "60")
    limits = Limits.from_env()
    assert limits.retention.max_per_address == 60
    from app.ui import handlers as ui
    s = ui.configure(runs_root=tmp_path / "runs", public=True, limits=limits)
    assert s.manager.retention.max_per_address == 60
