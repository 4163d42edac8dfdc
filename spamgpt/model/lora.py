"""LoRA: train a low-rank update of frozen projections instead of the projections themselves.

A wrapped Linear computes y = x (W + (alpha / r) B A)^T + b, with A (r, in) random and B
(out, r) zero, so training starts from the pretrained function and only r * (in + out)
numbers per projection learn. After training, merge() folds B A into W and puts the plain
Linear back: inference costs nothing extra and the saved tensors keep GPT-2's names.
"""

import math

import torch
from torch import Tensor, nn

from spamgpt.model.gpt2 import GPT2Classifier


class LoRALinear(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.linear = linear
        self.scale = alpha / rank
        # On the wrapped weight's device and dtype: adapters added after model.to("cuda") must
        # not stay on the CPU.
        like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises

    @property
    def weight(self) -> Tensor:
        """The effective (out, in) weight; attention's single-position path reads it too."""
        return self.linear.weight + self.scale * (self.lora_B @ self.lora_A)

    @property
    def bias(self) -> Tensor | None:
        return self.linear.bias

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.linear.weight.copy_(self.weight)
        return self.linear


def _parent_and_name(block: nn.Module, target: str) -> tuple[nn.Module, str]:
    path = target if "." in target else f"attn.{target}"  # c_attn lives in attn
    parent_path, _, name = path.rpartition(".")
    return block.get_submodule(parent_path), name


def add_adapters(
    model: GPT2Classifier, first_block: int, targets: list[str], rank: int, alpha: float
) -> list[str]:
    """Wrap `targets` of blocks first_block.. in LoRA; freeze everything but the adapters and
    the head. Returns the names of the trainable parameters."""
    for block in model.gpt.h[first_block:]:
        for target in targets:
            parent, name = _parent_and_name(block, target)
            setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha))
    trained = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head.") or ".lora_" in name)
        if p.requires_grad:
            trained.append(name)
    return trained


def merge(model: GPT2Classifier) -> list[str]:
    """Fold every adapter into its weight, restoring plain Linears; returns the names of the
    weights that changed (what a fine-tuned model folder must store besides the head)."""
    changed = []
    for module_name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
                prefix = f"{module_name}.{child_name}" if module_name else child_name
                changed.append(f"{prefix}.weight")
    return changed
