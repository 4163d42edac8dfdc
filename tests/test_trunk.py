"""The cached trunk is exact, and bf16 stays close to fp32."""

import pytest
import torch
import torch.nn.functional as F
from tiny_gpt2 import make_tiny_hub

from spamgpt import classifier, runtime, trunk
from spamgpt.batching import ModelInputs, PackedSequences
from spamgpt.model import GPT2, GPT2Classifier

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> GPT2Classifier:
    torch.manual_seed(0)
    hub = make_tiny_hub(tmp_path_factory.mktemp("hub"), layers=3)
    return GPT2Classifier(GPT2.from_pretrained(hub)).eval()


def messages(n: int = 40, seed: int = 0) -> PackedSequences:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 60, (n,), generator=g)
    return PackedSequences(torch.randint(0, 550, (int(lengths.sum()),), generator=g), lengths)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("trainable_blocks", [0, 1, 3])
def test_cached_trunk_gives_the_uncached_logits_and_loss(model, pooling, trainable_blocks):
    model.pooling = pooling
    tokens = messages()
    n_frozen = classifier.frozen_blocks(3, trainable_blocks)
    cached = ModelInputs(trunk.compute(model.gpt, tokens, n_frozen, CPU, "fp32"), n_frozen)
    uncached = ModelInputs(tokens, None)
    labels = torch.randint(0, 2, (len(tokens),), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for indices in torch.randperm(len(tokens)).split(8):  # batches of mixed lengths
            a = classifier.logits(model, cached, indices, CPU)
            b = classifier.logits(model, uncached, indices, CPU)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
            loss_a = F.cross_entropy(a, labels[indices])
            torch.testing.assert_close(
                loss_a, F.cross_entropy(b, labels[indices]), rtol=0, atol=1e-6
            )


def test_trunk_keeps_real_tokens_only(model):
    tokens = messages(5)
    hidden = trunk.compute(model.gpt, tokens, 2, CPU, "fp32")
    assert hidden.rows.shape == (int(tokens.lengths.sum()), model.gpt.config.n_embd)
    assert torch.equal(hidden.lengths, tokens.lengths)


@pytest.mark.skipif(not runtime.bf16_supported(CPU), reason="no native bf16 on this CPU")
def test_bf16_probabilities_stay_close_to_fp32(model):
    model.pooling = "last"
    tokens = ModelInputs(messages(64, seed=2), None)
    with torch.no_grad():
        indices = torch.arange(64)
        fp32 = torch.softmax(classifier.logits(model, tokens, indices, CPU), -1)
        with runtime.autocast(CPU, "bf16"):
            bf16 = torch.softmax(classifier.logits(model, tokens, indices, CPU).float(), -1)
    # bf16 keeps 8 bits of mantissa: logits move by about 1%, probabilities by less.
    assert (bf16 - fp32).abs().max() < 0.02
    assert not torch.equal(bf16, fp32)  # autocast really ran in bf16


def test_precision_auto_follows_the_hardware():
    expected = "bf16" if runtime.bf16_supported(CPU) else "fp32"
    assert runtime.resolve_precision("auto", CPU) == expected
    assert runtime.resolve_precision("fp32", CPU) == "fp32"
