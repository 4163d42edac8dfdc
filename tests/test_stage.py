"""spamgpt.stage: what every stage script shares at start-up and at exit."""

import ast
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import spamgpt

STAGES = sorted((Path(__file__).parents[1] / "stages").glob("*.py"))


@pytest.mark.parametrize("script", STAGES, ids=lambda p: p.stem)
def test_a_stage_script_imports_nothing_but_spamgpt_and_the_standard_library(script: Path) -> None:
    """Every heavy import comes through spamgpt, after spamgpt/__init__.py set the collector."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for top in {name.split(".")[0] for name in names} - {"spamgpt"}:
                assert top in sys.stdlib_module_names, f"{script.name} imports {top} itself"


SPY = (
    "import gc, sys\n"
    "print(gc.get_threshold()[0])\n"  # CPython's own
    "seen = {}\n"
    "class Spy:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        seen.setdefault(name, gc.get_threshold()[0])\n"
    "sys.meta_path.insert(0, Spy())\n"
    "import runpy\n"
    "runpy.run_path(sys.argv[1], run_name='imported')\n"
    "print(seen['torch'], seen['mlflow'], seen['sqlalchemy'], gc.get_threshold()[0])\n"
)


def test_torch_and_mlflow_are_imported_under_the_stage_collector_setting() -> None:
    """What finetune imports, recorded as it happens, in a process DVC runs as a stage (it sets
    DVC_STAGE): the collector's first threshold when torch, mlflow and sqlalchemy start to load."""
    finetune = next(s for s in STAGES if s.stem == "finetune")
    env = {**os.environ, "DVC_STAGE": "finetune"}
    out = subprocess.run(
        [sys.executable, "-c", SPY, str(finetune)], capture_output=True, text=True, check=True,
        env=env,
    )  # fmt: skip
    default, *seen = out.stdout.split()
    assert seen == [str(spamgpt.COLLECT_EVERY)] * 4
    assert int(default) < spamgpt.COLLECT_EVERY


def test_importing_spamgpt_outside_a_stage_leaves_the_collector_alone() -> None:
    """A notebook, `spamgpt classify`, the served model: CPython's setting, or their own."""
    code = "import gc; t = gc.get_threshold(); import spamgpt; print(gc.get_threshold() == t)"
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["True"]


def test_a_stage_process_freezes_its_objects_before_the_final_collection() -> None:
    """An exit handler registered before skip_exit_collection runs after it (handlers run last
    in, first out) and sees every object frozen: the interpreter's last collection skips them."""
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
        "from spamgpt import stage\n"
        "stage.skip_exit_collection()\n"
        "print('before', gc.get_freeze_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, frozen = (int(line.split()[1]) for line in out.stdout.splitlines())
    assert before == 0 and frozen > 10_000  # the imports' objects


def test_a_stage_writes_the_timeline_of_its_phases(tmp_path: Path, monkeypatch) -> None:
    """stage.run: imports (from the process's start), params, then the phases main() names,
    each starting where the one before ended, in reports/timelines/<stage>.json; a phase
    named twice adds up in the MLflow metrics."""
    from spamgpt import stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stage, "PHASES", [("imports", 0.0)])
    monkeypatch.setattr(stage, "NAME", "example")
    monkeypatch.setattr(stage.params_module, "load", lambda: "params")
    logged = {}

    def main(params: str) -> None:
        assert params == "params"
        for name in ("load", "train", "load"):
            stage.phase(name)
            time.sleep(0.05)
        logged.update(stage.timeline_metrics())

    stage.run(main)
    written = json.loads((tmp_path / "reports/timelines/example.json").read_text())
    phases = written["phases"]
    assert written["stage"] == "example"
    assert [p["phase"] for p in phases] == ["imports", "params", "main", "load", "train", "load"]
    assert phases[0]["start_s"] == 0 and phases[0]["seconds"] > 0  # this process's imports
    for p, after in itertools.pairwise(phases):
        assert p["start_s"] + p["seconds"] == pytest.approx(after["start_s"], abs=2e-3)
    assert all(p["seconds"] >= 0.05 for p in phases[3:5])  # slept in each
    assert logged["timeline/example/load_s"] >= 0.1  # both load phases
    assert set(logged) == {f"timeline/example/{p['phase']}_s" for p in phases}
