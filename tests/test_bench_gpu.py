"""bench/gpu.sh, the GPU check, in its CPU mode: the steps a CPU can run, end to end, and the
summary a run on a card will be read from. The full CPU mode runs every step in minutes; this
test picks the parameter error's step (a real pipeline project, its stages run) and two GPU-only
steps, which must be recorded as skipped."""

import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import REPO, run, sms_collection, subprocess_env

GPU_SH = REPO / "bench/gpu.sh"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench/gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STEPS = "devices_error,pytest_cuda,fp16"
CPU_MODE_TEST = "test_cpu_mode_records_the_parameter_error_and_skips_what_needs_a_gpu"


@pytest.fixture(scope="module", autouse=True)
def cpu_mode(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Future[subprocess.CompletedProcess]] | None]:
    """bench/gpu.sh --cpu-tiny over STEPS, started in the background as the module begins:
    mostly Python start-ups on one core, it runs beside the tests before its own, the last
    (conftest's `reproduced` is made for one of them). (its folder, the run to come); None when
    its test is not selected."""
    selected = request.session.items
    if not any(i.module is request.module and i.name == CPU_MODE_TEST for i in selected):
        yield None
        return
    folder = tmp_path_factory.mktemp("cpu-mode")
    data, out = folder / "SMSSpamCollection", folder / "out"
    data.write_bytes(sms_collection())
    cmd = [GPU_SH, "--cpu-tiny", "--data", data, "--out", out, "--work", folder / "work"]
    env = {**subprocess_env(), "PYTHON": sys.executable}
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield folder, pool.submit(run, [*map(str, cmd), "--steps", STEPS], folder, env=env)


def test_bad_data_file_is_one_line_before_any_work(tmp_path: Path) -> None:
    env = {**subprocess_env(), "PYTHON": sys.executable}
    missing = tmp_path / "nope.txt"
    result = run(
        [str(GPU_SH), "--cpu-tiny", "--data", str(missing)], tmp_path, check=False, env=env
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"--data {missing}: No such file or directory; give a file of label<TAB>text lines"
    ]
    assert not (tmp_path / "gpu-bench").exists()


def test_stage_seconds_run_from_each_running_stage_line_to_the_next() -> None:
    """DVC prints "Running stage 'x':" as a stage starts; its time ends where the next starts,
    the last one's where the command ends."""
    bench = load_bench()
    lines = [
        (0.5, "Verifying data sources in stage: 'data/local.dvc'"),
        (1.0, "Running stage 'trunk':"),
        (1.1, "> python stages/trunk.py"),
        (4.0, "Running stage 'finetune':"),
        (9.5, "Updating lock file 'dvc.lock'"),
    ]
    assert bench.Ran(0, lines, 10.0).stage_seconds() == {"trunk": 3.0, "finetune": 6.0}


def test_targets_compare_the_measured_figures_with_the_issue_s_bounds() -> None:
    bench = load_bench()
    steps = {
        "repro": {"train": {"samples_per_second": 5100.0}, "trunk_finetune_evaluate_s": 41.0},
        "exp_lr": {"wall_s": 29.0},
        "full_b32": {"samples_per_second": 2900.0, "profile": {"kernel_share_of_wall": 0.6}},
        "hf_anchor": {"spamgpt_full_b32_ratio": 4.5},
        "pytest_cuda": {"status": "ok"},
    }
    met = {t["target"]: (t["value"], t["met"]) for t in bench.targets(steps, "gpu")}
    assert met == {
        "default recipe training samples/s >= 5000": (5100.0, True),
        "full fine-tune batch 32 training samples/s >= 3000": (2900.0, False),
        "full fine-tune batch 32 / plain Hugging Face loop >= 5": (4.5, False),
        "profiled full fine-tune step: kernels' share of wall >= 0.5": (0.6, True),
        "dvc repro trunk + finetune + evaluate s <= 40": (41.0, False),
        "lr-only dvc exp run wall s <= 30": (29.0, True),
        "spamgpt predict rows/s beyond start-up >= 20000": (None, None),
        "pytest -m cuda passes": ("ok", True),
    }


