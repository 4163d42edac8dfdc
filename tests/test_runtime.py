"""Where and how tensors are computed: train.device auto, precision auto picks what the device
computes natively (checked against the CPU's own flags too), fp16 stays close to fp32 with a
gradient scaler, what a machine cannot run is a one-line ParamsError, and all cores are used."""

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from spamgpt import runtime
from spamgpt.errors import ParamsError
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
MPS = torch.device("mps")


def tiny_classifier(root: Path) -> GPT2Classifier:
    torch.manual_seed(0)
    return GPT2Classifier(GPT2.from_pretrained(make_hub(root)))


def batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token ids (8, 24), lengths, labels) of a padded batch of messages, on `device`."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 500, (8, 24), generator=g)
    lengths = torch.randint(1, 25, (8,), generator=g)
    return idx.to(device), lengths.to(device), torch.tensor([0, 1] * 4, device=device)


@torch.no_grad()
def logits_in(model: GPT2Classifier, device: torch.device, precision: str) -> torch.Tensor:
    idx, lengths, _ = batch(device)
    with runtime.autocast(Compute(device, precision)):
        return model.eval()(idx, lengths).float().cpu()


def training_step(
    model: GPT2Classifier, device: torch.device, precision: str
) -> tuple[GPT2Classifier, torch.Tensor, float]:
    """One step of a copy of `model` as the trainer takes it (fused AdamW, grad clipping, the
    precision's scaler): (the stepped copy, its unscaled gradients flat on the CPU, the scale
    after the step; 1.0 without a scaler)."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = runtime.grad_scaler(Compute(device, precision))
    idx, lengths, labels = batch(device)
    with runtime.autocast(Compute(device, precision)):
        logits = model(idx, lengths)
    scaler.scale(F.cross_entropy(logits.float(), labels)).backward()
    scaler.unscale_(optimizer)  # before clipping: clip the true gradients
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    grads = torch.cat([p.grad.flatten().float().cpu() for p in model.parameters()])
    scaler.step(optimizer)
    scaler.update()
    return model, grads, scaler.get_scale() if scaler.is_enabled() else 1.0


def assert_step_close_to_fp32(
    model: GPT2Classifier, device: torch.device, precision: str, grad_error: float
) -> None:
    """The step in `precision` was taken (no overflow), and its gradients are those of fp32's
    step to within `grad_error` of their norm."""
    _, fp32_grads, _ = training_step(model, device, "fp32")
    stepped, grads, scale = training_step(model, device, precision)
    assert scale == runtime.grad_scaler(Compute(device, precision)).get_scale()  # no skip
    assert (grads - fp32_grads).norm() < grad_error * fp32_grads.norm()
    assert not torch.equal(grads, fp32_grads)  # autocast really ran in low precision
    before, after = dict(model.named_parameters()), dict(stepped.named_parameters())
    assert not torch.equal(before["head.weight"].cpu(), after["head.weight"].cpu())
    assert all(p.isfinite().all() for p in after.values())


def cpu_autocast_computes_fp16() -> bool:
    with torch.autocast("cpu", dtype=torch.float16):
        return torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float16


# --- precision: what auto picks ---


def fake_cuda_card(
    monkeypatch: pytest.MonkeyPatch, *, capability: tuple[int, int], native_bf16: bool
) -> None:
    """Make torch.cuda describe a card: bf16 natively (Ampere+) or only emulated (T4, V100)."""
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: native_bf16 or including_emulation,
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def fake_cpu(monkeypatch: pytest.MonkeyPatch, *, native_bf16: bool, native_fp16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": native_bf16})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: native_fp16)


def test_auto_is_bf16_on_a_card_that_computes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda_card(monkeypatch, capability=(9, 0), native_bf16=True)  # H100
    assert runtime.bf16_supported(CUDA)
    assert runtime.resolve_precision("auto", CUDA) == "bf16"


@pytest.mark.parametrize("capability", [(7, 5), (7, 0), (6, 0)], ids=["T4", "V100", "P100"])
def test_auto_is_fp16_where_bf16_is_emulated(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]
) -> None:
    fake_cuda_card(monkeypatch, capability=capability, native_bf16=False)
    assert not runtime.bf16_supported(CUDA)  # emulated bf16 does not count
    assert runtime.resolve_precision("auto", CUDA) == "fp16"


def test_auto_is_fp32_on_a_card_with_slow_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda_card(monkeypatch, capability=(6, 1), native_bf16=False)  # GTX 1080: fp16 at 1/64
    assert runtime.resolve_precision("auto", CUDA) == "fp32"
    assert runtime.resolve_precision("fp16", CUDA) == "fp16"  # asked for: slow, but it runs


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_on_a_cpu_is_bf16_where_native_else_fp32(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool
) -> None:
    fake_cpu(monkeypatch, native_bf16=native_bf16, native_fp16=True)
    assert runtime.resolve_precision("auto", CPU) == ("bf16" if native_bf16 else "fp32")


def test_auto_on_mps_is_fp32() -> None:
    assert runtime.resolve_precision("auto", MPS) == "fp32"


# --- precision: explicit choices ---


def test_explicit_choices_are_kept_where_they_run(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda_card(monkeypatch, capability=(7, 5), native_bf16=False)
    fake_cpu(monkeypatch, native_bf16=False, native_fp16=True)
    for device in (CPU, CUDA, MPS):
        assert runtime.resolve_precision("fp32", device) == "fp32"
        assert runtime.resolve_precision("fp16", device) == "fp16"
    assert runtime.resolve_precision("bf16", CPU) == "bf16"
    assert runtime.resolve_precision("bf16", CUDA) == "bf16"


@pytest.mark.parametrize(
    ("precision", "device", "allowed"),
    [("fp16", CPU, "auto, fp32, bf16"), ("bf16", MPS, "auto, fp32, fp16")],
    ids=["fp16-on-an-emulating-cpu", "bf16-on-mps"],
)
def test_what_the_device_cannot_run_is_refused(
    monkeypatch: pytest.MonkeyPatch, precision: str, device: torch.device, allowed: str
) -> None:
    fake_cpu(monkeypatch, native_bf16=True, native_fp16=False)
    with pytest.raises(ParamsError) as info:
        runtime.resolve_precision(precision, device)
    message = str(info.value)
    assert message.startswith(f"train.precision: {precision} ") and "\n" not in message
    assert message.endswith(f" {allowed}")  # says what is allowed


def test_autocast_computes_in_the_precisions_dtype() -> None:
    a = torch.ones(2, 2)
    expected = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if cpu_autocast_computes_fp16():
        expected["fp16"] = torch.float16
    for precision, dtype in expected.items():
        with runtime.autocast(Compute(CPU, precision)):
            assert torch.mm(a, a).dtype == dtype, precision


def test_only_fp16_scales_gradients() -> None:
    assert runtime.grad_scaler(Compute(CPU, "fp16")).is_enabled()
    assert not runtime.grad_scaler(Compute(CPU, "bf16")).is_enabled()
    assert not runtime.grad_scaler(Compute(CPU, "fp32")).is_enabled()


@pytest.mark.skipif(
    not cpu_autocast_computes_fp16(), reason="this torch's CPU autocast has no float16"
)
def test_fp16_stays_close_to_fp32_on_the_cpu(tmp_path: Path) -> None:
    """fp16 keeps 11 bits of mantissa: logits and gradients move by about 0.1%."""
    model = tiny_classifier(tmp_path)
    fp32, fp16 = logits_in(model, CPU, "fp32"), logits_in(model, CPU, "fp16")
    assert (fp16 - fp32).abs().max() < 1e-2 * fp32.abs().max()
    assert not torch.equal(fp16, fp32)
    assert_step_close_to_fp32(model, CPU, "fp16", grad_error=1e-2)


# --- train.devices ---


def test_more_processes_than_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ParamsError) as info:
        runtime.check_device_count(2, CUDA)
    message = str(info.value)
    assert message.startswith("train.devices: 2 processes need 2 GPUs, this machine has 1 visible")
    assert "\n" not in message
    runtime.check_device_count(1, CUDA)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    runtime.check_device_count(4, CUDA)
    with pytest.raises(ParamsError, match=r"has 4 visible; allowed here: 1 to 4$"):
        runtime.check_device_count(5, CUDA)


def test_mps_is_one_gpu() -> None:
    runtime.check_device_count(1, MPS)
    with pytest.raises(ParamsError, match=r"^train\.devices: 2 processes need 2 GPUs, this mach"):
        runtime.check_device_count(2, MPS)


def test_processes_on_the_cpu_need_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    runtime.check_device_count(4, CPU)


# --- checked against the CPU itself, and the device and threads ---


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


# --- pinned by mutation testing (tools/mutate.py runtime) ---


def test_an_explicit_device_must_be_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.resolve_device("cpu") == CPU and runtime.resolve_device("mps") == MPS
    with pytest.raises(ParamsError) as info:
        runtime.resolve_device("cuda")
    assert str(info.value) == (
        "train.device: cuda is not available on this machine; allowed here: auto, mps, cpu"
    )


def test_one_visible_gpu_allows_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ParamsError, match=r"has 1 visible; allowed here: 1$"):
        runtime.check_device_count(2, CUDA)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ParamsError, match=r"has 2 visible; allowed here: 1 to 2$"):
        runtime.check_device_count(3, CUDA)


def test_the_refusals_say_why_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cpu(monkeypatch, native_bf16=False, native_fp16=False)
    with pytest.raises(ParamsError) as info:
        runtime.resolve_precision("fp16", CPU)
    assert str(info.value) == (
        "train.precision: fp16 on this CPU would be emulated, several times slower than fp32 "
        "(it has no AVX512-FP16 or AMX-FP16); allowed here: auto, fp32, bf16"
    )
    with pytest.raises(ParamsError) as info:
        runtime.resolve_precision("bf16", MPS)
    assert str(info.value) == (
        "train.precision: bf16 is not supported on mps; allowed: auto, fp32, fp16"
    )
    assert runtime.resolve_precision("bf16", CPU) == "bf16"  # emulated, but asked for: it runs


def test_fp16_is_allowed_on_a_cpu_that_computes_it_and_on_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_cpu(monkeypatch, native_bf16=False, native_fp16=True)
    assert runtime.fp16_allowed(CPU) and runtime.fp16_allowed(CUDA) and runtime.fp16_allowed(MPS)
    fake_cpu(monkeypatch, native_bf16=False, native_fp16=False)
    assert not runtime.fp16_allowed(CPU)
    assert not runtime.fp16_allowed(torch.device("meta"))  # neither a CPU nor a GPU


def test_an_arm_cpu_with_bf16_computes_it_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"asimd": True, "bf16": True})
    assert runtime.bf16_supported(CPU)
    assert not runtime.bf16_supported(MPS)  # mps: fp32 (bf16 refused there)


@pytest.mark.parametrize(
    ("capability", "fast"),
    [((8, 0), True), ((7, 0), True), ((6, 0), True), ((6, 1), False), ((5, 2), False)],
)
def test_fp16_is_fast_from_the_v100_on_and_on_the_p100(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], fast: bool
) -> None:
    seen = []
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device=None: seen.append(device) or capability
    )
    assert runtime.fp16_fast_on_cuda(CUDA) is fast
    assert seen == [CUDA]  # the card asked about, not the current one


def test_to_device_on_the_cpu_is_the_tensor_there() -> None:
    """On the CPU, no pinned memory (it needs an accelerator): the tensor, the same values."""
    tensor = torch.arange(6).reshape(2, 3)
    moved = runtime.to_device(tensor, CPU)
    assert moved.device == CPU and torch.equal(moved, tensor)


def test_use_all_cores_without_an_affinity_counts_the_cpus(
    monkeypatch: pytest.MonkeyPatch, threads: None
) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert runtime.use_all_cores(2) == 2 == torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one thread
    assert runtime.use_all_cores() == 1 == torch.get_num_threads()


def test_setup_resolves_device_precision_and_threads(
    monkeypatch: pytest.MonkeyPatch, threads: None, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    fake_cpu(monkeypatch, native_bf16=True, native_fp16=False)
    with caplog.at_level("INFO", logger="spamgpt.runtime"):
        assert runtime.setup("auto", "auto", processes=2) == Compute(CPU, "bf16")
    assert torch.get_num_threads() == 3
    assert caplog.messages == ["cpu, bf16, 3 threads"]
    assert runtime.setup("cpu", "fp32", max_tokens=512) == Compute(CPU, "fp32", 512)
    assert torch.get_num_threads() == 6
    with pytest.raises(ParamsError, match=r"^train\.precision: fp16 on this CPU"):
        runtime.setup("cpu", "fp16")


def test_setup_names_the_flags_a_command_took_the_values_from(
    monkeypatch: pytest.MonkeyPatch, threads: None
) -> None:
    """spamgpt classify, predict and serve pass runtime.FLAGS: their errors name --device and
    --precision, the stages' name train.device and train.precision."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    fake_cpu(monkeypatch, native_bf16=False, native_fp16=False)
    refusals = {
        ("cuda", "fp32"): "{}: cuda is not available on this machine; allowed here: auto, mps, cpu",
        ("cpu", "fp16"): "{}: fp16 on this CPU would be emulated, several times slower than fp32 "
        "(it has no AVX512-FP16 or AMX-FP16); allowed here: auto, fp32, bf16",
        ("mps", "bf16"): "{}: bf16 is not supported on mps; allowed: auto, fp32, fp16",
    }
    for (device, precision), message in refusals.items():
        setting = "--device" if device == "cuda" else "--precision"
        with pytest.raises(ParamsError) as info:
            runtime.setup(device, precision, settings=runtime.FLAGS)
        assert str(info.value) == message.format(setting)
        with pytest.raises(ParamsError) as info:
            runtime.setup(device, precision)
        assert str(info.value) == message.format(f"train.{setting[2:]}")
    assert runtime.FLAGS == ("--device", "--precision")
    assert runtime.PARAMS == ("train.device", "train.precision")


