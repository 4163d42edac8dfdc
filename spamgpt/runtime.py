"""Where and how tensors are computed: device, precision, threads, seeds."""

import contextlib
import os

import torch

from spamgpt.errors import ParamsError


def resolve_device(requested: str) -> torch.device:
    """train.device: 'auto' picks cuda, then mps, then cpu; an explicit one must exist here."""
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
            f"train.device: {requested} is not available on this machine; allowed here: {here}"
        )
    return torch.device(requested)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Native bf16 dot products: AVX512-BF16 or AMX-BF16 (x86), the BF16 extension (ARM).
        # Not oneDNN's check (torch.ops.mkldnn._is_mkldnn_bf16_supported): it is true on any
        # AVX-512 CPU, where bf16 is emulated and slower than fp32.
        caps = torch.cpu.get_capabilities()
        return any(caps.get(flag, False) for flag in ("avx512_bf16", "amx_bf16", "bf16"))
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """train.precision: 'auto' is bf16 where the hardware computes it natively, else fp32."""
    if requested == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if requested == "bf16" and device.type == "mps":
        raise ParamsError("train.precision: bf16 is not supported on mps; allowed: auto, fp32")
    return requested


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Matmuls in bf16 with float32 accumulation, norms and losses in float32; or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_all_cores(processes: int = 1) -> int:
    """Intra-op threads = the cores this process may run on (torch may default to fewer),
    shared out when `processes` train side by side on the same machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // processes))
    return torch.get_num_threads()
