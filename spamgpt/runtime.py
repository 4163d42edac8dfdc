"""Where and how tensors are computed: device, precision, threads, seeds; a `Compute` holds
the resolved choice every stage and command passes on."""

import contextlib
import dataclasses
import logging
import os

import torch

from spamgpt.errors import ParamsError

log = logging.getLogger(__name__)


# Where a device and a precision were asked for, as errors name it: params.yaml's keys, or the
# flags of the commands that run a model (spamgpt classify, predict, serve).
PARAMS = ("train.device", "train.precision")
FLAGS = ("--device", "--precision")


@dataclasses.dataclass(frozen=True)
class Compute:
    """Where and how a model computes, resolved on this machine (runtime.setup): its device,
    its precision (fp32, bf16 or fp16: autocast) and the padded tokens of an inference batch
    (None: what suits the device, spamgpt.data.batching.inference_tokens)."""

    device: torch.device
    precision: str
    max_tokens: int | None = None

    def on(self, device: torch.device) -> "Compute":
        """The same on another device (this process's GPU under torchrun)."""
        return dataclasses.replace(self, device=device)


def resolve_device(requested: str, setting: str = PARAMS[0]) -> torch.device:
    """train.device (or the flag `setting`): 'auto' picks cuda, then mps, then cpu; an
    explicit one must exist here."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available[requested]:
        here = ", ".join(["auto", *(name for name, ok in available.items() if ok)])
        raise ParamsError(
            f"{setting}: {requested} is not available on this machine; allowed here: {here}"
        )
    return torch.device(requested)


def check_device_count(devices: int, device: torch.device) -> None:
    """train.devices: on a GPU each process needs one of its own; refuse more processes than
    visible GPUs here, before torchrun starts them (on CUDA they would die of 'invalid device
    ordinal'; mps is one GPU). On the CPU any number of processes share the cores."""
    if device.type == "cpu":
        return
    visible = torch.cuda.device_count() if device.type == "cuda" else 1
    if devices > visible:
        allowed = "1" if visible == 1 else f"1 to {visible}"
        raise ParamsError(
            f"train.devices: {devices} processes need {devices} GPUs, this machine has "
            f"{visible} visible; allowed here: {allowed}"
        )


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_supported(device: torch.device) -> bool:
    """Does the device compute bf16 natively? Emulated bf16 is slower than fp32."""
    if device.type == "cuda":
        # Ampere (sm_80) and later; the default (including_emulation=True) says yes on a T4 or
        # V100 too, where bf16 runs slower than fp32.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # Native bf16 dot products: AVX512-BF16 or AMX-BF16 (x86), the BF16 extension (ARM).
        # Not oneDNN's check (torch.ops.mkldnn._is_mkldnn_bf16_supported): it is true on any
        # AVX-512 CPU, where bf16 is emulated and slower than fp32.
        caps = torch.cpu.get_capabilities()
        return any(caps.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16"))
    return False


def fp16_fast_on_cuda(device: torch.device) -> bool:
    """Does this CUDA card compute fp16 faster than fp32? Yes with tensor cores (sm_70, V100,
    and later) and on the P100 (sm_60); a GTX 10xx (sm_61) runs fp16 at 1/64 of fp32's rate."""
    capability = torch.cuda.get_device_capability(device)
    return capability >= (7, 0) or capability == (6, 0)


def fp16_allowed(device: torch.device) -> bool:
    """May train.precision be fp16 here? On CUDA and mps (autocast and GradScaler support
    both); on a CPU only where it computes fp16 natively (AVX512-FP16 or AMX-FP16): torch's
    CPU autocast runs float16 elsewhere too, but emulated, several times slower than fp32."""
    if device.type == "cpu":
        return torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return device.type in ("cuda", "mps")


def resolve_precision(requested: str, device: torch.device, setting: str = PARAMS[1]) -> str:
    """train.precision (or the flag `setting`): 'auto' is bf16 where the device computes it
    natively, else fp16 on a CUDA card that computes fp16 fast (with a gradient scaler: see
    grad_scaler), else fp32. An explicit choice is kept unless the device cannot compute it
    (or only emulated, for fp16 on a CPU)."""
    if requested == "auto":
        if bf16_supported(device):
            return "bf16"
        if device.type == "cuda" and fp16_fast_on_cuda(device):
            return "fp16"
        return "fp32"
    if requested == "bf16" and device.type == "mps":
        raise ParamsError(f"{setting}: bf16 is not supported on mps; allowed: auto, fp32, fp16")
    if requested == "fp16" and not fp16_allowed(device):
        raise ParamsError(
            f"{setting}: fp16 on this CPU would be emulated, several times slower than fp32 "
            "(it has no AVX512-FP16 or AMX-FP16); allowed here: auto, fp32, bf16"
        )
    return requested


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without making the host wait for the device: a plain copy to
    a CUDA card first waits for all the work queued on it (cudaStreamSynchronize); from
    pinned memory with non_blocking it is queued behind that work instead. Elsewhere as is."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def autocast(compute: Compute) -> contextlib.AbstractContextManager:
    """Matmuls in bf16 or fp16 with float32 accumulation, norms, softmax and losses in float32;
    or nothing (fp32)."""
    if compute.precision in AUTOCAST_DTYPES:
        dtype = AUTOCAST_DTYPES[compute.precision]
        return torch.autocast(device_type=compute.device.type, dtype=dtype)
    return contextlib.nullcontext()


def grad_scaler(compute: Compute) -> torch.amp.GradScaler:
    """fp16's loss scaling: gradients below fp16's smallest number (6e-8) would become zero, so
    the loss is multiplied before backward and the gradients divided before the step, which is
    skipped (and the scale lowered) when they overflowed. A no-op scaler for fp32 and bf16."""
    return torch.amp.GradScaler(compute.device.type, enabled=compute.precision == "fp16")


def available_cores() -> int:
    """The cores this process may run on: its affinity where the system tells it (a
    container's or taskset's share), else the machine's."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def use_all_cores(processes: int = 1) -> int:
    """Intra-op threads = the cores this process may run on (torch may default to fewer),
    shared out when `processes` train side by side on the same machine."""
    torch.set_num_threads(max(1, available_cores() // processes))
    return torch.get_num_threads()


def setup(
    device: str,
    precision: str,
    processes: int = 1,
    max_tokens: int | None = None,
    settings: tuple[str, str] = PARAMS,
) -> Compute:
    """The stages' and commands' preamble: the device and precision asked for (train.device
    and train.precision, or the `settings` naming them: FLAGS) resolved on this machine, a
    GPU for each of `processes`, and every core in use (shared out among the processes)."""
    resolved = resolve_device(device, settings[0])
    check_device_count(processes, resolved)
    threads = use_all_cores(processes)
    precision = resolve_precision(precision, resolved, settings[1])
    log.info("%s, %s, %d threads", resolved, precision, threads)
    return Compute(resolved, precision, max_tokens)
