"""Paths relative to what they name (issue 20, item 2): a shipped checkpoint is recorded as
``assets/…`` and opened from whichever checkout reads it; the repository holds no machine's path;
a copy of the checkout elsewhere reports the reference study and opens every shipped run."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.checkpoint import load_checkpoint
from app.config import ASSETS, ExperimentConfig, preset, recorded_path, resolve_path

ROOT = ASSETS.parent
TEACHER = "assets/teachers/cnn_16_32_64.pt"
MACHINE_PATHS = ("/work/", "/root/", "/home/", "/Users/", "/tmp/", "C:\\")


def test_a_shipped_checkpoint_is_recorded_relative_to_assets_and_opened_from_any_directory(tmp_path, monkeypatch):
    cfg = preset("workshop")
    assert cfg.teacher.checkpoint == TEACHER and json.loads(cfg.to_json())["teacher"]["checkpoint"] == TEACHER
    monkeypatch.chdir(tmp_path)                                       # not the checkout: assets/ is not here
    assert resolve_path(cfg.teacher.checkpoint) == ASSETS / "teachers" / "cnn_16_32_64.pt"
    assert load_checkpoint(resolve_path(cfg.teacher.checkpoint))["meta"]["arch"] == "cnn_16_32_64"
    # however it is given, a shipped file is recorded the one way
    assert recorded_path(str(ASSETS / "teachers" / "cnn_16_32_64.pt")) == TEACHER


def test_an_old_record_from_another_checkout_still_opens_the_shipped_file(tmp_path):
    """results.json and config.json written before: an absolute path into some other checkout's
    assets/ (gone from this machine) names this checkout's shipped file."""
    old = preset("workshop").to_dict()
    old["teacher"]["checkpoint"] = "/srv/old-checkout/assets/teachers/cnn_16_32_64.pt"
    old["indistill"]["aux_checkpoint"] = "/srv/old-checkout/assets/teachers/cnn4.pt"
    cfg = ExperimentConfig.from_dict(old)
    assert (cfg.teacher.checkpoint, cfg.indistill.aux_checkpoint) == (TEACHER, "assets/teachers/cnn4.pt")
    assert resolve_path(old["teacher"]["checkpoint"]) == ASSETS / "teachers" / "cnn_16_32_64.pt"


def test_anything_else_is_kept_as_the_user_gave_it(tmp_path):
    mine = tmp_path / "assets" / "teachers" / "cnn_16_32_64.pt"        # exists: the user's own file
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"x")
    for path in (str(mine), "runs/x/checkpoints/teacher.pt", "/srv/old/assets/teachers/no-such.pt",
                 "assets/../app/config.py", "assets/teachers/../../app/config.py"):
        assert recorded_path(path) == path and resolve_path(path) == Path(path)
    assert preset("workshop").with_overrides({"teacher.checkpoint": "runs/t.pt"}).teacher.checkpoint == "runs/t.pt"


def test_a_run_shipped_into_the_library_names_no_machine_path(tmp_path):
    """A run recorded before (an absolute teacher path, its run folder's path) is shipped with
    the teacher relative to assets/ and without the folder path."""
    from app import library
    from app.runfolder import write_json
    config = preset("reference-cifar10").with_overrides({"data.data_dir": "../shared/cifar10.tar.gz"}).to_dict()
    config["teacher"]["checkpoint"] = str(ASSETS / "teachers" / "cnn_16_32_64.pt")
    run = tmp_path / "runs" / "old-run"
    write_json(config, run / "config.json")
    write_json({"status": "finished", "config": config, "run_dir": str(run), "phases": {}}, run / "results.json")
    dest = library.ship(run, "shipped-run", tmp_path / "library")
    for name in ("config.json", "results.json"):
        text = (dest / name).read_text()
        assert str(tmp_path) not in text and str(ROOT) not in text and TEACHER in text


def tracked(*folders: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *folders], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if Path(line).suffix in (".json", ".md", ".csv")]


def strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)
    elif isinstance(obj, str):
        yield obj


def test_the_repository_holds_no_machine_path():
    files = tracked("studies", "assets")
    assert any(f.name == "results.json" for f in files)
    for f in files:
        if not f.is_file():        # tracked but deleted in this working tree
            continue
        text = f.read_text()
        assert not [m for m in MACHINE_PATHS if m in text], f"{f.relative_to(ROOT)} names a machine path"
        if f.suffix == ".json":
            absolute = [s for s in strings(json.loads(text)) if s.startswith("/")]
            assert not absolute, f"{f.relative_to(ROOT)} holds absolute paths: {absolute[:3]}"


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


RESUME = """
import sys
from pathlib import Path
clone = Path(sys.argv[1])
import app
assert Path(app.__file__).resolve().is_relative_to(clone), app.__file__
from app.cli import main
assert main(["report", "--study", "reference", "--part", "report", "--out", str(clone / "studies"),
             "--data-dir", "not-read"]) == 0
from app.checkpoint import load_checkpoint
from app.config import resolve_path
from app.experiment import Experiment
for pair in ("pkt", "studio"):
    exp = Experiment(run_dir=clone / "studies" / "reference" / pair, resume=True)
    teacher = resolve_path(exp.cfg.teacher.checkpoint)
    assert teacher.is_relative_to(clone / "assets"), teacher
    assert load_checkpoint(teacher)["meta"]["arch"] == exp.cfg.teacher.arch
    done = [exp.unit_done(phase, seed) for phase in exp.plan.schedules for seed in range(exp.cfg.seeds)]
    assert done and all(done), (pair, done)   # every unit recorded, its checkpoint read from the pair folder
print("resumed")
"""


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The checkout's working tree copied elsewhere (the code, tests, studies and assets)."""
    dest = tmp_path_factory.mktemp("elsewhere") / "indistill-copy"
    for name in ("app", "models", "tests", "studies", "assets"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def run_in(clone: Path, cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "1"}
    env.pop("INDISTILL_DATA_DIR", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_copy_elsewhere_reports_the_reference_study_without_training(clone, tmp_path):
    before = {pair: digest(clone / "studies" / "reference" / pair) for pair in ("pkt", "studio")}
    done = run_in(clone, tmp_path, ["-c", RESUME, str(clone)])
    assert done.returncode == 0 and "resumed" in done.stdout, done.stdout[-2000:] + done.stderr[-4000:]
    assert {pair: digest(clone / "studies" / "reference" / pair) for pair in before} == before   # nothing re-run
    md = (clone / "studies" / "reference" / "report.md").read_text()
    assert "## pkt:" in md and "## studio:" in md and "Unfinished" not in md and "### Cost" in md
    assert not [m for m in MACHINE_PATHS if m in md]


def test_a_copy_elsewhere_opens_every_shipped_library_run_in_every_view(clone, tmp_path):
    done = run_in(clone, tmp_path, ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    str(clone / "tests" / "test_ui_handlers.py"),
                                    "-k", "test_every_shipped_library_run_opens_in_every_view"])
    ids = sorted(p.name for p in (clone / "assets" / "library").iterdir() if (p / "results.json").is_file())
    assert done.returncode == 0 and f"{len(ids)} passed" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_form_and_the_public_check_know_the_shipped_teacher_from_any_directory(tmp_path, monkeypatch):
    """Presets record the shipped teacher as ``assets/…``: a server started outside the checkout still
    shows it as the shipped teacher and admits it in public mode."""
    from app import public
    from app.config import SAMPLE_DATA, preset
    from app.ui import form
    monkeypatch.chdir(tmp_path)
    cfg = preset("workshop")
    assert cfg.teacher.checkpoint.startswith("assets/")
    assert form.values_from(cfg)["teacher_weights"] != form.SCRATCH
    problems = public.admit(cfg, {SAMPLE_DATA.resolve()}, public.Budget())
    assert not [p for p in problems if "teacher.checkpoint" in p], problems
