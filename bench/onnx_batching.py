"""onnxruntime one message per call against batched, as the served ONNX model batches
(serving.onnx_probabilities: length-sorted, right-padded), at fp32 and int8, on random weights.

    python bench/onnx_batching.py [--tiny] [--graphs DIR] [--messages N] [--rounds R]

The same N SMS-like messages (bench/workload.py's), tokenized once, are scored by each graph
through a session with the server's options (spinning off, serve_batched.ORT_NO_SPINNING):
one message a call, packed alone (`one`); in batches of up to 1024 padded tokens
(`batched 1024`: batching.CPU_INFERENCE_TOKENS, what the served ONNX model did before) or 256;
and in batches of up to 1024 padded tokens of one padded width (`one width`:
batching.sorted_order's one_width, what it does now). Rounds interleave the graphs and paths
so that a shared machine's drift falls on all; each path prints its median ms a message over
the rounds, in wall time and in the process's CPU time (both threads' work, whatever the
other jobs took), and its padded tokens over real ones. Then the largest |batched - one|
probability per graph: whether a message's answer depends on its batch-mates. Graphs: fp32
(export.to_onnx), int8 (export.quantize_int8: per-row activation scales), and int8 with one
activation scale per tensor (per batch), as quantize_int8 wrote it before
per_row_activations. `--graphs DIR` builds the graphs there once and reuses them after
(model.onnx, model-int8.onnx, model-int8-tensor.onnx, finetuned/): at 124M shapes that takes
minutes.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from predict import model_folder
from workload import sms_like

from spamgpt.data import tokenized, tokenizer
from spamgpt.data.batching import CPU_INFERENCE_TOKENS, ModelInputs, padded_width, sorted_order
from spamgpt.model import classifier
from spamgpt.serve import export
from spamgpt.serve.serve_batched import ORT_NO_SPINNING

GRAPHS = {
    "fp32": "model.onnx",
    "int8": "model-int8.onnx",
    "int8 per tensor": "model-int8-tensor.onnx",
}
# path: (padded tokens a batch, one_width); None: one message a call, packed alone
PATHS = {
    "one": None,
    "batched 1024": (CPU_INFERENCE_TOKENS, False),
    "batched 256": (256, False),
    "batched 1024, one width": (CPU_INFERENCE_TOKENS, True),
}


def built(root: Path, shapes: str) -> Path:
    """The model folder and its three graphs under root (made unless there)."""
    if not (root / GRAPHS["int8 per tensor"]).exists():
        folder = model_folder(root, shapes)
        model, meta = classifier.load(folder)
        export.to_onnx(model.eval(), meta, root / GRAPHS["fp32"])
        export.quantize_int8(root / GRAPHS["fp32"], root / GRAPHS["int8"])
        prepared = root / "prepared.onnx"  # quantize_int8 before per_row_activations
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        float_nodes = export.nodes_of_modules(onnx.load(str(root / GRAPHS["fp32"])),
                                              export.FLOAT_MODULES)  # fmt: skip
        quant_pre_process(str(root / GRAPHS["fp32"]), str(prepared))
        quantize_dynamic(prepared, root / GRAPHS["int8 per tensor"], weight_type=QuantType.QInt8,
                         per_channel=True, nodes_to_exclude=float_nodes)  # fmt: skip
        prepared.unlink()
    return root / "finetuned"


def batches(inputs: ModelInputs, path: tuple[int, bool] | None) -> list[torch.Tensor]:
    if path is None:
        return [torch.tensor([i]) for i in range(len(inputs))]
    return sorted_order(inputs.sequences.lengths, path[0], one_width=path[1])


def scored(session: onnxruntime.InferenceSession, inputs: ModelInputs, order: list) -> np.ndarray:
    """What serving.onnx_probabilities computes, for a given order of batches."""
    out = np.empty((len(inputs), session.get_outputs()[0].shape[1]), dtype=np.float32)
    for indices in order:
        ids, lengths = inputs.batch(indices)
        if len(order) == len(inputs):  # one a call: packed alone, no padding
            ids = ids[:, : int(lengths[0])]
        out[indices.numpy()] = session.run(None, {"input_ids": ids.numpy(),
                                                  "lengths": lengths.numpy()})[0]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny GPT-2")
    parser.add_argument("--graphs", type=Path, help="build the graphs here once, reuse them")
    parser.add_argument("--messages", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    root = args.graphs or Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    try:
        folder = built(root, "tiny" if args.tiny else "124M")
        _, meta = classifier.load(folder)
        texts = [line.split("\t", 1)[1] for line in sms_like(args.messages)]
        encoded = tokenized.encode(tokenizer.load(folder), texts)
        ids = tokenized.pack_ids(encoded, meta["max_length"])
        inputs = ModelInputs(ids, None)
        options = onnxruntime.SessionOptions()
        for key, value in ORT_NO_SPINNING.items():
            options.add_session_config_entry(key, value)
        sessions = {
            g: onnxruntime.InferenceSession(str(root / f), options) for g, f in GRAPHS.items()
        }
        orders = {p: batches(inputs, path) for p, path in PATHS.items()}
        real, cap = int(ids.lengths.sum()), int(ids.lengths.max())
        padded = {p: sum(len(b) * padded_width(int(ids.lengths[b].max()), cap) for b in o)
                  for p, o in orders.items()}  # fmt: skip
        padded["one"] = real  # each message packed alone
        answers = {
            (g, p): scored(s, inputs, o) for g, s in sessions.items() for p, o in orders.items()
        }  # the first calls: also the warm-up
        wall, cpu = {k: [] for k in answers}, {k: [] for k in answers}
        began = " ".join(f"{x:.1f}" for x in os.getloadavg())
        for _ in range(args.rounds):
            for g, session in sessions.items():
                for p, order in orders.items():
                    w, c = time.perf_counter(), time.process_time()
                    scored(session, inputs, order)
                    wall[g, p].append((time.perf_counter() - w) * 1000 / len(texts))
                    cpu[g, p].append((time.process_time() - c) * 1000 / len(texts))
        ended = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{len(texts)} messages, {int(ids.lengths.sum())} tokens ({int(ids.lengths.min())} "
              f"to {cap}), onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, "
              f"load average {began} to {ended}, {args.rounds} rounds")  # fmt: skip
        print("| graph | path | calls | padded / real tokens | wall ms a message "
              "| CPU ms a message |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for g, p in answers:
            w, c = statistics.median(wall[g, p]), statistics.median(cpu[g, p])
            # 3 digits, not 1 decimal: the tiny model's milliseconds printed 0.0 now and then
            print(f"| {g} | {p} | {len(orders[p])} | {padded[p] / real:.2f} | {w:.3g} | {c:.3g} |")
        for g in sessions:
            gaps = [float(np.abs(answers[g, p] - answers[g, "one"]).max()) for p in PATHS]
            print(f"{g}: largest |batched - one| probability {max(gaps):.2g}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
