"""The device-dependent parts on a CUDA GPU: LoRA, fp16 and bf16, the model's forward.

Marked `cuda` and skipped where torch sees no GPU; on a GPU machine run them with
`pytest -m cuda`. The tiny model keeps them to seconds.
"""

import dataclasses
from pathlib import Path
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from test_runtime import assert_step_close_to_fp32, batch, logits_in, tiny_classifier
from test_train import PARAMS, assert_same_weights, new_trainer, trainer_splits, updates

from spamgpt import runtime
from spamgpt.finetune.train import Trainer, epoch_order
from spamgpt.labels import SMS
from spamgpt.model import classifier, lora
from spamgpt.model.gpt2 import GPT2Classifier
from spamgpt.params import LoraTarget, TrainParams
from spamgpt.runtime import Compute

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
]

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
TARGETS = list(get_args(LoraTarget))  # every projection LoRA can adapt


@pytest.fixture
def model(tmp_path: Path) -> GPT2Classifier:
    return tiny_classifier(tmp_path)


def test_lora_prepared_on_cuda_trains_a_step(model: GPT2Classifier) -> None:
    """As the finetune stage does it: the model moves to the GPU, then the adapters are added."""
    model.to(CUDA).train()
    trained = lora.add_adapters(model, 0, TARGETS, rank=4, alpha=8)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert {name: t.device.type for name, t in tensors if t.device.type != "cuda"} == {}
    params = dict(model.named_parameters())
    precision = runtime.resolve_precision("auto", CUDA)
    optimizer = torch.optim.AdamW([params[n] for n in trained], lr=1e-3, fused=True)
    scaler = runtime.grad_scaler(Compute(CUDA, precision))
    idx, lengths, labels = batch(CUDA)
    with runtime.autocast(Compute(CUDA, precision)):
        logits = model(idx, lengths)
    loss = F.cross_entropy(logits.float(), labels)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert loss.isfinite()
    lora_B = params["gpt.h.0.attn.c_attn.lora_B"]
    assert lora_B.abs().sum() > 0  # started at zero: the step reached the adapters
    lora.merge(model)
    assert all(p.device.type == "cuda" for p in model.parameters())


@pytest.mark.parametrize(("precision", "error"), [("fp16", 1e-2), ("bf16", 5e-2)])
def test_low_precision_stays_close_to_fp32_on_cuda(
    model: GPT2Classifier, precision: str, error: float
) -> None:
    """fp16 (11 bits of mantissa) moves logits by about 0.1%, bf16 (8 bits) by about 1%; the
    whole model's training step, with fp16's gradient scaler, is not skipped."""
    model.to(CUDA)
    fp32, low = logits_in(model, CUDA, "fp32"), logits_in(model, CUDA, precision)
    assert (low - fp32).abs().max() < error * fp32.abs().max()
    assert not torch.equal(low, fp32)  # autocast really ran in low precision
    assert_step_close_to_fp32(model, CUDA, precision, grad_error=error)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_forward_on_cuda_equals_the_cpu(model: GPT2Classifier, pooling: str) -> None:
    model.pooling = pooling
    on_cpu = logits_in(model, CPU, "fp32")
    on_cuda = logits_in(model.to(CUDA), CUDA, "fp32")
    torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-4, atol=1e-4 * on_cpu.abs().max().item())


def test_training_steps_do_not_wait_for_the_gpu() -> None:
    """torch's sync debug mode raises on any host-device synchronisation: the batches' copies
    to the card (pinned, non-blocking) and the loss (left on it) must make none."""
    built = new_trainer()
    model = built.model.to(CUDA).train()
    trainer = Trainer(
        model, list(built.trained), *trainer_splits(), SMS, PARAMS, Compute(CUDA, "fp32")
    )
    trainer.train_step(torch.arange(0, 4))  # the first step allocates: outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [trainer.train_step(torch.arange(i, i + 4)) for i in range(4, 16, 4)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(loss.isfinite() for loss in losses)


def cuda_trainer(params: TrainParams, trainable_blocks: int | str, precision: str) -> Trainer:
    built = new_trainer(params, n_train=70)
    model = built.model.to(CUDA).train()
    trained = classifier.freeze(model, trainable_blocks)
    return Trainer(model, trained, *trainer_splits(70), SMS, params, Compute(CUDA, precision))


@pytest.mark.parametrize(
    ("trainable_blocks", "precision", "accumulation"),
    [(1, "fp32", 1), ("all", "fp32", 1), (1, "bf16", 1), ("all", "fp32", 3)],
)
def test_cuda_graph_replays_give_the_eager_static_steps_results(
    trainable_blocks: int | str, precision: str, accumulation: int
) -> None:
    """train.cuda_graphs on CUDA: each width's first update eager, the second captured, the
    rest replayed; over an epoch of 70 messages (a short last update), the losses and weights
    of the same static step run eagerly, and of the plain step. Replays make no host sync."""
    params = dataclasses.replace(
        PARAMS, batch_size=4, accumulation_steps=accumulation, lr=1e-3, cuda_graphs=True
    )
    runs = []
    for graphs in (True, False):
        trainer = cuda_trainer(params, trainable_blocks, precision)
        trainer.static.graphs = graphs
        runs.append((trainer, updates(trainer)))
    (replayed, losses), (eager, eager_losses) = runs
    assert replayed.static.graphs and replayed.static.captured  # no fallback: it replayed
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-5)
    steps = len(losses)
    if precision == "fp32":
        assert_same_weights(replayed, eager, steps)
        plain_params = dataclasses.replace(params, cuda_graphs=False)
        plain = cuda_trainer(plain_params, trainable_blocks, "fp32")
        assert updates(plain) == pytest.approx(losses, rel=1e-5, abs=1e-5)
    width = next(iter(replayed.static.captured))
    inputs = replayed.train_split.inputs
    order = epoch_order(inputs.sequences.lengths, 4 * accumulation, seed=0, epoch=0)
    indices = next(b for b in order if inputs.batch(b)[0].shape[1] == width)
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = replayed.train_step(indices)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert loss.isfinite()
