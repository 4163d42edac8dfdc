"""ONNX Runtime int8 (spamgpt export --to onnx --quantize int8) against PyTorch, one message
per call, on random weights.

    python bench/onnx_int8.py [--tiny] [--messages N] [--rounds R]

A self-contained model folder of random weights at GPT-2 124M shapes (`--tiny`: the tests'
2-block, width-32 GPT-2), exported to ONNX and quantized to int8 as `spamgpt export` does
(spamgpt.serve.export.to_onnx, quantize_int8). Each variant scores the same N synthetic SMS-
like messages one at a time, text in, probabilities out, as a server answers one request:
PyTorch fp32 and bf16 through classifier.classify_texts (`spamgpt classify`'s path), ONNX fp32
and two int8 graphs through the served ONNX model's path (tokenized.encode, pack_ids,
serving.onnx_probabilities, sessions with the server's options: spinning off): the export's
(one weight scale per output channel, block 0's attention projections in float32) and the
export's before (one scale per weight tensor, every MatMul in int8). The variants take turns, R
rounds of N messages each, so that a shared machine's drift falls on all of them; each prints
its median messages/s over the rounds, then each int8 graph's speed-up over PyTorch fp32 (the
median of the rounds' ratios), the graphs' sizes, and the largest difference between each int8
graph's probabilities and PyTorch fp32's."""

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from spamgpt import params, runtime
from spamgpt.data import tokenized, tokenizer
from spamgpt.data.batching import ModelInputs
from spamgpt.labels import SMS
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub
from spamgpt.serve import export, serving
from spamgpt.serve.serve_batched import ORT_NO_SPINNING
from spamgpt.texts import Truncation

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "tiny": {"layers": 2, "dim": 32, "heads": 4, "n_ctx": 64},
    "124M": {"layers": 12, "dim": 768, "heads": 12, "n_ctx": 1024},
}
WORDS = ["free", "prize", "call", "now", "see", "you", "at", "the", "station", "win", "txt"]
CPU = torch.device("cpu")
MAX_LENGTH = 64
INT8 = "onnx int8 (the export's)"
PER_TENSOR = "onnx int8 per tensor, every MatMul (the export's before)"
GRAPHS = ("onnx fp32", INT8, PER_TENSOR)


def model_folder(root: Path, shapes: str) -> Path:
    """A self-contained fine-tuned folder (every tensor) of random weights, SMS classes."""
    hub = make_hub(root / "hub", revision="bench", **SHAPES[shapes])
    torch.manual_seed(0)
    model = GPT2Classifier(GPT2.from_pretrained(hub), len(SMS))
    m = dataclasses.replace(params.load(ROOT / "params.yaml").model, pretrained=False)
    meta = classifier.classifier_meta(m, SMS, [], MAX_LENGTH, tokenizer.load(hub).eot_token)
    folder = root / "finetuned"
    folder.mkdir()
    classifier.save(model, folder, meta, hub, full=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny GPT-2")
    parser.add_argument("--messages", type=int, default=50, help="per round and variant")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(8, 30))) for _ in range(args.messages)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(Path(tmp), "tiny" if args.tiny else "124M")
        model, meta = classifier.load(folder)
        model.eval()
        enc = tokenizer.load(folder)
        files = {name: Path(tmp) / f"{i}.onnx" for i, name in enumerate(GRAPHS)}
        export.to_onnx(model, meta, files["onnx fp32"])
        export.quantize_int8(files["onnx fp32"], files[INT8])
        export.quantize_int8(
            files["onnx fp32"], files[PER_TENSOR], per_channel=False, float_modules=()
        )
        options = onnxruntime.SessionOptions()  # the server's: its threads sleep when idle
        for key, value in ORT_NO_SPINNING.items():
            options.add_session_config_entry(key, value)
        sessions = {
            name: onnxruntime.InferenceSession(str(file), options) for name, file in files.items()
        }

        def pytorch(precision: str):
            def score(text: str) -> np.ndarray:
                probs, _ = classifier.classify_texts(
                    model, enc, [text], MAX_LENGTH, runtime.Compute(CPU, precision), Truncation()
                )
                return probs.numpy()

            return score

        def onnx(session: onnxruntime.InferenceSession):
            def score(text: str) -> np.ndarray:
                ids = tokenized.pack_ids(tokenized.encode(enc, [text]), MAX_LENGTH)
                return serving.onnx_probabilities(session, ModelInputs(ids, None))

            return score

        variants = {"pytorch fp32": pytorch("fp32")}
        if runtime.bf16_supported(CPU):
            variants["pytorch bf16"] = pytorch("bf16")
        variants |= {name: onnx(session) for name, session in sessions.items()}
        for score in variants.values():  # warm-up: first-call allocations, kernels
            score(texts[0])
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, score in variants.items():
                started = time.perf_counter()
                for text in texts:
                    score(text)
                rates[name].append(len(texts) / (time.perf_counter() - started))
        print(f"torch threads {torch.get_num_threads()}, onnxruntime {onnxruntime.__version__}")
        for name, values in rates.items():
            print(f"{name}: {statistics.median(values):.1f} messages/s at batch 1")
        for name in (INT8, PER_TENSOR):
            ratios = [q / f for q, f in zip(rates[name], rates["pytorch fp32"], strict=True)]
            print(f"{name} over pytorch fp32: {statistics.median(ratios):.2f}x")
        sizes = ", ".join(f"{n} {f.stat().st_size / 2**20:.1f} MiB" for n, f in files.items())
        print(f"graph sizes: {sizes}")
        reference = [variants["pytorch fp32"](t) for t in texts]
        for name in (INT8, PER_TENSOR):
            gap = max(
                float(np.abs(variants[name](t) - r).max())
                for t, r in zip(texts, reference, strict=True)
            )
            print(f"largest |{name} - pytorch fp32| probability: {gap:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
