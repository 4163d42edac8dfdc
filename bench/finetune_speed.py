"""Fine-tuning speed: the naive reference loop against spamgpt's fine-tune path, one process.

    python bench/finetune_speed.py [--data FILE] [--tokenizer DIR] [--naive-samples 64]
                                   [--epochs 2] [--precision auto] [--tiny]

Both run GPT-2 124M shapes with random weights (the same compute as the real ones) on the
messages of --data (default data/raw/dataset, what `dvc repro` downloads: the SMS Spam
Collection), read and split as params.yaml's data and split sections say, tokenised with the
vocab.json and merges.txt of --tokenizer (default models/pretrained/<model.repo_id>), batch 8,
the last block + final norm + head trainable:
  (a) naive: every message padded to the longest one, the full forward pass every step;
  (b) spamgpt: the frozen trunk computed once (timed with the first epoch), then epochs of
      length-bucketed batches through the trainable tail only, validation each epoch.
It prints samples/s of both, inference messages/s of `classify` over the test split, the
peak RSS, and last `ratio: <b over a, epochs after the first>`.

--tiny: 2 blocks 32 wide, 16 naive samples; without --data, 300 SMS-like messages
(bench/workload.py), without --tokenizer, the random hub's small BPE: that the script runs, in
seconds, on a clone without the pipeline's outputs.
"""

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from workload import ROOT, sms_like

from spamgpt import labels, paths, runtime
from spamgpt.data import readers, tokenized, tokenizer
from spamgpt.data.batching import ModelInputs
from spamgpt.finetune.checkpoint import CheckpointSaver
from spamgpt.finetune.train import Hook, State, Trainer
from spamgpt.model import classifier, trunk
from spamgpt.model.gpt2 import GPT2, GPT2Classifier, GPTConfig
from spamgpt.model.trunk import Split
from spamgpt.params import load as load_params
from spamgpt.random_hub import make_hub

TINY = GPTConfig(n_layer=2, n_head=4, n_embd=32, n_ctx=64)


class Clock(Hook):
    """Notes the training seconds so far at each epoch's end."""

    def __init__(self) -> None:
        self.epoch_train_seconds: list[float] = []

    def on_epoch_end(self, state: State) -> None:
        self.epoch_train_seconds.append(state.train_seconds)


def naive_samples_per_second(
    gpt: GPT2, split: tokenized.TokenizedSplit, n_samples: int, pad: int
) -> float:
    """The reference loop: pad everything to the longest message, run the whole model."""
    model = GPT2Classifier(gpt)
    trained = classifier.freeze(model, 1)
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if n in trained], lr=5e-5)
    width = int(split.tokens.lengths.max())
    model.train()
    started = time.perf_counter()
    for start in range(0, n_samples, 8):
        indices = torch.arange(start, start + 8)
        ids, lengths = split.tokens.batch(indices, pad_value=pad)
        ids = F.pad(ids, (0, width - ids.shape[1]), value=pad)
        loss = F.cross_entropy(model(ids, lengths), split.labels[indices])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return n_samples / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="default: data/raw/dataset")
    parser.add_argument("--tokenizer", type=Path, help="default: models/pretrained/<repo_id>")
    parser.add_argument("--naive-samples", type=int)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and data")
    args = parser.parse_args()
    naive_samples = args.naive_samples or (16 if args.tiny else 64)

    threads = runtime.use_all_cores()
    device = torch.device("cpu")
    precision = runtime.resolve_precision(args.precision, device)
    compute = runtime.Compute(device, precision)
    params = load_params(ROOT / "params.yaml")
    d = params.data
    messages_file = args.data or ROOT / paths.RAW_DATA
    fmt = readers.Format(d.format, d.text_column, d.label_column)
    tokenizer_dir = args.tokenizer or ROOT / paths.pretrained_dir(params.model.repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny and args.data is None:
            messages_file, fmt = Path(tmp) / "messages.txt", readers.Format()
            messages_file.write_text("\n".join(sms_like(300)) + "\n", encoding="utf-8")
        if args.tiny and args.tokenizer is None:
            tokenizer_dir = make_hub(tmp, layers=1, dim=8, heads=1, n_ctx=8)
        allowed = None if d.labels is None else tuple(map(str, d.labels))
        parsed = readers.read_messages(messages_file, fmt, allowed, d.bad_lines)
        enc = tokenizer.load(tokenizer_dir)
    classes = labels.found(parsed.frame["label"], d.labels, d.positive_label)
    sp = params.split
    splits = readers.split(readers.dedupe(parsed.frame), sp.val, sp.test, sp.seed, classes.names)
    ids = {s: tokenized.encode_packed(enc, f["text"].tolist()) for s, f in splits.items()}
    config = dataclasses.replace(TINY if args.tiny else GPTConfig(), vocab_size=enc.n_vocab)
    max_length = tokenized.resolve_max_length(
        None, torch.cat([packed.lengths for packed in ids.values()]), config.n_ctx
    )
    packed = {s: tokenized.pack(ids[s], splits[s], max_length, classes) for s in splits}
    n_train = len(packed["train"])
    torch.manual_seed(0)
    gpt = GPT2.init_random(config)
    print(
        f"cpu threads {threads}, precision {precision}, {n_train} training messages, "
        f"longest {max_length} tokens"
    )

    naive = naive_samples_per_second(gpt, packed["train"], naive_samples, enc.eot_token)
    print(f"(a) naive loop: {naive:.2f} training samples/s over {naive_samples} samples")

    started = time.perf_counter()
    frozen = classifier.frozen_blocks(gpt.config.n_layer, 1)
    cached = {
        s: trunk.compute(gpt, t.tokens, frozen, compute, desc=f"trunk {s}")
        for s, t in packed.items()
    }
    trunk_seconds = time.perf_counter() - started
    n_tokens = sum(len(t.tokens.rows) for t in packed.values())
    print(f"(b) trunk pass: {trunk_seconds:.1f} s for {n_tokens} tokens of all splits")

    model = GPT2Classifier(gpt, pooling="last")
    trained = classifier.freeze(model, 1)
    train_params = dataclasses.replace(params.train, epochs=args.epochs, patience=args.epochs)
    clock = Clock()
    train, val = (Split(ModelInputs(cached[s], frozen), packed[s].labels) for s in ("train", "val"))
    trainer = Trainer(model, trained, train, val, classes, train_params, compute)
    with tempfile.TemporaryDirectory() as checkpoints:
        trainer.fit(CheckpointSaver(Path(checkpoints) / "checkpoint.pt", "bench"), hooks=(clock,))
    ends = clock.epoch_train_seconds
    per_epoch = [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]
    first = n_train / (trunk_seconds + per_epoch[0])
    later = n_train * (len(per_epoch) - 1) / max(sum(per_epoch[1:]), 1e-9)
    print(f"(b) first epoch incl. trunk: {first:.1f} samples/s ({first / naive:.1f}x naive)")
    print(f"(b) epochs after the first: {later:.1f} samples/s ({later / naive:.1f}x naive)")

    test = splits["test"]["text"].tolist()
    started = time.perf_counter()
    classifier.classify_texts(model.eval(), enc, test, max_length, compute)
    print(
        f"classify: {len(test) / (time.perf_counter() - started):.1f} messages/s "
        f"over the {len(test)} test messages (whole model)"
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB")
    print(f"ratio: {later / naive:.1f}")


if __name__ == "__main__":
    main()
