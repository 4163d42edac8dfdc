import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spamgpt.errors import SpamGPTError
from spamgpt.model.gpt2 import GPT2, GPT2Classifier, GPTConfig
from spamgpt.random_hub import make_hub

VOCAB = 557  # 256 bytes + the 300 merges random_hub learns + <|endoftext|>


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_hub(tmp_path_factory.mktemp("hub"))
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == VOCAB
    return folder


@pytest.fixture
def copy(hub: Path, tmp_path: Path) -> Path:
    """A copy of the tiny repository that a test may damage."""
    return Path(shutil.copytree(hub, tmp_path / "gpt2"))


@pytest.fixture(scope="module")
def gpt(hub: Path) -> GPT2:
    return GPT2.from_pretrained(hub).eval()


def ids(*lengths: int, T: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random right-padded ids (B, T) whose padding is <|endoftext|> (the last id), and lengths."""
    g = torch.Generator().manual_seed(seed)
    T = max(T, *lengths)
    idx = torch.full((len(lengths), T), VOCAB - 1)
    for i, n in enumerate(lengths):
        idx[i, :n] = torch.randint(0, VOCAB - 1, (n,), generator=g)
    return idx, torch.tensor(lengths)


@torch.no_grad()
def test_logits_equal_transformers(hub: Path, gpt: GPT2) -> None:
    from transformers import GPT2LMHeadModel

    ref = GPT2LMHeadModel.from_pretrained(str(hub), dtype=torch.float32).eval()
    idx, _ = ids(17, 64, 5)
    ours, theirs = gpt(idx), ref(idx).logits
    assert ours.shape == theirs.shape == (3, 64, VOCAB)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@torch.no_grad()
def test_loads_transformers_save_pretrained(hub: Path, gpt: GPT2, tmp_path: Path) -> None:
    # transformers 5 saves under `transformer.`, without the attn.bias buffers.
    from transformers import GPT2LMHeadModel

    GPT2LMHeadModel.from_pretrained(str(hub)).save_pretrained(tmp_path)
    idx, _ = ids(9, 4)
    assert torch.equal(GPT2.from_pretrained(tmp_path).eval()(idx), gpt(idx))


@torch.no_grad()
def test_right_padding_leaves_real_logits_alone(gpt: GPT2) -> None:
    idx, _ = ids(7, 12, T=30)
    padded = gpt(idx)
    torch.testing.assert_close(padded[0, :7], gpt(idx[:1, :7])[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(padded[1, :12], gpt(idx[1:, :12])[0], rtol=0, atol=1e-6)


def test_too_long_for_context(gpt: GPT2) -> None:
    with pytest.raises(SpamGPTError, match="65 tokens is longer than the context 64"):
        gpt.embed(torch.zeros(1, 65, dtype=torch.long))


@torch.no_grad()
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_ignores_padding(gpt: GPT2, pooling: str) -> None:
    clf = GPT2Classifier(gpt, num_classes=2, pooling=pooling).eval()
    idx, lengths = ids(3, 20, 11, 1, T=24)
    logits = clf(idx, lengths)
    assert logits.shape == (4, 2)
    for i, n in enumerate(lengths.tolist()):
        alone = clf(idx[i : i + 1, :n], lengths[i : i + 1])
        torch.testing.assert_close(logits[i], alone[0], rtol=0, atol=1e-6)
    other_padding = torch.where(torch.arange(24) < lengths[:, None], idx, 0)
    torch.testing.assert_close(clf(other_padding, lengths), logits, rtol=0, atol=1e-6)


@torch.no_grad()
def test_pooling_reads_the_right_positions(gpt: GPT2) -> None:
    idx, lengths = ids(3, 8)
    h = gpt.hidden(idx)  # (B, T, d)
    last = GPT2Classifier(gpt, pooling="last").eval()
    torch.testing.assert_close(last(idx, lengths), last.head(h[[0, 1], [2, 7]]))
    mean = GPT2Classifier(gpt, pooling="mean").eval()
    pooled = torch.stack([h[0, :3].mean(0), h[1].mean(0)])
    torch.testing.assert_close(mean(idx, lengths), mean.head(pooled))


@torch.no_grad()
@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_forward_from_cached_prefix_is_exact(gpt: GPT2, pooling: str, k: int) -> None:
    clf = GPT2Classifier(gpt, pooling=pooling).eval()
    idx, lengths = ids(5, 16, 9)
    cached = gpt.blocks(gpt.embed(idx), 0, k)  # embeddings + the first k (frozen) blocks
    # Same operations on the same numbers, except with k = n_layer and last pooling, where
    # the cache holds the full final block while the uncached path runs it at one position.
    torch.testing.assert_close(
        clf(cached, lengths, frozen_blocks=k), clf(idx, lengths), rtol=0, atol=1e-6
    )


@torch.no_grad()
def test_block_forward_at_equals_full_block(gpt: GPT2) -> None:
    idx, lengths = ids(5, 16, 1, 9)
    x = gpt.embed(idx)  # (B, T, d), right-padded
    pos = lengths - 1
    for block in gpt.h:
        full = block(x)[torch.arange(len(x)), pos]  # (B, d)
        torch.testing.assert_close(block.forward_at(x, pos), full, rtol=0, atol=1e-6)
        x = block(x)


def test_unknown_pooling(gpt: GPT2) -> None:
    with pytest.raises(SpamGPTError, match="pooling"):
        GPT2Classifier(gpt, pooling="first")


def test_init_random_is_seeded_and_scaled(hub: Path) -> None:
    config = replace(GPTConfig.from_json(hub / "config.json"), n_layer=4, n_embd=64)
    torch.manual_seed(1)
    a = GPT2.init_random(config).state_dict()
    torch.manual_seed(1)
    b = GPT2.init_random(config).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["h.0.attn.c_attn.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    assert a["h.3.mlp.c_proj.weight"].std().item() == pytest.approx(0.02 / 8**0.5, rel=0.1)
    assert torch.equal(a["h.1.ln_2.weight"], torch.ones(64))
    assert not a["h.2.attn.c_proj.bias"].any()


def test_a_model_built_to_be_loaded_draws_nothing_and_holds_the_file_tensors(
    hub: Path, gpt: GPT2
) -> None:
    torch.manual_seed(0)
    loaded = GPT2.from_pretrained(hub, draw_initial_weights=False).eval()
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())  # no draw
    tensors = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert not any(t.is_meta for t in tensors.values())
    ours, reference = loaded.state_dict(), gpt.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert all(t.is_contiguous() for t in ours.values())  # the transposed ones too
    ids = torch.randint(
        0, gpt.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(loaded(ids), gpt.eval()(ids))


def test_a_pretrained_model_for_training_draws_as_building_one_does(hub: Path) -> None:
    """finetune's head and dropout follow the RNG as building GPT-2 leaves it."""
    torch.manual_seed(0)
    GPT2(GPTConfig.from_json(hub / "config.json"))
    built = torch.get_rng_state()
    torch.manual_seed(0)
    GPT2.from_pretrained(hub)
    assert torch.equal(torch.get_rng_state(), built)
    assert not torch.equal(built, torch.manual_seed(0).get_state())


def test_truncated_safetensors(copy: Path) -> None:
    path = copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(SpamGPTError, match=r"model\.safetensors is corrupt or truncated"):
        GPT2.from_pretrained(copy)


def test_missing_safetensors(copy: Path) -> None:
    (copy / "model.safetensors").unlink()
    with pytest.raises(SpamGPTError, match=r"model\.safetensors is missing"):
        GPT2.from_pretrained(copy)


def edit_tensors(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_missing_tensor(copy: Path) -> None:
    edit_tensors(copy, lambda t: t.pop("h.1.mlp.c_fc.bias"))
    with pytest.raises(SpamGPTError, match=r"tensor h\.1\.mlp\.c_fc\.bias is missing"):
        GPT2.from_pretrained(copy)


def test_another_architectures_tensors_are_refused_naming_them(copy: Path) -> None:
    """A config.json that passes for GPT-2 over weights of another layout (Llama's names)."""

    def llama(tensors: dict) -> None:
        tensors.clear()
        tensors["model.embed_tokens.weight"] = torch.zeros(VOCAB, 32)

    edit_tensors(copy, llama)
    with pytest.raises(SpamGPTError) as info:
        GPT2.from_pretrained(copy)
    assert str(info.value) == (
        f"{copy / 'model.safetensors'}: tensor wte.weight is missing (the file has tensors "
        "named like 'model.embed_tokens.weight'): not a complete GPT-2 checkpoint"
    )


def test_unexpected_tensor(copy: Path) -> None:
    edit_tensors(copy, lambda t: t.update({"h.2.ln_1.weight": torch.ones(32)}))
    with pytest.raises(SpamGPTError, match=r"unexpected tensor h\.2\.ln_1\.weight"):
        GPT2.from_pretrained(copy)


def test_untied_lm_head(copy: Path) -> None:
    edit_tensors(copy, lambda t: t.update({"lm_head.weight": torch.zeros(VOCAB, 32)}))
    with pytest.raises(SpamGPTError, match=r"lm_head\.weight is not tied"):
        GPT2.from_pretrained(copy)


def test_transformer_prefix_and_tied_head(copy: Path, gpt: GPT2) -> None:
    def prefix(t: dict[str, torch.Tensor]) -> None:
        for k in list(t):
            t["transformer." + k] = t.pop(k)
        t["lm_head.weight"] = t["transformer.wte.weight"].clone()

    edit_tensors(copy, prefix)
    idx, _ = ids(6)
    with torch.no_grad():
        assert torch.equal(GPT2.from_pretrained(copy).eval()(idx), gpt(idx))


@pytest.mark.parametrize(
    ("key", "value", "tensor", "shape"),
    [
        ("vocab_size", 600, "wte.weight", f"({VOCAB}, 32), config.json implies (600, 32)"),
        ("n_positions", 32, "wpe.weight", "(64, 32), config.json implies (32, 32)"),
        ("n_embd", 64, "wte.weight", f"({VOCAB}, 32), config.json implies ({VOCAB}, 64)"),
    ],
)
def test_shape_mismatch_with_config(copy: Path, key: str, value: int, tensor: str, shape: str):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {key: value}))
    with pytest.raises(SpamGPTError, match=re.escape(f"tensor {tensor} has shape {shape}")):
        GPT2.from_pretrained(copy)


