"""LoRA adapters: start as the identity, train only adapters + head, merge exactly."""

from pathlib import Path
from typing import get_args

import pytest
import torch

from spamgpt.model import lora
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.params import LoraTarget
from spamgpt.random_hub import make_hub

TARGETS = list(get_args(LoraTarget))  # every projection LoRA can adapt


@pytest.fixture
def model(tmp_path: Path) -> GPT2Classifier:
    torch.manual_seed(0)
    return GPT2Classifier(GPT2.from_pretrained(make_hub(tmp_path))).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 500, (3, 12), generator=g), torch.tensor([12, 5, 1])


@torch.no_grad()
def test_adapters_start_as_the_identity(model: GPT2Classifier) -> None:
    idx, lengths = batch()
    before = model(idx, lengths)
    lora.add_adapters(model, 0, TARGETS, rank=4, alpha=8)
    torch.testing.assert_close(model(idx, lengths), before, rtol=0, atol=0)


def test_only_adapters_and_head_train(model: GPT2Classifier) -> None:
    trained = lora.add_adapters(model, 1, ["c_attn"], rank=4, alpha=8)
    assert set(trained) == {
        "gpt.h.1.attn.c_attn.lora_A",
        "gpt.h.1.attn.c_attn.lora_B",
        "head.weight",
        "head.bias",
    }
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert "gpt.h.1.attn.c_attn.linear.weight" in frozen and "gpt.ln_f.weight" in frozen
    idx, lengths = batch()
    torch.nn.functional.cross_entropy(model(idx, lengths), torch.tensor([0, 1, 0])).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == set(trained)


@torch.no_grad()
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_merge_gives_the_same_outputs(model: GPT2Classifier, pooling: str) -> None:
    model.pooling = pooling
    lora.add_adapters(model, 0, TARGETS, rank=4, alpha=8)
    for name, p in model.named_parameters():
        if ".lora_B" in name:
            p.normal_(std=0.1)  # as if trained: B != 0
    idx, lengths = batch()
    adapted = model(idx, lengths)
    changed = lora.merge(model)
    assert len(changed) == 2 * len(TARGETS)  # tiny model: 2 blocks
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(model(idx, lengths), adapted, rtol=0, atol=1e-5)
    assert set(changed) <= set(model.state_dict())  # plain GPT-2 names again


def test_adapters_live_on_the_models_device(model: GPT2Classifier) -> None:
    """Adapters added after model.to(device) must be created there (on CUDA they were left on
    the CPU). The meta device stands in for a GPU: it is not the default device either."""
    meta = torch.device("meta")
    model.to(meta)
    lora.add_adapters(model, 0, TARGETS, rank=4, alpha=8)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert any(".lora_A" in name for name, _ in tensors)
    assert {name: t.device for name, t in tensors if t.device != meta} == {}


@torch.no_grad()
def test_adapters_take_the_models_dtype(model: GPT2Classifier) -> None:
    model.double()
    lora.add_adapters(model, 0, TARGETS, rank=4, alpha=8)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    idx, lengths = batch()
    assert model(idx, lengths).dtype == torch.float64


@pytest.mark.parametrize(("rank", "alpha"), [(2, 8.0), (4, 1.0)])
@torch.no_grad()
def test_the_update_is_scaled_by_alpha_over_rank(rank: int, alpha: float) -> None:
    """y = x (W + (alpha / r) B A)^T + b, worked out here for a Linear of 3 -> 2."""
    linear = torch.nn.Linear(3, 2)
    wrapped = lora.LoRALinear(linear, rank, alpha)
    wrapped.lora_B.copy_(torch.arange(2 * rank, dtype=torch.float32).reshape(2, rank) / 10)
    x = torch.tensor([[1.0, -2.0, 0.5]])
    update = (alpha / rank) * (x @ wrapped.lora_A.T @ wrapped.lora_B.T)
    expected = x @ linear.weight.T + linear.bias + update
    torch.testing.assert_close(wrapped(x), expected)
    assert update.abs().max() > 0.01  # the update is not lost in the tolerance
    merged = lora.LoRALinear(torch.nn.Linear(3, 2), rank, alpha)
    merged.load_state_dict(wrapped.state_dict())
    torch.testing.assert_close(merged.merged()(x), expected)


# --- pinned by mutation testing (tools/mutate.py lora) ---


def test_adapter_a_starts_as_nn_linear_initialises_its_weight() -> None:
    """kaiming_uniform_(a=sqrt(5)): uniform within 1/sqrt(in_features), as nn.Linear's."""
    torch.manual_seed(0)
    adapter = lora.LoRALinear(torch.nn.Linear(64, 32), rank=16, alpha=16)
    bound = 1 / 64**0.5
    assert adapter.lora_A.shape == (16, 64) and adapter.lora_A.abs().max() <= bound
    assert adapter.lora_A.abs().max() > 0.95 * bound  # 1024 draws: one near the bound
    assert torch.equal(adapter.lora_B, torch.zeros(32, 16))


def test_targets_and_merged_names_are_paths_from_the_model() -> None:
    nested = torch.nn.Module()
    nested.a = torch.nn.Module()
    nested.a.b = torch.nn.Module()
    nested.a.b.c = torch.nn.Linear(2, 2)
    parent, name = lora._parent_and_name(nested, "a.b.c")  # the parent: all before the last dot
    assert parent is nested.a.b and name == "c"
    root = torch.nn.Sequential(lora.LoRALinear(torch.nn.Linear(4, 3), 2, 4))
    assert lora.merge(root) == ["0.weight"] and isinstance(root[0], torch.nn.Linear)