def test_cpu_tiny_predict_rows_hf_anchor_and_timelines(reproduced, tmp_path: Path) -> None:
    """The steps that read the repro step's project, on conftest's tiny pipeline: spamgpt
    predict over many rows and over one, the plain Hugging Face loop with spamgpt's ratio to
    it, and each stage's phase timeline."""
    module = load_bench()
    project = reproduced.copy(tmp_path / "project")
    data = tmp_path / "SMSSpamCollection"
    data.write_bytes(sms_collection())
    args = module.parse_args(
        ["--cpu-tiny", "--data", str(data), "--out", str(tmp_path / "out"), "--predict-rows", "300"]
    )
    (tmp_path / "out").mkdir()
    machine = {"device": "cpu: test", "torch": torch.__version__}
    bench = module.Bench(args, "cpu-tiny", tmp_path / "out", tmp_path, machine, time.monotonic())
    bench.projects["repro"] = project
    bench.summary = {"steps": {"full_b32": {"samples_per_second": 12.0}}}
    steps = {s.name: s for s in module.STEPS}
    for name in ("predict_rows", "hf_anchor"):
        module.run_step(bench, steps[name])
    rows, anchor = (bench.summary["steps"][n] for n in ("predict_rows", "hf_anchor"))
    assert rows["status"] == "ok", rows
    assert rows["rows"] == 300 and rows["wall_s"] > 0 and rows["one_row_wall_s"] > 0
    assert anchor["status"] == "ok", anchor
    assert (anchor["batch_size"], anchor["precision"], anchor["steps"]) == (32, "fp32", 3)
    assert anchor["spamgpt_full_b32_ratio"] == round(12.0 / anchor["samples_per_second"], 2)
    timelines = module.stage_timelines(project)
    assert set(timelines) == {
        "download_data", "download_weights", "split", "baseline", "loaders", "trunk",
        "audit", "finetune", "evaluate",
    }  # fmt: skip
    assert all(t["imports"] > 0 for t in timelines.values())
    assert {"load", "train", "save", "log"} <= set(timelines["finetune"])


def test_cpu_mode_records_the_parameter_error_and_skips_what_needs_a_gpu(cpu_mode) -> None:
    tmp_path, started = cpu_mode
    out, steps = tmp_path / "out", STEPS
    result = started.result()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "cpu-tiny" and summary["finished"] is True
    machine = summary["machine"]
    assert machine["torch"] == torch.__version__ and machine["device"].startswith("cpu")
    assert list(summary["steps"]) == steps.split(",")  # only those, in the table's order
    on = f"{machine['device']}, torch {torch.__version__}"
    assert all(record["on"] == on for record in summary["steps"].values())

    devices = summary["steps"]["devices_error"]
    assert devices["status"] == "ok", devices
    assert (devices["param"], devices["value"]) == ("train.device", "cuda")
    for stage in ("trunk", "finetune"):
        assert devices[stage]["exit"] == 2
        assert devices[stage]["output"] == [
            "error: train.device: cuda is not available on this machine; allowed here: auto, cpu"
        ]
        assert devices[stage]["wall_s"] > 0
    assert devices["step_s"] >= devices["trunk"]["wall_s"] + devices["finetune"]["wall_s"]
    for name in ("pytest_cuda", "fp16"):
        assert summary["steps"][name] == {
            "on": on,
            "status": "skipped",
            "reason": "needs a CUDA GPU",
        }
    assert summary["setup"]["hub_s"] > 0
    measured = {t["target"]: (t["value"], t["met"]) for t in summary["targets"]}
    assert measured.pop("pytest -m cuda passes") == ("skipped", None)
    assert set(measured.values()) == {(None, None)}  # nothing measured in these steps

    log = (out / "gpu.log").read_text()
    assert "stages/trunk.py" in log and "error: train.device: cuda" in log
    assert "failed: none" in result.stdout
    assert not (tmp_path / "work/devices_error").exists()  # dropped once done (no --keep)
