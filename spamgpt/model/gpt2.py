"""GPT-2 in one file, after nanoGPT's model.py, plus the classifier fine-tuned on SMS spam.

Modules are named after the tensors of Hugging Face's openai-community/gpt2 model.safetensors
(wte, wpe, h.N.ln_1, h.N.attn.c_attn, ...), so loading is one loop over our state_dict.
The forward pass comes apart (embed, blocks[start:stop], ln_f) so that fine-tuning can run
the frozen prefix once per message, cache its output and train only the tail.
"""

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from spamgpt.errors import SpamGPTError

# Conv1D in the checkpoint stores (in, out); nn.Linear wants (out, in).
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers that some exports save; our attention builds the mask itself.
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(masked_)?bias")
POOLINGS = ("last", "mean")
# config.json keys of GPT-2 variants this model does not compute, at the value it does.
COMPUTE_OPTIONS = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
}


@dataclass
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_ctx: int = 1024  # block size: the number of positions wpe has
    vocab_size: int = 50257
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "GPTConfig":
        """Read a Hugging Face GPT-2 config.json, refusing what this model cannot be."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise SpamGPTError(f"cannot read {path}: {e.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SpamGPTError(f"{path} is not valid JSON") from None
        if not isinstance(raw, dict):
            raise SpamGPTError(f"{path} is not a JSON object")
        model_type = raw.get("model_type", "gpt2")  # GPT-2's oldest configs have none
        if model_type != "gpt2":
            what = ", ".join(map(str, raw.get("architectures") or [])) or "no architecture named"
            raise SpamGPTError(
                f"{path}: model_type is {model_type!r} ({what}), not 'gpt2': spamgpt fine-tunes "
                f"GPT-2-family checkpoints (gpt2, distilgpt2, gpt2-medium..xl and their fine-tunes)"
            )

        def get(key: str, kind: type = int, default: float | None = None) -> Any:
            """raw[key] as a positive `kind` (int, or float which also takes an int)."""
            value = raw.get(key, default)
            if value is None:
                raise SpamGPTError(f"{path}: key {key!r} is missing")
            # bool is an int to Python but never a size here.
            if isinstance(value, bool) or not isinstance(value, (kind, int)) or value <= 0:
                raise SpamGPTError(f"{path}: {key!r} is {value!r}, not a positive {kind.__name__}")
            return kind(value)

        n_ctx_key = "n_positions" if "n_positions" in raw else "n_ctx"
        config = cls(
            n_layer=get("n_layer"),
            n_head=get("n_head"),
            n_embd=get("n_embd"),
            n_ctx=get(n_ctx_key),
            vocab_size=get("vocab_size"),
            layer_norm_epsilon=get("layer_norm_epsilon", float, 1e-5),
        )
        if config.n_embd % config.n_head:
            raise SpamGPTError(f"{path}: n_embd {config.n_embd} is not a multiple of n_head")
        if raw.get("activation_function", "gelu_new") != "gelu_new":
            raise SpamGPTError(f"{path}: activation_function must be 'gelu_new'")
        # GPT-2 options that change what the blocks compute, at the values this model has.
        for key, value in {**COMPUTE_OPTIONS, "n_inner": (None, 4 * config.n_embd)}.items():
            allowed = value if isinstance(value, tuple) else (value,)
            if raw.get(key, allowed[0]) not in allowed:
                raise SpamGPTError(
                    f"{path}: {key} is {raw[key]!r}; this GPT-2 supports "
                    + " or ".join(json.dumps(v) for v in allowed)
                )
        return config


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v of all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> q, k, v each (B, n_head, T, head_size)
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            for t in self.c_attn(x).split(C, dim=2)
        )
        # Position t attends to 0..t only. Sequences are right-padded, so a real token never
        # sees the padding after it: no padding mask is needed, and the outputs at padded
        # positions (which do see real tokens) are ignored by whoever reads the hidden states.
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def forward_at(self, x: Tensor, pos: Tensor) -> Tensor:
        """The output at one position per sequence, (B, C), for x (B, T, C) and pos (B,).

        That position still attends to every key and value at or before it, but needs only
        its own query and output projection: for a classifier reading the last real token,
        the final block costs one query per message instead of one per token.
        """
        B, T, C = x.shape
        # Rows: q, then k and v. Slices, not split(): an exported graph folds a slice of a
        # constant weight into a constant (ONNX constant folding skips multi-output Split).
        w, b = self.c_attn.weight, self.c_attn.bias
        w_q, w_kv, b_q, b_kv = w[:C], w[C:], b[:C], b[C:]
        q = F.linear(x[torch.arange(B, device=x.device), pos], w_q, b_q)  # (B, C)
        q = q.view(B, self.n_head, 1, C // self.n_head)  # (B, nh, 1, hs)
        k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            for t in F.linear(x, w_kv, b_kv).split(C, dim=2)
        )  # each (B, nh, T, hs)
        visible = torch.arange(T, device=x.device) <= pos[:, None]  # (B, T): causal + padding
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=visible[:, None, None, :], dropout_p=dropout_p
        )  # (B, nh, 1, hs)
        return self.resid_dropout(self.c_proj(y.reshape(B, C)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_at(self, x: Tensor, pos: Tensor) -> Tensor:
        """forward(x)[b, pos[b]] for each b, (B, C), computing the rest only as far as needed."""
        # x.shape[0], not len(x): an int there would fix the batch size of an exported graph.
        rows = torch.arange(x.shape[0], device=x.device)
        y = x[rows, pos] + self.attn.forward_at(self.ln_1(x), pos)
        return y + self.mlp(self.ln_2(y))


class Embedding(nn.Embedding):
    """nn.Embedding, but built on the meta device (to take every tensor from a file) it draws
    nothing: normal_ of a meta tensor runs through torch._refs, whose first call imports
    torch._dynamo, about 2 s of every classify, predict and serving start."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class GPT2(nn.Module):
    """GPT-2 without the `transformer.` level; the LM head is wte itself (tied)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = Embedding(config.vocab_size, config.n_embd)
        self.wpe = Embedding(config.n_ctx, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def embed(self, idx: Tensor) -> Tensor:
        """Token ids (B, T) -> token + position embeddings (B, T, n_embd)."""
        n_ctx, seq_len = self.config.n_ctx, idx.shape[1]
        if seq_len > n_ctx:
            raise SpamGPTError(f"sequence of {seq_len} tokens is longer than the context {n_ctx}")
        pos = torch.arange(seq_len, device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, d) + (T, d)

    def blocks(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Run blocks h[start:stop] on hidden states (B, T, n_embd)."""
        for block in self.h[start:stop]:
            x = block(x)
        return x

    def hidden(self, idx: Tensor) -> Tensor:
        """Final hidden states (B, T, n_embd): all blocks, then ln_f."""
        return self.ln_f(self.blocks(self.embed(idx)))

    def forward(self, idx: Tensor) -> Tensor:
        """Next-token logits (B, T, vocab_size)."""
        return F.linear(self.hidden(idx), self.wte.weight)

    @classmethod
    def init_random(cls, config: GPTConfig) -> "GPT2":
        """GPT-2's initialisation, drawn from torch's global RNG (the caller seeds it)."""
        model = cls(config)
        for module in model.modules():  # LayerNorms keep their default gain 1, bias 0
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                # Each block adds two residual branches: scale them so the residual stream's
                # variance does not grow with depth (GPT-2 paper, as in nanoGPT).
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))
        return model

    @classmethod
    def from_pretrained(
        cls, model_dir: str | os.PathLike, dropout: float = 0.0, draw_initial_weights: bool = True
    ) -> "GPT2":
        """Load model_dir/config.json and model_dir/model.safetensors (Hugging Face layout); the
        model takes the file's tensors as its own (load_state_dict(assign=True)).

        `draw_initial_weights` false: built on the meta device, so nothing is allocated or
        drawn before the tensors come in (for a model whose every tensor is loaded). True, as
        for training: nn.Linear and nn.Embedding draw their default initialisation first, so
        the head's initialisation and dropout follow the RNG as that leaves it."""
        model_dir = Path(model_dir)
        config = GPTConfig.from_json(model_dir / "config.json")
        config.dropout = dropout
        path = model_dir / "model.safetensors"
        try:
            raw = load_file(path)
        except FileNotFoundError:
            raise SpamGPTError(f"{path} is missing") from None
        except SafetensorError as e:
            raise SpamGPTError(
                f"{path} is corrupt or truncated: {str(e).splitlines()[0]}"
            ) from None
        # Older exports of GPT2LMHeadModel put everything under `transformer.`.
        theirs = {
            k.removeprefix("transformer."): v
            for k, v in raw.items()
            if not MASK_BUFFER.fullmatch(k.removeprefix("transformer."))
        }
        lm_head = theirs.pop("lm_head.weight", None)

        with contextlib.nullcontext() if draw_initial_weights else torch.device("meta"):
            model = cls(config)
        state = {}
        for k, ours in model.state_dict().items():
            if k not in theirs:
                seen = f"tensors named like {min(theirs)!r}" if theirs else "no other tensor"
                raise SpamGPTError(
                    f"{path}: tensor {k} is missing (the file has {seen}): "
                    f"not a complete GPT-2 checkpoint"
                )
            w = theirs.pop(k)
            want = ours.shape[::-1] if k.endswith(TRANSPOSED) else ours.shape
            if w.shape != want:
                raise SpamGPTError(
                    f"{path}: tensor {k} has shape {tuple(w.shape)}, "
                    f"config.json implies {tuple(want)}"
                )
            state[k] = w.t().contiguous() if k.endswith(TRANSPOSED) else w
        model.load_state_dict(state, assign=True)
        if theirs:
            raise SpamGPTError(f"{path}: unexpected tensor {min(theirs)}")
        if lm_head is not None and not torch.equal(lm_head, model.wte.weight):
            raise SpamGPTError(f"{path}: lm_head.weight is not tied to wte.weight")
        return model


