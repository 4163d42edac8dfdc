"""Where tensors are computed: train.device auto, bf16 where the hardware has it, all cores."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import REPO

from spamgpt import runtime

CPU = torch.device("cpu")


def cpu_flags() -> set[str] | None:
    """The x86 CPU's feature flags as the kernel reports them; None where there are none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    lines = [line for line in text.splitlines() if line.startswith("flags")]
    return set(lines[0].split(":", 1)[1].split()) if lines else None


FLAGS = cpu_flags()
NATIVE_BF16 = bool(FLAGS and FLAGS & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_device_auto_picks_cuda_then_mps_then_cpu(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert runtime.resolve_device("auto") == torch.device(expected)


def test_precision_auto_is_bf16_where_the_cpu_flags_say_so() -> None:
    if FLAGS is None:
        pytest.skip("no flags line in /proc/cpuinfo (not Linux on x86) to check against")
    expected = "bf16" if NATIVE_BF16 else "fp32"
    assert runtime.resolve_precision("auto", CPU) == expected
    assert runtime.resolve_precision("fp32", CPU) == "fp32"


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [
        ({"avx512_f": True, "avx512_bw": True, "avx512_bf16": False}, "fp32"),  # emulated
        ({"avx512_f": True, "avx512_bf16": True}, "bf16"),
        ({"amx_bf16": True}, "bf16"),
        ({"avx2": True}, "fp32"),
    ],
)
def test_precision_auto_on_a_cpu_with_these_capabilities(
    monkeypatch: pytest.MonkeyPatch, capabilities: dict, expected: str
) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert runtime.resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize("supported", [True, False])
def test_precision_auto_on_a_gpu_follows_its_bf16_support(
    monkeypatch: pytest.MonkeyPatch, supported: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
    expected = "bf16" if supported else "fp32"
    assert runtime.resolve_precision("auto", torch.device("cuda")) == expected


@pytest.fixture
def threads() -> Iterator[None]:
    """torch's thread count is process-wide: put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_use_all_cores_takes_the_cores_this_process_may_use(threads: None) -> None:
    assert runtime.use_all_cores() == len(os.sched_getaffinity(0)) == torch.get_num_threads()


@pytest.mark.parametrize(("processes", "expected"), [(1, 6), (2, 3), (4, 1), (8, 1)])
def test_use_all_cores_shares_them_between_processes(
    monkeypatch: pytest.MonkeyPatch, threads: None, processes: int, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    assert runtime.use_all_cores(processes) == expected == torch.get_num_threads()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_use_all_cores_follows_the_cpu_affinity() -> None:
    """A process pinned to one core (taskset, a container's cpuset) uses one thread."""
    core = min(os.sched_getaffinity(0))
    code = (
        f"import os; os.sched_setaffinity(0, {{{core}}}); "
        "from spamgpt import runtime; print(runtime.use_all_cores())"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["1"], out.stderr[-2000:]