def test_transposed_shape_mismatch(copy: Path) -> None:
    edit_tensors(copy, lambda t: t.update({"h.0.mlp.c_fc.weight": torch.zeros(128, 32)}))
    with pytest.raises(SpamGPTError, match=r"h\.0\.mlp\.c_fc\.weight has shape \(128, 32\)"):
        GPT2.from_pretrained(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"n_head": None}, "key 'n_head' is missing"),
        ({"n_positions": None, "n_ctx": None}, "key 'n_ctx' is missing"),
        ({"n_layer": "12"}, "'n_layer' is '12', not a positive int"),
        ({"n_embd": 0}, "'n_embd' is 0, not a positive int"),
        ({"n_embd": 32.0}, "'n_embd' is 32.0, not a positive int"),
        ({"layer_norm_epsilon": -1e-5}, "'layer_norm_epsilon' is -1e-05, not a positive float"),
        ({"vocab_size": True}, "'vocab_size' is True"),
        ({"n_head": 5}, "n_embd 32 is not a multiple of n_head"),
        ({"activation_function": "relu"}, "activation_function must be 'gelu_new'"),
        (
            {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
            "model_type is 'llama' (LlamaForCausalLM), not 'gpt2': spamgpt fine-tunes "
            "GPT-2-family checkpoints",
        ),
        ({"n_inner": 64}, "n_inner is 64; this GPT-2 supports null or 128"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx is True"),
    ],
)
def test_bad_config(hub: Path, tmp_path: Path, edit: dict, message: str) -> None:
    config = json.loads((hub / "config.json").read_text()) | edit
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    with pytest.raises(SpamGPTError, match=re.escape(f"config.json: {message}")):
        GPTConfig.from_json(path)