class GPT2Classifier(nn.Module):
    """GPT-2's final hidden states pooled over each message's real tokens, then a linear head."""

    def __init__(
        self, gpt: GPT2, num_classes: int = 2, pooling: str = "last", label_format: str = "single"
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise SpamGPTError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.gpt = gpt
        self.pooling = pooling
        self.label_format = (
            label_format  # its task's (spamgpt.tasks.registry): what its logits mean
        )
        self.head = nn.Linear(gpt.config.n_embd, num_classes)
        # Small like GPT-2's own weights: logits start near 0, the first loss near ln(classes).
        # Nothing to draw on the meta device (see Embedding).
        if not self.head.weight.is_meta:
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward(self, inputs: Tensor, lengths: Tensor, frozen_blocks: int | None = None) -> Tensor:
        """Logits (B, num_classes) of right-padded messages with real lengths (B,), each >= 1.

        inputs: token ids (B, T); or, given frozen_blocks K, the hidden states (B, T, n_embd)
        after the first K blocks. For a frozen prefix, gpt.blocks(gpt.embed(ids), 0, K) can be
        computed once (without dropout) and cached; forward(cached, lengths, K) then gives the
        logits of forward(ids, lengths). One entry point, so DistributedDataParallel sees both.
        """
        hidden = self.gpt.embed(inputs) if frozen_blocks is None else inputs
        start = frozen_blocks or 0
        gpt, lengths = self.gpt, lengths.to(hidden.device)
        if self.pooling == "last":
            # Only the last real token is read: the final block runs for that position alone.
            x = gpt.blocks(hidden, start, gpt.config.n_layer - 1)
            last = lengths - 1
            if start < gpt.config.n_layer:
                pooled = gpt.h[-1].forward_at(x, last)  # (B, d)
            else:  # the cached states are already the final block's output
                pooled = x[torch.arange(len(x), device=x.device), last]
            return self.head(gpt.ln_f(pooled))
        x = gpt.ln_f(gpt.blocks(hidden, start))  # (B, T, d)
        real = torch.arange(x.shape[1], device=x.device) < lengths[:, None]  # (B, T)
        return self.head((x * real[..., None]).sum(1) / lengths[:, None])  # mean of real tokens
