"""spamgpt.random_hub: a hub folder of GPT-2's files and formats, with random weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from spamgpt import random_hub
from spamgpt.data import tokenizer
from spamgpt.data.tokenizer import bytes_to_unicode
from spamgpt.model.gpt2 import GPT2
from spamgpt.random_hub import hub_dir, make_hub


def test_command_writes_a_hub_the_model_and_tokenizer_load(tmp_path):
    cmd = [sys.executable, "-m", "spamgpt.random_hub", str(tmp_path), "--layers", "2",
           "--dim", "32", "--heads", "4", "--n-ctx", "64", "--revision", "r1"]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
    folder = hub_dir(tmp_path, revision="r1")
    assert out == str(folder)
    config = json.loads((folder / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["n_ctx"]) == (
        2,
        32,
        4,
        64,
    )
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.get_slice("wte.weight").get_shape() == [config["vocab_size"], 32]
        assert f.get_slice("h.1.mlp.c_fc.weight").get_shape() == [32, 128]  # Conv1D: (in, out)
    model = GPT2.from_pretrained(folder)
    assert len(model.h) == 2
    enc = tokenizer.load(folder)
    assert enc.decode(enc.encode_ordinary("Free entry in 2 a wkly comp")) == (
        "Free entry in 2 a wkly comp"
    )


def test_a_given_tokenizer_is_copied_and_sizes_the_vocab(tmp_path):
    source = make_hub(tmp_path / "a", num_merges=50)
    folder = make_hub(tmp_path / "b", tokenizer=str(source))
    for name in ("vocab.json", "merges.txt"):
        assert (folder / name).read_bytes() == (source / name).read_bytes()
    vocab = json.loads((source / "vocab.json").read_text())
    assert (
        json.loads((folder / "config.json").read_text())["vocab_size"] == len(vocab) == 256 + 50 + 1
    )


def test_bpe_merges_the_most_frequent_pair_first_ties_to_the_smallest() -> None:
    """Words aaab, ' aab', ' ab' (a space is 'Ġ' in GPT-2's bytes): (a, a) and (a, b) occur 3
    times, (a, a) the smaller; then (a, b) twice; then each pair once, the smallest first
    ('Ġ' sorts after letters); it stops when every word is one token."""
    assert random_hub.train_bpe("aaab aab ab", 10) == [
        ("a", "a"), ("a", "b"), ("aa", "ab"), ("aa", "b"), ("\u0120", "aab"), ("\u0120", "ab"),
    ]  # fmt: skip
    assert random_hub.train_bpe("aaab aab ab", 2) == [("a", "a"), ("a", "b")]


def test_tensors_are_named_and_shaped_as_gpt2s_safetensors() -> None:
    """openai-community/gpt2's layout (d the width): Conv1D weights (in, out), the causal
    mask buffers; that transformers loads it: tests/test_gpt2.py."""
    d, n_ctx, vocab = 8, 16, 50
    block = {
        "ln_1.weight": (d,), "ln_1.bias": (d,), "attn.bias": (1, 1, n_ctx, n_ctx),
        "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
        "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
        "ln_2.weight": (d,), "ln_2.bias": (d,),
        "mlp.c_fc.weight": (d, 4 * d), "mlp.c_fc.bias": (4 * d,),
        "mlp.c_proj.weight": (4 * d, d), "mlp.c_proj.bias": (d,),
    }  # fmt: skip
    expected = {"wte.weight": (vocab, d), "wpe.weight": (n_ctx, d)}
    expected |= {f"h.{i}.{name}": shape for i in range(2) for name, shape in block.items()}
    expected |= {"ln_f.weight": (d,), "ln_f.bias": (d,)}
    tensors = random_hub.gpt2_tensors(2, d, n_ctx, vocab, seed=0)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    for i in range(2):  # the causal mask: 1 on and below the diagonal
        mask = torch.tril(torch.ones(n_ctx, n_ctx)).view(1, 1, n_ctx, n_ctx)
        assert torch.equal(tensors[f"h.{i}.attn.bias"], mask)


def test_tensors_are_seeded_with_gains_around_1_and_spread_0_1() -> None:
    tensors = random_hub.gpt2_tensors(1, 64, 8, 300, seed=3)
    again = random_hub.gpt2_tensors(1, 64, 8, 300, seed=3)
    assert all(torch.equal(tensors[k], again[k]) for k in tensors)
    other = random_hub.gpt2_tensors(1, 64, 8, 300, seed=4)
    assert not torch.equal(tensors["wte.weight"], other["wte.weight"])
    wte = tensors["wte.weight"]  # 19200 draws of 0.1 * N(0, 1), the generator's first
    assert torch.equal(wte, 0.1 * torch.randn(300, 64, generator=torch.Generator().manual_seed(3)))
    assert abs(wte.mean().item()) < 0.01 and 0.095 < wte.std().item() < 0.105
    for gain in ("h.0.ln_1.weight", "h.0.ln_2.weight", "ln_f.weight"):
        assert abs(tensors[gain].mean().item() - 1) < 0.05  # 64 draws around 1
    for bias in ("h.0.ln_1.bias", "h.0.attn.c_proj.bias", "ln_f.bias"):
        assert abs(tensors[bias].mean().item()) < 0.05 and tensors[bias].std().item() > 0.05


def test_a_hub_holds_gpt2s_config_and_ids_in_gpt2s_order(tmp_path: Path) -> None:
    folder = make_hub(tmp_path, num_merges=40, seed=5)
    assert folder == tmp_path / "openai-community/gpt2/resolve" / random_hub.REVISION
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = random_hub.train_bpe(random_hub.TEXT, 40)
    byte_tokens = list(bytes_to_unicode().values())
    assert list(vocab) == [*byte_tokens, *(a + b for a, b in merges), "<|endoftext|>"]
    assert list(vocab.values()) == list(range(256 + 40 + 1))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    assert json.loads((folder / "config.json").read_text(encoding="utf-8")) == {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1, "bos_token_id": 296, "embd_pdrop": 0.1, "eos_token_id": 296,
        "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
        "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2, "n_positions": 64,
        "resid_pdrop": 0.1, "vocab_size": 297,
    }  # fmt: skip
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        expected = random_hub.gpt2_tensors(2, 32, 64, 297, seed=5)
        assert sorted(f.keys()) == sorted(expected)
        assert torch.equal(f.get_tensor("h.1.mlp.c_fc.weight"), expected["h.1.mlp.c_fc.weight"])


def test_the_default_hub_is_tiny_with_300_merges(tmp_path: Path) -> None:
    config = json.loads((make_hub(tmp_path) / "config.json").read_text(encoding="utf-8"))
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["n_ctx"]) == (
        2,
        32,
        4,
        64,
    )
    assert config["vocab_size"] == 256 + 300 + 1


def test_the_command_passes_each_option_and_defaults_to_gpt2_124m(monkeypatch, capsys) -> None:
    made = []
    monkeypatch.setattr(random_hub, "make_hub", lambda root, **kw: made.append((root, kw)) or root)
    random_hub.main(["hubs"])
    assert made.pop() == ("hubs", {
        "layers": 12, "dim": 768, "heads": 12, "n_ctx": 1024, "repo_id": "openai-community/gpt2",
        "revision": "random-weights", "seed": 0, "num_merges": 300, "tokenizer": None,
    })  # fmt: skip
    random_hub.main(["hubs", "--layers", "1", "--dim", "16", "--heads", "2", "--n-ctx", "8",
                     "--repo-id", "a/b", "--revision", "r", "--seed", "3", "--merges", "20",
                     "--tokenizer", "gpt2"])  # fmt: skip
    assert made.pop() == ("hubs", {
        "layers": 1, "dim": 16, "heads": 2, "n_ctx": 8, "repo_id": "a/b", "revision": "r",
        "seed": 3, "num_merges": 20, "tokenizer": "gpt2",
    })  # fmt: skip
    assert capsys.readouterr().out == "hubs\nhubs\n"  # the folder made


def test_a_pair_in_several_words_counts_each() -> None:
    """(x, y) once in 'xy' and once in ' xy': 2, more than (a, b)'s 1 though it sorts after."""
    assert random_hub.train_bpe("xy ab xy", 1) == [("x", "y")]


def test_a_hub_made_again_in_place_with_its_revision(tmp_path: Path, ascii_locale) -> None:
    """Its files in UTF-8 whatever the locale (merges.txt holds 'Ġ'), config.json indented."""
    first = make_hub(tmp_path, revision="r1", num_merges=20)
    assert (
        make_hub(tmp_path, revision="r1", num_merges=20)
        == first
        == hub_dir(tmp_path, revision="r1")
    )
    assert "\u0120" in (first / "merges.txt").read_text(encoding="utf-8")
    config = json.loads((first / "config.json").read_text(encoding="utf-8"))
    assert (first / "config.json").read_text(encoding="utf-8") == json.dumps(config, indent=2)
    with safe_open(str(first / "model.safetensors"), "pt") as f:  # seeded 0 by default
        expected = random_hub.gpt2_tensors(2, 32, 64, 256 + 20 + 1, seed=0)["wte.weight"]
        assert torch.equal(f.get_tensor("wte.weight"), expected)


PAD = " " * len("usage: python -m spamgpt.random_hub ")


def test_the_commands_help_names_each_option(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exited:
        random_hub.main(["--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == (
        "usage: python -m spamgpt.random_hub [-h] [--layers LAYERS] [--dim DIM] [--heads HEADS]\n"
        f"{PAD}[--n-ctx N_CTX] [--repo-id REPO_ID] [--revision REVISION]\n"
        f"{PAD}[--seed SEED] [--merges MERGES] [--tokenizer TOKENIZER]\n"
        f"{PAD}root\n"
        "\n"
        "Write a GPT-2 hub folder with random weights in the real layout.\n"
        "\n"
        "positional arguments:\n"
        "  root                  the folder to serve; files go to ROOT/REPO_ID/resolve/REV/\n"
        "\n"
        "options:\n"
        "  -h, --help            show this help message and exit\n"
        "  --layers LAYERS\n"
        "  --dim DIM\n"
        "  --heads HEADS\n"
        "  --n-ctx N_CTX\n"
        "  --repo-id REPO_ID\n"
        "  --revision REVISION\n"
        "  --seed SEED\n"
        "  --merges MERGES       BPE merges learnt (no --tokenizer)\n"
        "  --tokenizer TOKENIZER\n"
        "                        a folder with GPT-2's vocab.json and merges.txt to use\n"
    )  # fmt: skip


def test_a_given_tokenizers_utf_8_vocab_is_read_whatever_the_locale(tmp_path, ascii_locale):
    """Hugging Face's vocab.json holds its tokens unescaped ('Ġ' as UTF-8 bytes)."""
    source = make_hub(tmp_path / "a", num_merges=10)
    vocab = json.loads((source / "vocab.json").read_text(encoding="utf-8"))
    (source / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    folder = make_hub(tmp_path / "b", tokenizer=source)
    assert json.loads((folder / "config.json").read_text(encoding="utf-8"))["vocab_size"] == 267