def test_config_defaults_and_n_ctx(hub: Path, tmp_path: Path) -> None:
    config = json.loads((hub / "config.json").read_text())
    del config["n_positions"], config["layer_norm_epsilon"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    got = GPTConfig.from_json(tmp_path / "config.json")
    assert got == GPTConfig(n_layer=2, n_head=4, n_embd=32, n_ctx=64, vocab_size=VOCAB)


def test_a_six_block_config_without_model_type_or_n_inner_set(hub: Path, tmp_path: Path) -> None:
    """distilgpt2's shapes (6 blocks), n_inner null as GPT-2's configs write it."""
    config = json.loads((hub / "config.json").read_text()) | {"n_layer": 6, "n_inner": None}
    del config["model_type"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert GPTConfig.from_json(tmp_path / "config.json").n_layer == 6


def test_config_not_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(SpamGPTError, match=r"config\.json is not valid JSON"):
        GPTConfig.from_json(tmp_path / "config.json")


def test_a_model_built_on_the_meta_device_draws_nothing_and_imports_no_dynamo() -> None:
    """What classify, predict, serving and evaluate build to load every tensor: normal_ of a
    meta tensor would import torch._dynamo (seconds of each start); on the CPU the draws, and
    so the RNG that training follows, are GPT-2's as before."""
    code = (
        "import sys, torch\n"
        "from spamgpt.model.gpt2 import GPT2, GPT2Classifier, GPTConfig\n"
        "config = GPTConfig(n_layer=1, n_head=2, n_embd=8, n_ctx=16, vocab_size=50)\n"
        "with torch.device('meta'):\n"
        "    model = GPT2Classifier(GPT2(config), 3)\n"
        "print(all(p.is_meta for p in model.parameters()), 'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
    config = GPTConfig(n_layer=1, n_head=2, n_embd=8, n_ctx=16, vocab_size=50)
    torch.manual_seed(0)
    model = GPT2Classifier(GPT2(config), 3)
    torch.manual_seed(0)
    wte, wpe = torch.randn(50, 8), torch.randn(16, 8)  # nn.Embedding's N(0, 1), in order
    assert torch.equal(model.gpt.wte.weight, wte) and torch.equal(model.gpt.wpe.weight, wpe)
    assert model.head.weight.std() < 0.1 and not model.head.bias.any()


def test_the_classifier_runs_where_its_inputs_are() -> None:
    """The masks and positions it builds are on the inputs' device (the meta device here,
    as a CUDA card would be): no tensor left on the CPU beside them."""
    config = GPTConfig(n_layer=2, n_head=2, n_embd=8, n_ctx=16, vocab_size=50)
    with torch.device("meta"):
        clf = GPT2Classifier(GPT2(config), 3)
    idx, lengths = torch.zeros(2, 5, dtype=torch.long, device="meta"), torch.tensor([5, 3])
    for pooling in ("last", "mean"):
        clf.pooling = pooling
        assert clf(idx, lengths).shape == (2, 3)
        assert clf(torch.zeros(2, 5, 8, device="meta"), lengths, 1).shape == (2, 3)


def test_attention_dropout_applies_in_training_only() -> None:
    """With attention dropout 1 every attention weight is dropped in training (the output is
    c_proj's bias), none in eval mode: at one position as over every position."""
    config = GPTConfig(n_layer=1, n_head=2, n_embd=8, n_ctx=16, vocab_size=50)
    torch.manual_seed(0)
    attn = GPT2.init_random(config).h[0].attn
    attn.dropout, attn.resid_dropout.p = 1.0, 0.0
    with torch.no_grad():
        attn.c_proj.bias.copy_(torch.arange(8.0))
    x, pos = torch.randn(2, 5, 8), torch.tensor([4, 2])
    with torch.no_grad():
        attn.train()
        assert torch.equal(attn.forward_at(x, pos), attn.c_proj.bias.expand(2, 8))
        assert torch.equal(attn(x), attn.c_proj.bias.expand(2, 5, 8))
        attn.eval()
        full = attn(x)[torch.arange(2), pos]
        assert not torch.equal(full, attn.c_proj.bias.expand(2, 8))
        torch.testing.assert_close(attn.forward_at(x, pos), full, rtol=0, atol=1e-6)


@torch.no_grad()
def test_last_pooling_reads_the_final_blocks_output_of_a_deeper_model() -> None:
    """Three blocks: the last position runs through the third block, not the second."""
    config = GPTConfig(n_layer=3, n_head=2, n_embd=16, n_ctx=16, vocab_size=50)
    torch.manual_seed(0)
    clf = GPT2Classifier(GPT2.init_random(config)).eval()
    idx, lengths = torch.randint(0, 50, (2, 7)), torch.tensor([7, 4])
    h = clf.gpt.hidden(idx)
    torch.testing.assert_close(clf(idx, lengths), clf.head(h[[0, 1], [6, 3]]), rtol=0, atol=1e-6)


def test_defaults_two_classes_single_label_last_token_no_dropout(hub: Path) -> None:
    gpt = GPT2.from_pretrained(hub)
    assert gpt.config.dropout == 0.0 and gpt.drop.p == 0.0 and gpt.h[0].attn.dropout == 0.0
    clf = GPT2Classifier(gpt)
    assert clf.head.out_features == 2 and clf.label_format == "single" and clf.pooling == "last"
    assert GPT2Classifier(gpt, 4, "mean", "multi").label_format == "multi"


def test_a_truncated_file_says_what_safetensors_found(copy: Path) -> None:
    from safetensors import SafetensorError

    path = copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(SafetensorError) as reason:
        load_file(path)
    with pytest.raises(SpamGPTError) as info:
        GPT2.from_pretrained(copy)
    assert str(info.value) == (
        f"{path} is corrupt or truncated: {str(reason.value).splitlines()[0]}"
    )


def test_unreadable_or_non_object_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SpamGPTError) as info:
        GPTConfig.from_json(tmp_path / "config.json")
    assert str(info.value) == f"cannot read {tmp_path / 'config.json'}: No such file or directory"
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(SpamGPTError) as info:
        GPTConfig.from_json(tmp_path / "config.json")
    assert str(info.value) == f"{tmp_path / 'config.json'} is not a JSON object"


@pytest.mark.parametrize(
    ("architectures", "named"),
    [(["LlamaForCausalLM", "LlamaModel"], "LlamaForCausalLM, LlamaModel"),
     (None, "no architecture named")],
)  # fmt: skip
def test_another_model_type_names_its_architectures(
    hub: Path, tmp_path: Path, architectures: list[str] | None, named: str
) -> None:
    config = json.loads((hub / "config.json").read_text()) | {"model_type": "llama"}
    config.pop("architectures", None)
    if architectures:
        config["architectures"] = architectures
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpamGPTError, match=re.escape(f"model_type is 'llama' ({named}), not")):
        GPTConfig.from_json(tmp_path / "config.json")


def test_a_config_without_activation_function_is_gpt2s_gelu_new(hub: Path, tmp_path: Path):
    config = json.loads((hub / "config.json").read_text())
    config.pop("activation_function", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert GPTConfig.from_json(tmp_path / "config.json") == GPTConfig.from_json(hub / "config.json")


def test_a_file_of_mask_buffers_only_has_no_other_tensor(copy: Path) -> None:
    edit_tensors(copy, lambda t: [t.clear(), t.update({"h.0.attn.bias": torch.ones(1, 1)})])
    with pytest.raises(SpamGPTError) as info:
        GPT2.from_pretrained(copy)
    assert str(info.value) == (
        f"{copy / 'model.safetensors'}: tensor wte.weight is missing (the file has no other "
        "tensor): not a complete GPT-2 checkpoint"
    )


def test_dropout_reaches_every_dropout_of_the_model(hub: Path) -> None:
    gpt = GPT2.from_pretrained(hub, dropout=0.25)
    rates = {m.p for m in gpt.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.25} and {b.attn.dropout for b in gpt.h} == {0.25}


@torch.no_grad()
def test_layer_norm_epsilon_is_every_norms_as_in_transformers(copy: Path) -> None:
    """A config.json's layer_norm_epsilon (large here, so that it shows in the logits) is used
    by ln_1, ln_2 and ln_f alike: the logits are still transformers'."""
    from transformers import GPT2LMHeadModel

    config = json.loads((copy / "config.json").read_text()) | {"layer_norm_epsilon": 0.5}
    (copy / "config.json").write_text(json.dumps(config))
    ours = GPT2.from_pretrained(copy).eval()
    ref = GPT2LMHeadModel.from_pretrained(str(copy), dtype=torch.float32).eval()
    idx, _ = ids(9, 4)
    torch.testing.assert_close(ours(idx), ref(idx).logits, rtol=0, atol=1e-4)
    norms = [m for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and {m.eps for m in norms} == {0.5}
