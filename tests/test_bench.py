"""bench/: each benchmark script runs from a clone alone in its tiny mode (random weights from
spamgpt.random_hub, generated messages, nothing downloaded) and prints the figures it is for.
The figures' values are the benchmarks' business (docs/benchmarks.md), not the tests'."""

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from conftest import REPO, subprocess_env

# Each test's script and arguments, the longest-running first. A script is mostly Python
# start-ups and imports, on one core: two at a time keep both cores of a CI machine busy.
BENCHES = {
    "test_pipeline_time": ("pipeline_time.py",),
    "test_scale": ("scale.py",),
    "test_serve": ("serve.py",),
    "test_onnx_int8": ("onnx_int8.py", "--messages", "5", "--rounds", "1"),
    "test_onnx_batching": ("onnx_batching.py", "--messages", "6", "--rounds", "1"),
    "test_predict": ("predict.py", "--device", "cpu"),
    "test_finetune_speed": ("finetune_speed.py",),
    "test_stage_imports": ("stage_imports.py",),
}


def run_bench(script: str, *args: str) -> str:
    """The script's stdout; the test fails with its output if it exits non-zero."""
    env = {**subprocess_env(), "PYTHONPATH": str(REPO)}  # OMP_WAIT_POLICY=PASSIVE among them
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--tiny", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def bench_output(request: pytest.FixtureRequest) -> Iterator[dict[str, Future]]:
    """The scripts of the module's selected tests, started together, two at a time: {test
    name: its script's stdout, to come}. A script's failure fails its own test; a test's
    duration (--durations) counts its wait for the scripts started before its own."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_bench, *bench)
            for name, bench in BENCHES.items()
            if name in selected
        }
        yield futures
        for future in futures.values():
            future.cancel()  # those not started yet, when a test stopped the session (-x)


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


def test_finetune_speed(bench_output: dict[str, Future]) -> None:
    out = bench_output["test_finetune_speed"].result()
    assert number(r"\(a\) naive loop: ([\d.]+) training samples/s over 16 samples", out) > 0
    assert number(r"epochs after the first: ([\d.]+) samples/s", out) > 0
    assert number(r"classify: ([\d.]+) messages/s over the (?:\d+) test messages", out) > 0
    assert number(r"^ratio: ([\d.]+)$", out.splitlines()[-1]) > 0


def test_stage_imports(bench_output: dict[str, Future]) -> None:
    out = bench_output["test_stage_imports"].result()
    ours = number(r"^split: ([\d.]+) s with ", out)
    default = number(r"([\d.]+) s with CPython's default", out)
    assert ours > 0 and default > 0


def test_scale(bench_output: dict[str, Future]) -> None:
    out = bench_output["test_scale"].result()
    rows = re.findall(r"^\s+300 (\w+)\s+([\d.]+)\s+(\d+)$", out, re.MULTILINE)
    stages = [stage for stage, _, _ in rows]
    assert stages == [
        "download_data", "download_weights", "split", "baseline", "loaders", "trunk", "audit",
        "finetune", "evaluate",
    ]  # fmt: skip
    assert all(float(seconds) > 0 and int(peak) > 0 for _, seconds, peak in rows)
    assert "sizes: 300" in out
    assert number(r"rss_ratio: ([\d.]+)", out) == 1.0  # one size: over itself


def test_pipeline_time(bench_output: dict[str, Future]) -> None:
    out = bench_output["test_pipeline_time"].result()
    for step in ("download, split, baseline, loaders", "trunk", "audit", "finetune", "evaluate"):
        assert number(rf"^{step}: (\d+) s, peak RSS \d+ MB$", out) >= 0
    outside = number(r"experiment outside training: ([\d.]+) s", out)
    wall = number(r"\(([\d.]+) s wall - ", out)
    assert 0 < outside < wall
    assert number(r"grows mlartifacts \+ mlflow.db \+ .dvc/cache by ([\d.]+) MB", out) > 0


def test_predict(bench_output: dict[str, Future]) -> None:
    out = bench_output["test_predict"].result()
    *cases, summary = (json.loads(line) for line in out.splitlines() if line.startswith("{"))
    (case,) = cases
    assert case["messages"] == 500 and case["predict_per_s"] > 0 and case["classify_per_s"] > 0
    assert summary["speed_ratios"] == {"tiny-500": case["speed_ratio"]}


def test_onnx_int8(bench_output: dict[str, Future]) -> None:
    out = bench_output["test_onnx_int8"].result()
    int8 = ("onnx int8 (the export's)", "onnx int8 per tensor, every MatMul (the export's before)")
    for variant in ("pytorch fp32", "onnx fp32", *int8):
        assert number(rf"^{re.escape(variant)}: ([\d.]+) messages/s at batch 1$", out) > 0
    for variant in int8:
        assert number(rf"^{re.escape(variant)} over pytorch fp32: ([\d.]+)x$", out) > 0
        gap = rf"^largest \|{re.escape(variant)} - pytorch fp32\| probability: ([\d.]+)$"
        assert number(gap, out) < 0.05


def test_serve(bench_output: dict[str, Future]) -> None:
    out = bench_output["test_serve"].result()
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    servers = {r["server"] for r in rows}
    assert len(servers) == 3 and any(s.startswith("mlflow models serve") for s in servers)
    assert any("--onnx" in s and "(int8)" in s for s in servers)
    assert {r["load"] for r in rows} == {"1 msg x 1", "1 msg x 16", "64 msg x 4"}
    for r in rows:
        assert r["requests"] > 0 and r["lost"] == 0 and r["wrong"] == 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["messages_per_s"] > 0
        # messages per engine call, from spamgpt serve's batch log (MLflow's logs none)
        ours = r["server"].startswith("spamgpt serve")
        assert (r["messages_per_call"] is not None) == ours
        if ours:
            assert r["messages_per_call"] >= (64 if r["load"] == "64 msg x 4" else 1)
        assert (r["cpu_ms_per_message"] is not None) == ours
        if ours:
            assert r["cpu_ms_per_message"] > 0
        # the server's process tree and the client: every server parses and answers HTTP
        assert r["server_cpu_ms_per_message"] > 0 and r["client_cpu_ms_per_message"] >= 0
        if r["load"] != "64 msg x 4":  # a request a message: the client's JSON and HTTP
            assert r["client_cpu_ms_per_message"] > 0
    assert (
        out.splitlines()[-1]
        == "no request lost, every answer as classify's (int8: as the graph's in one call): yes"
    )


def test_onnx_batching(bench_output: dict[str, Future]) -> None:
    out = bench_output["test_onnx_batching"].result()
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| fp32") or
            line.startswith("| int8")]  # fmt: skip
    paths = ["one", "batched 1024", "batched 256", "batched 1024, one width"]
    assert [r[1] for r in rows] == paths * 3
    assert all(float(r[4]) > 0 and float(r[5].rstrip(" |")) > 0 for r in rows)
    # int8 (per-row activation scales): a message's answer is the same in any batch
    assert number(r"^int8: largest \|batched - one\| probability ([\d.e-]+)$", out) < 1e-5
    assert number(r"^fp32: largest \|batched - one\| probability ([\d.e-]+)$", out) < 1e-5
