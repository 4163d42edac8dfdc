"""Where a training step of the cached tail spends its time: torch.profiler over a few steps.

    python bench/profile_train.py PROJECT [--warmup 10] [--steps 20] [--top 12] [--json FILE]

PROJECT is a project where the pipeline has run (its params.yaml, models/pretrained, data/tokens
and data/trunk). The model, its trainable part and the Trainer are built as the finetune stage
builds them, on train.device in train.precision; the batches are the first epoch's. After
--warmup steps it times --steps steps (the device synchronised before and after), then
profiles as many more: per step, the wall time, the time the device's kernels ran (CUDA) and
their share of the wall, and the top entries by self device time (on a CPU: self CPU time).
Prints the profiler's table; --json writes the figures, --trace the profiled steps as a Chrome
trace (chrome://tracing, ui.perfetto.dev).
"""

import argparse
import gzip
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from spamgpt import contracts, runtime
from spamgpt.finetune.train import Trainer, epoch_order, update_size
from spamgpt.model import classifier
from spamgpt.model.trunk import Split
from spamgpt.params import load as load_params


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--trace", type=Path, help="write a Chrome trace here (.json.gz)")
    args = parser.parse_args()
    json_path, trace_path = (p and p.resolve() for p in (args.json, args.trace))
    os.chdir(args.project)  # the pipeline's paths are relative to its root

    params = load_params()
    m, t = params.model, params.train
    compute = runtime.setup(t.device, t.precision)
    device, precision = compute.device, compute.precision
    frozen = contracts.read_frozen_blocks()
    train, val = Split.read("train", frozen), Split.read("val", frozen)
    classes = contracts.read_classes()
    model, trained = classifier.for_training(m, params.lora, classes, device, t.seed)
    trainer = Trainer(model, trained, train, val, classes, t, compute)
    order = epoch_order(train.inputs.sequences.lengths, update_size(t), t.seed, 0)
    batches = iter(order * (1 + (args.warmup + 2 * args.steps) // len(order)))
    model.train()

    for _ in range(args.warmup):
        trainer.train_step(next(batches))
    synchronize(device)
    started, samples = time.perf_counter(), 0
    for _ in range(args.steps):
        indices = next(batches)
        trainer.train_step(indices)
        samples += len(indices)
    synchronize(device)
    seconds = time.perf_counter() - started
    wall_ms = seconds * 1e3 / args.steps

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(next(batches))
        synchronize(device)
        profiled_ms = (time.perf_counter() - started) * 1e3 / args.steps
    averages = prof.key_averages()
    on_device = device.type == "cuda"
    if on_device:  # the kernels themselves, as the profiler's own "Self CUDA time total" sums
        kernels = [
            e
            for e in averages
            if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
        ]
        kernel_ms = sum(e.self_device_time_total for e in kernels) / 1e3 / args.steps
        top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)
    else:
        kernel_ms = None
        top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)
    sort_by = "self_cuda_time_total" if on_device else "self_cpu_time_total"
    print(averages.table(sort_by=sort_by, row_limit=args.top))

    figures = {
        "device": torch.cuda.get_device_name(device) if on_device else "cpu",
        "torch": torch.__version__,
        "precision": precision,
        "batch_size": t.batch_size,
        "trainable_blocks": m.trainable_blocks,
        "finetune": m.finetune,
        "steps": args.steps,
        "wall_ms_per_step": round(wall_ms, 3),
        "profiled_wall_ms_per_step": round(profiled_ms, 3),
        "kernel_ms_per_step": None if kernel_ms is None else round(kernel_ms, 3),
        "kernel_share_of_wall": None if kernel_ms is None else round(kernel_ms / profiled_ms, 3),
        "samples_per_s": round(samples / seconds, 1),
        "peak_device_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20)
        if on_device
        else None,
        "top": [
            {
                "name": e.key[:120],
                "calls_per_step": round(e.count / args.steps, 2),
                "self_ms_per_step": round(
                    (e.self_device_time_total if on_device else e.self_cpu_time_total)
                    / 1e3
                    / args.steps,
                    4,
                ),
            }
            for e in top[: args.top]
        ],
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "top"}))
    if trace_path:
        with tempfile.TemporaryDirectory() as tmp:
            prof.export_chrome_trace(f"{tmp}/trace.json")
            trace_path.write_bytes(gzip.compress(Path(f"{tmp}/trace.json").read_bytes()))
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
