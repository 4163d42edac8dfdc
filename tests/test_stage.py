"""spamgpt.stage: what every stage script shares at start-up and at exit."""

import ast
import errno
import io
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


def fake_proc(monkeypatch: pytest.MonkeyPatch, stat: str, uptime: str) -> None:
    """stage's open() of /proc/self/stat and /proc/uptime reads these contents instead."""
    from spamgpt import stage

    contents = {"/proc/self/stat": stat.encode(), "/proc/uptime": uptime.encode()}

    def fake_open(path: str, encoding: str | None = None) -> io.TextIOWrapper:
        if path not in contents:
            raise FileNotFoundError(path)
        return io.TextIOWrapper(io.BytesIO(contents[path]), encoding=encoding)

    monkeypatch.setattr(stage, "open", fake_open, raising=False)


def stat_line(start_ticks: int) -> str:
    """/proc/self/stat: pid, (name), then fields 3-52; field 22 is the start in clock ticks. A
    name may hold ') ': the fields start after the last ')'."""
    fields = [str(i) for i in range(3, 53)]
    fields[22 - 3] = str(start_ticks)
    return "4321 (a) b) " + " ".join(fields) + "\n"


def test_the_process_start_is_its_age_before_now(monkeypatch) -> None:
    """Started 50.5 s after boot, now 100.25 s after it: 49.75 s before now."""
    from spamgpt import stage

    fake_proc(monkeypatch, stat_line(int(50.5 * os.sysconf("SC_CLK_TCK"))), "100.25 7.5\n")
    before = time.perf_counter()
    started = stage.process_started()
    after = time.perf_counter()
    assert before - 49.75 <= started <= after - 49.75


def test_a_start_after_the_uptime_clock_is_now(monkeypatch) -> None:
    """A start past the uptime (the clocks' rounding): 0 s old, never in the future."""
    from spamgpt import stage

    fake_proc(monkeypatch, stat_line(20 * os.sysconf("SC_CLK_TCK")), "10.0 7.5\n")
    before = time.perf_counter()
    started = stage.process_started()
    assert before <= started <= time.perf_counter()


def test_unreadable_proc_files_give_now(monkeypatch) -> None:
    from spamgpt import stage

    fake_proc(monkeypatch, "4321 (python) S 1\n", "10.0 7.5\n")  # too few fields
    before = time.perf_counter()
    assert before <= stage.process_started() <= time.perf_counter()


def test_timeline_rounds_each_phase_to_the_millisecond(monkeypatch) -> None:
    from spamgpt import stage

    monkeypatch.setattr(stage, "PHASES", [("imports", 0.0), ("params", 0.12345), ("main", 0.5)])
    monkeypatch.setattr(stage, "STARTED", time.perf_counter() - 0.75)
    before = time.perf_counter() - stage.STARTED
    phases = stage.timeline()
    after = time.perf_counter() - stage.STARTED
    assert phases[:2] == [
        {"phase": "imports", "start_s": 0.0, "seconds": 0.123},
        {"phase": "params", "start_s": 0.123, "seconds": 0.377},
    ]
    last = phases[2]
    assert (last["phase"], last["start_s"]) == ("main", 0.5)
    assert round(before, 3) <= last["start_s"] + last["seconds"] <= round(after, 3) + 1e-9


def test_timeline_metrics_add_up_a_phase_named_twice(monkeypatch) -> None:
    from spamgpt import stage

    entries = [("load", 0.1234), ("train", 0.0004), ("load", 0.2)]
    entries = [{"phase": p, "start_s": 0.0, "seconds": s} for p, s in entries]
    monkeypatch.setattr(stage, "NAME", "example")
    monkeypatch.setattr(stage, "timeline", lambda: entries)
    assert stage.timeline_metrics() == {
        "timeline/example/load_s": 0.323,
        "timeline/example/train_s": 0.0,
    }


@pytest.fixture
def stage_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """stage.run in this process, in tmp_path, its params loaded as "params"; the signal
    handlers, the signal record and the root logger's level put back afterwards."""
    import logging
    import signal

    from spamgpt import interrupts, stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(stage, "PHASES", [("imports", 0.0)])
    monkeypatch.setattr(stage, "NAME", "example")
    monkeypatch.setattr(stage.params_module, "load", lambda: "params")
    monkeypatch.setattr(interrupts, "_received", [])
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    handlers = {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}
    yield stage.run
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def exits(run, main) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        run(main)
    return exited.value.code


def raising(error: BaseException):
    def main(params: str) -> None:
        raise error

    return main


def test_a_stage_logs_its_name_and_message_at_info_to_stderr(stage_run, capsys, monkeypatch):
    import logging

    from spamgpt import stage

    monkeypatch.setattr(logging.root, "handlers", [])  # pytest's: basicConfig would add none
    stage_run(lambda params: stage.log.info("read %d rows", 3))
    assert capsys.readouterr().err == "spamgpt: read 3 rows\n"
    assert logging.root.level == logging.INFO


def test_user_errors_are_one_line_and_their_exit_code(stage_run, capsys) -> None:
    from spamgpt.errors import ParamsError, SpamGPTError

    assert exits(stage_run, raising(SpamGPTError("data.url: no such file"))) == 1
    assert capsys.readouterr().err == "error: data.url: no such file\n"
    assert exits(stage_run, raising(ParamsError("train.lr: must be > 0"))) == 2
    assert capsys.readouterr().err == "error: train.lr: must be > 0\n"


def test_os_errors_name_the_file_and_exit_1(stage_run, capsys) -> None:
    disk_full = OSError(errno.ENOSPC, "No space left on device", "metrics/eval.json")
    assert exits(stage_run, raising(disk_full)) == 1
    assert capsys.readouterr().err == "error: metrics/eval.json: No space left on device\n"
    assert exits(stage_run, raising(OSError("device gone"))) == 1  # no file, no strerror
    assert capsys.readouterr().err == "error: device gone\n"


def test_interrupts_exit_130_naming_the_signal(stage_run, capsys) -> None:
    from spamgpt import interrupts

    assert exits(stage_run, raising(KeyboardInterrupt("SIGTERM"))) == 130
    assert capsys.readouterr().err == "interrupted (SIGTERM)\n"
    assert exits(stage_run, raising(KeyboardInterrupt())) == 130  # Python's own Ctrl-C
    assert capsys.readouterr().err == "interrupted (SIGINT)\n"
    interrupts._received.append("SIGTERM")  # an error after a signal: its consequence
    assert exits(stage_run, raising(ValueError("interrupted load"))) == 130
    assert capsys.readouterr().err == "interrupted (SIGTERM)\n"


def test_a_bug_keeps_its_traceback(stage_run) -> None:
    with pytest.raises(ZeroDivisionError):
        stage_run(raising(ZeroDivisionError()))


def test_only_rank_0_writes_the_timeline(stage_run, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    stage_run(lambda params: None)
    assert not (tmp_path / "reports").exists()
