import json
import subprocess
import sys

from safetensors import safe_open

from spamgpt.data import tokenizer
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
