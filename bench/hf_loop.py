"""The anchor step: a plain Hugging Face training loop over the same model and messages, no
tuning, so that spamgpt's full fine-tune has a yardstick measured in the same run.

    python bench/hf_loop.py PROJECT [--batch 32] [--warmup 5] [--steps 20] [--json FILE]

PROJECT is a project where the pipeline has run (its params.yaml, models/pretrained and
data/tokens). transformers' GPT2ForSequenceClassification is built from the same pretrained
folder, every weight trained; batches of --batch training messages in the first epoch's
order, right-padded to each batch's longest message (no fixed widths), an attention mask; the
loss transformers computes (plain cross-entropy); AdamW fused where the device has it; bf16
autocast on CUDA (fp32 on a CPU). After --warmup steps it times --steps steps, the device
synchronised before and after: training samples/s.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from spamgpt import contracts, paths, runtime
from spamgpt.finetune.train import epoch_order
from spamgpt.model.trunk import Split
from spamgpt.params import load as load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    json_path = args.json and args.json.resolve()
    os.chdir(args.project)  # the pipeline's paths are relative to its root

    params = load_params()
    device = runtime.resolve_device(params.train.device)
    classes = contracts.read_classes()
    pad = contracts.read_tokenization().pad_id  # end-of-text: in no message
    folder = paths.pretrained_dir(params.model.repo_id)
    config = GPT2Config.from_pretrained(folder, num_labels=len(classes), pad_token_id=pad)
    model = GPT2ForSequenceClassification.from_pretrained(folder, config=config).to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.train.lr, fused=device.type in ("cpu", "cuda")
    )
    train = Split.read("train", None)  # token ids
    order = epoch_order(train.inputs.sequences.lengths, args.batch, params.train.seed, 0)
    batches = iter(order * (1 + (args.warmup + args.steps) // len(order)))
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def step() -> int:
        indices = next(batches)
        ids, lengths = train.inputs.batch(indices)
        mask = torch.arange(ids.shape[1]) < lengths[:, None]
        ids = torch.where(mask, ids, pad)  # how the model finds each message's last token
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                labels=train.labels[indices].to(device),
            )  # fmt: skip
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return len(indices)

    for _ in range(args.warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    samples = sum(step() for _ in range(args.steps))
    synchronize(device)
    seconds = time.perf_counter() - started
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "precision": "bf16" if dtype else "fp32",
        "batch_size": args.batch,
        "steps": args.steps,
        "samples_per_second": round(samples / seconds, 1),
        "ms_per_step": round(seconds * 1e3 / args.steps, 3),
    }
    print(json.dumps(figures))
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2) + "\n")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