def test_a_compute_moves_to_another_device_keeping_the_rest() -> None:
    """Under torchrun each process takes its own GPU (distributed.setup): Compute.on."""
    first = Compute(torch.device("cuda", 0), "bf16", 4096)
    assert first.on(torch.device("cuda", 1)) == Compute(torch.device("cuda", 1), "bf16", 4096)
    assert first == Compute(torch.device("cuda", 0), "bf16", 4096)  # frozen: a new value
    assert Compute(CPU, "fp32").max_tokens is None  # the device's own budget


def test_setup_refuses_more_processes_than_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ParamsError, match=r"^train\.devices: 2 processes need 2 GPUs"):
        runtime.setup("cuda", "fp32", processes=2)


def test_to_device_moves_the_tensor_to_a_device_other_than_cuda() -> None:
    """meta: a device with no memory, which the CPU-only machines have too."""
    moved = runtime.to_device(torch.arange(6), torch.device("meta"))
    assert moved.device == torch.device("meta") and moved.shape == (6,)


def test_auto_precision_asks_about_the_card_it_runs_on(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda_card(monkeypatch, capability=(7, 5), native_bf16=False)
    seen = []
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device=None: seen.append(device) or (7, 5)
    )
    second = torch.device("cuda:1")
    assert runtime.resolve_precision("auto", second) == "fp16" and seen == [second]


def test_the_scaler_is_made_for_the_device() -> None:
    """Its scale may be set from a tensor of that device (as restoring a scale would)."""
    scaler = runtime.grad_scaler(Compute(CPU, "fp16"))
    weight = torch.ones(2, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler.scale((weight * 2).sum()).backward()
    scaler.step(optimizer)
    scaler.update(torch.tensor(1024.0))
    assert scaler.get_scale() == 1024.0 and weight.tolist() == pytest.approx([0.8, 0.8])
