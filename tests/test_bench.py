"""bench/: each benchmark script runs from a clone alone in its tiny mode (random weights from
spamgpt.random_hub, generated messages, nothing downloaded) and prints the figures it is for.
The figures' values are the benchmarks' business (docs/benchmarks.md), not the tests'."""

import json
import re
import subprocess
import sys

from conftest import REPO, subprocess_env


def run_bench(script: str, *args: str) -> str:
    """The script's stdout; the test fails with its output if it exits non-zero."""
    # Threads that sleep while they wait: the tests share their cores (docs/how-it-is-fast.md).
    env = {**subprocess_env(), "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--tiny", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


def test_finetune_speed() -> None:
    out = run_bench("finetune_speed.py")
    assert number(r"\(a\) naive loop: ([\d.]+) training samples/s over 16 samples", out) > 0
    assert number(r"epochs after the first: ([\d.]+) samples/s", out) > 0
    assert number(r"classify: ([\d.]+) messages/s over the (?:\d+) test messages", out) > 0
    assert number(r"^ratio: ([\d.]+)$", out.splitlines()[-1]) > 0


def test_stage_imports() -> None:
    out = run_bench("stage_imports.py")
    ours = number(r"^split: ([\d.]+) s with ", out)
    default = number(r"([\d.]+) s with CPython's default", out)
    assert ours > 0 and default > 0


def test_scale() -> None:
    out = run_bench("scale.py")
    rows = re.findall(r"^\s+300 (\w+)\s+([\d.]+)\s+(\d+)$", out, re.MULTILINE)
    stages = [stage for stage, _, _ in rows]
    assert stages == [
        "download_data", "download_weights", "split", "baseline", "loaders", "trunk", "audit",
        "finetune", "evaluate",
    ]  # fmt: skip
    assert all(float(seconds) > 0 and int(peak) > 0 for _, seconds, peak in rows)
    assert "sizes: 300" in out
    assert number(r"rss_ratio: ([\d.]+)", out) == 1.0  # one size: over itself


def test_pipeline_time() -> None:
    out = run_bench("pipeline_time.py")
    for step in ("download, split, baseline, loaders", "trunk", "audit", "finetune", "evaluate"):
        assert number(rf"^{step}: (\d+) s, peak RSS \d+ MB$", out) >= 0
    outside = number(r"experiment outside training: ([\d.]+) s", out)
    wall = number(r"\(([\d.]+) s wall - ", out)
    assert 0 < outside < wall
    assert number(r"grows mlartifacts \+ mlflow.db \+ .dvc/cache by ([\d.]+) MB", out) > 0


def test_predict() -> None:
    out = run_bench("predict.py", "--device", "cpu")
    *cases, summary = (json.loads(line) for line in out.splitlines() if line.startswith("{"))
    (case,) = cases
    assert case["messages"] == 500 and case["predict_per_s"] > 0 and case["classify_per_s"] > 0
    assert summary["speed_ratios"] == {"tiny-500": case["speed_ratio"]}


def test_onnx_int8() -> None:
    out = run_bench("onnx_int8.py", "--messages", "5", "--rounds", "1")
    for variant in ("pytorch fp32", "onnx fp32", "onnx int8", "onnx int8 per-channel"):
        assert number(rf"^{variant}: ([\d.]+) messages/s at batch 1$", out) > 0
    assert number(r"^int8 over pytorch fp32: ([\d.]+)x$", out) > 0
    for variant in ("onnx int8", "onnx int8 per-channel"):
        gap = rf"^largest \|{variant} - pytorch fp32\| probability: ([\d.]+)$"
        assert number(gap, out) < 0.05


def test_serve() -> None:
    out = run_bench("serve.py")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    servers = {r["server"] for r in rows}
    assert len(servers) == 3 and any(s.startswith("mlflow models serve") for s in servers)
    assert any("--onnx" in s and "(int8)" in s for s in servers)
    assert {r["load"] for r in rows} == {"1 msg x 1", "1 msg x 16", "64 msg x 4"}
    for r in rows:
        assert r["requests"] > 0 and r["lost"] == 0 and r["wrong"] == 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["messages_per_s"] > 0
    assert (
        out.splitlines()[-1]
        == "no request lost, every PyTorch and ONNX fp32 answer as classify's: yes"
    )
