"""spamgpt.stage: what every stage script shares at start-up and at exit."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from spamgpt import stage

STAGES = sorted((Path(__file__).parents[1] / "stages").glob("*.py"))


@pytest.mark.parametrize("script", STAGES, ids=lambda p: p.stem)
def test_a_stage_script_imports_stage_before_anything_else(script: Path) -> None:
    first = ast.parse(script.read_text()).body[1]  # after the docstring
    assert isinstance(first, ast.ImportFrom) and first.module == "spamgpt"
    assert [a.name for a in first.names] == ["stage"]


def test_torch_and_mlflow_are_imported_under_the_stage_collector_setting() -> None:
    """What finetune imports, recorded as it happens: the collector's first threshold when
    torch, mlflow and sqlalchemy start to load."""
    finetune = next(s for s in STAGES if s.stem == "finetune")
    code = (
        "import gc, sys\n"
        "seen = {}\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        seen.setdefault(name, gc.get_threshold()[0])\n"
        "sys.meta_path.insert(0, Spy())\n"
        "import runpy\n"
        f"runpy.run_path({str(finetune)!r}, run_name='imported')\n"
        "print(seen['torch'], seen['mlflow'], seen['sqlalchemy'], gc.get_threshold()[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(stage.COLLECT_EVERY)] * 4
    assert stage.COLLECT_EVERY > 700  # CPython's default


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
