"""The cached trunk is exact, and bf16 stays within its rounding of fp32."""

import copy
import io
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_runtime import NATIVE_BF16

from spamgpt import paths, runtime
from spamgpt.data import tensorfile, tokenized
from spamgpt.data.batching import ModelInputs, PackedSequences, padded_width, sorted_order
from spamgpt.errors import SpamGPTError
from spamgpt.finetune import train
from spamgpt.labels import SMS
from spamgpt.model import classifier, trunk
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.params import TrainParams
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute

CPU = torch.device("cpu")
FP32_CPU = Compute(CPU, "fp32")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> GPT2Classifier:
    torch.manual_seed(0)
    hub = make_hub(tmp_path_factory.mktemp("hub"), layers=3)
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
    cached = ModelInputs(trunk.compute(model.gpt, tokens, n_frozen, FP32_CPU), n_frozen)
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


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("frozen_blocks", [None, 2])
def test_padding_past_the_longest_leaves_the_logits_alone(model, tmp_path, pooling, frozen_blocks):
    """Batches are padded past their longest message, to one of a few widths
    (batching.padded_width); the padding is never read, so each message's probabilities are
    those of the message alone, unpadded."""
    model.pooling = pooling
    tokens = messages(120, seed=6)
    inputs = ModelInputs(tokens, None)
    if frozen_blocks is not None:  # the cache file, as finetune and evaluate read it
        trunk.write(tmp_path / "cache", model.gpt, tokens, frozen_blocks, FP32_CPU)
        inputs = ModelInputs(trunk.load(tmp_path / "cache"), frozen_blocks)
    order = sorted_order(tokens.lengths, 256)
    widened = [
        padded_width(int(tokens.lengths[b].max()), 59) > tokens.lengths[b].max() for b in order
    ]
    assert int(tokens.lengths.max()) == 59 and sum(widened) >= 10  # most batches padded wider
    probabilities = classifier.class_probabilities(model, inputs, Compute(CPU, "fp32", 256))
    rows, starts = inputs.sequences.rows, inputs.sequences.starts.tolist()
    with torch.no_grad():
        alone = torch.cat([
            model(rows[start : start + n][None], torch.tensor([n]), frozen_blocks)
            for start, n in zip(starts, tokens.lengths.tolist(), strict=True)
        ])  # fmt: skip
    torch.testing.assert_close(probabilities, torch.softmax(alone, -1), rtol=0, atol=1e-6)


def test_trunk_keeps_real_tokens_only(model):
    tokens = messages(5)
    hidden = trunk.compute(model.gpt, tokens, 2, FP32_CPU)
    assert hidden.rows.shape == (int(tokens.lengths.sum()), model.gpt.config.n_embd)
    assert torch.equal(hidden.lengths, tokens.lengths)


needs_native_bf16 = pytest.mark.skipif(
    not NATIVE_BF16, reason="no avx512_bf16 or amx_bf16 in /proc/cpuinfo: bf16 is emulated here"
)
U = 2.0**-8  # bf16 keeps 8 significant bits: rounding to it moves a number by <= 2^-8 of itself


@pytest.fixture(scope="module")
def spread(model: GPT2Classifier) -> tuple[GPT2Classifier, ModelInputs, torch.Tensor]:
    """A copy of the model whose head is scaled so that P(spam) spreads over 0..1 (a fresh
    head gives logits near 0, where any error looks small), the cached trunk of 64 messages
    below its last block, and their labels."""
    spread = copy.deepcopy(model)
    spread.pooling = "last"
    tokens = messages(64, seed=2)
    feats = ModelInputs(trunk.compute(spread.gpt, tokens, 2, FP32_CPU), 2)
    with torch.no_grad():
        margin = torch.diff(classifier.logits(spread, feats, torch.arange(64), CPU)).squeeze(1)
        spread.head.weight.mul_(3 / margin.std())
        spread.head.bias.copy_(torch.tensor([0.0, -3 * margin.mean() / margin.std()]))
        p = torch.softmax(classifier.logits(spread, feats, torch.arange(64), CPU), -1)[:, 1]
    assert p.min() < 0.05 and p.max() > 0.95 and ((p > 0.2) & (p < 0.8)).sum() >= 5
    labels = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(3))
    return spread, feats, labels


def fp32_logits_and_bound(model: GPT2Classifier, feats: ModelInputs, indices: torch.Tensor):
    """fp32 logits, and how far bf16 may move each: the head's dot product of bf16-rounded
    weights w and input h, summed in float32, is off by <= 2u sum|w||h| (Higham, to first
    order); h comes out of a block computed in bf16 and renormalised by ln_f, so its own
    relative error is allowed as much again: 4u sum|w||h|."""
    seen = {}
    hook = model.head.register_forward_hook(lambda m, args, out: seen.update(h=args[0].float()))
    try:
        logits = classifier.logits(model, feats, indices, CPU)
    finally:
        hook.remove()
    return logits, 4 * U * (seen["h"].abs() @ model.head.weight.abs().T)


@needs_native_bf16
def test_bf16_logits_stay_within_bf16_rounding_of_fp32(spread) -> None:
    model, feats, _ = spread
    indices = torch.arange(64)
    with torch.no_grad():
        fp32, bound = fp32_logits_and_bound(model, feats, indices)
        with runtime.autocast(Compute(CPU, "bf16")):
            bf16 = classifier.logits(model, feats, indices, CPU).float()
    assert not torch.equal(bf16, fp32)  # autocast really ran in bf16
    assert ((bf16 - fp32).abs() <= bound).all(), ((bf16 - fp32).abs() / bound).max()
    # P(spam) = sigmoid(z1 - z0), whose slope is at most 1/4
    p32, p16 = (torch.softmax(z, -1)[:, 1] for z in (fp32, bf16))
    assert ((p16 - p32).abs() <= (bound[:, 0] + bound[:, 1]) / 4).all()


def trainer(model: GPT2Classifier, feats: ModelInputs, labels: torch.Tensor, precision: str):
    """finetune's Trainer on a copy of `model`: its last block, ln_f and head train."""
    model = copy.deepcopy(model).train()
    trained = [n for n, p in model.named_parameters() if n.startswith(TAIL)]
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    split = trunk.Split(feats, labels)
    params = TrainParams(
        epochs=1, batch_size=64, lr=1e-3, weight_decay=0.1, warmup_ratio=0.0, grad_clip=1.0,
        accumulation_steps=1, eval_every=None, class_weights="none", patience=1,
        select_metric="auto", min_delta=0.0, seed=0,
        device="cpu", precision=precision, devices=1, cuda_graphs=False,
    )  # fmt: skip
    return train.Trainer(model, trained, split, split, SMS, params, Compute(CPU, precision))


TAIL = ("head.", "gpt.ln_f.", "gpt.h.2.")


@needs_native_bf16
def test_bf16_training_step_stays_within_bf16_rounding_of_fp32(spread) -> None:
    """One training step of the tail (the default precision on this CPU) from the same
    weights: its logits within bf16's rounding of fp32's, its loss computed from them in
    float32, so within what that rounding allows of the fp32 loss."""
    model, feats, labels = spread
    indices = torch.arange(64)
    model.train()  # dropout 0 in this model: the training forward, deterministic
    with torch.no_grad():
        logits, bound = fp32_logits_and_bound(model, feats, indices)
        with runtime.autocast(Compute(CPU, "bf16")):
            bf16_logits = classifier.logits(model, feats, indices, CPU).float()
    model.eval()
    assert not torch.equal(bf16_logits, logits)  # autocast really ran in bf16
    assert ((bf16_logits - logits).abs() <= bound).all()
    fp32, bf16 = trainer(model, feats, labels, "fp32"), trainer(model, feats, labels, "bf16")
    loss32, loss16 = fp32.train_step(indices).item(), bf16.train_step(indices).item()
    assert loss32 == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    # bf16 matmuls, then a float32 loss: not a loss rounded to bf16 (2^-8 of it)
    assert loss16 == pytest.approx(F.cross_entropy(bf16_logits, labels).item(), rel=1e-6)
    # loss_i = -log p_true_i moves by (1 - p_true_i) (dz_true - dz_other): mean over the batch
    p_true = torch.softmax(logits, -1)[indices, labels]
    assert abs(loss16 - loss32) <= ((1 - p_true) * bound.sum(1)).mean().item()
    before = dict(model.named_parameters())
    for name, p in bf16.trained.items():  # the step updated float32 weights
        assert p.dtype == torch.float32 and not torch.equal(p, before[name]), name


# --- the cache file: written a batch at a time, read a batch at a time ---


def test_written_cache_reads_back_as_computed(model, tmp_path) -> None:
    tokens = messages(40, seed=4)
    path = tmp_path / "train.safetensors"
    trunk.write(path, model.gpt, tokens, 2, Compute(CPU, "fp32", 64))  # many small batches
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.safetensors"]  # no temp left
    computed = trunk.compute(model.gpt, tokens, 2, Compute(CPU, "fp32", 64))
    back = trunk.load(path)
    assert torch.equal(back.lengths, tokens.lengths)
    assert torch.equal(load_file(str(path))["hidden"], computed.rows)  # plain safetensors
    indices = torch.tensor([7, 0, 31])
    assert torch.equal(back.batch(indices, 0)[0], computed.batch(indices, 0)[0])


def test_loaded_cache_reads_only_the_batch(model, tmp_path, monkeypatch) -> None:
    """Loading reads the lengths; a batch reads its own messages' rows, nothing more."""
    tokens = messages(40, seed=5)
    path = tmp_path / "val.safetensors"
    trunk.write(path, model.gpt, tokens, 2, FP32_CPU)
    read = []
    original = tensorfile.TensorFile.pread
    monkeypatch.setattr(
        tensorfile.TensorFile, "pread", lambda f, b, o: read.append(len(b)) or original(f, b, o)
    )
    cache = trunk.load(path)
    assert sum(read) == 8 * len(tokens)  # int64 lengths
    read.clear()
    indices = torch.tensor([3, 9])
    cache.batch(indices, 0)
    row_bytes = 4 * model.gpt.config.n_embd
    assert sum(read) == row_bytes * int(tokens.lengths[indices].sum())


def test_cache_is_bf16_when_the_trunk_runs_in_bf16(spread, tmp_path) -> None:
    """bf16 storage rounds each hidden value to 8 significant bits; the logits it gives move
    by no more than the bound the tail's own bf16 autocast is allowed (4u sum|w||h|)."""
    model, _, _ = spread
    tokens = messages(64, seed=2)
    trunk.write(tmp_path / "fp32", model.gpt, tokens, 2, FP32_CPU)
    fp32 = ModelInputs(trunk.load(tmp_path / "fp32"), 2)
    rows = fp32.sequences.rows[:]
    stored = trunk.storage_dtype("bf16")
    path = tmp_path / "bf16.safetensors"
    tensorfile.create(path, {"lengths": (torch.int64, (64,)), "hidden": (stored, rows.shape)})
    with tensorfile.TensorFile(path, writable=True) as f:
        f.write("lengths", 0, tokens.lengths)
        f.write("hidden", 0, rows)
    assert load_file(str(path))["hidden"].dtype == torch.bfloat16
    bf16 = ModelInputs(trunk.load(path), 2)
    assert bf16.sequences.rows.dtype == torch.float32  # read as float32
    assert path.stat().st_size < 0.55 * (tmp_path / "fp32").stat().st_size
    indices = torch.arange(64)
    with torch.no_grad():
        exact, bound = fp32_logits_and_bound(model, fp32, indices)
        rounded = classifier.logits(model, bf16, indices, CPU)
    assert not torch.equal(rounded, exact)
    assert ((rounded - exact).abs() <= bound).all(), ((rounded - exact).abs() / bound).max()


def test_write_removes_a_killed_runs_temporary_file(model, tmp_path) -> None:
    path = tmp_path / "test.safetensors"
    (tmp_path / ".test.safetensors.abc123.tmp").write_bytes(b"x" * 100)  # kill -9 left it
    trunk.write(path, model.gpt, messages(5), 2, FP32_CPU)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.safetensors"]


def test_the_cache_is_stored_in_bf16_only_for_a_bf16_trunk() -> None:
    assert trunk.storage_dtype("bf16") == torch.bfloat16
    assert trunk.storage_dtype("fp32") == trunk.storage_dtype("fp16") == torch.float32


def test_a_bf16_trunk_writes_its_float32_output_rounded_to_bf16(model, tmp_path) -> None:
    """Computed under bf16 autocast (emulated where the CPU has no bf16), handed on as float32
    and stored rounded to bf16: the file holds exactly compute()'s figures, rounded."""
    tokens = messages(6, seed=7)
    computed = trunk.compute(model.gpt, tokens, 1, Compute(CPU, "bf16"))
    assert computed.rows.dtype == torch.float32
    assert not torch.equal(computed.rows, trunk.compute(model.gpt, tokens, 1, FP32_CPU).rows)
    trunk.write(tmp_path / "cache", model.gpt, tokens, 1, Compute(CPU, "bf16"))
    stored = load_file(str(tmp_path / "cache"))
    assert stored["hidden"].dtype == torch.bfloat16
    assert torch.equal(stored["hidden"], computed.rows.to(torch.bfloat16))
    assert torch.equal(stored["lengths"], tokens.lengths)


def test_hidden_batches_run_the_trunk_without_dropout_in_batches_of_max_tokens(tmp_path) -> None:
    """The trunk is frozen: in eval mode whatever mode the model is in; batches as
    sorted_order deals them, each message's states those of the message alone."""
    hub = make_hub(tmp_path / "hub", layers=2)
    torch.manual_seed(0)
    gpt = GPT2.from_pretrained(hub, dropout=0.5).train()
    tokens = messages(12, seed=8)
    batches = list(trunk.hidden_batches(gpt, tokens, 1, Compute(CPU, "fp32", 64)))
    assert not gpt.training
    order = sorted_order(tokens.lengths, 64)
    assert [b[0].tolist() for b in batches] == [b.tolist() for b in order] and len(order) > 2
    for indices, hidden, lengths in batches:
        assert hidden.dtype == torch.float32 and torch.equal(lengths, tokens.lengths[indices])
        for i, n in zip(indices.tolist(), lengths.tolist(), strict=True):
            start = int(tokens.starts[i])
            with torch.no_grad():
                alone = gpt.blocks(gpt.embed(tokens.rows[start : start + n][None]), 0, 1)[0]
            row = hidden[indices.tolist().index(i), :n]
            torch.testing.assert_close(row, alone, rtol=0, atol=1e-6)


def test_each_process_computes_every_world_size_th_batch(model, monkeypatch) -> None:
    tokens = messages(30, seed=9)
    order = sorted_order(tokens.lengths, 64)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    batches = trunk.hidden_batches(model.gpt, tokens, 1, Compute(CPU, "fp32", 64))
    assert [b[0].tolist() for b in batches] == [b.tolist() for b in order[1::2]]


def test_an_unreadable_cache_is_one_line(tmp_path) -> None:
    path = tmp_path / "train.safetensors"
    path.write_bytes(b"not a tensor file")
    with pytest.raises(SpamGPTError, match=r"^.*train\.safetensors: cannot read the trunk cache"):
        trunk.load(path)
    with pytest.raises(SpamGPTError, match=r"re-run the trunk stage$"):
        trunk.load(tmp_path / "missing.safetensors")


def test_a_split_is_read_from_the_tokens_or_the_cache(model, tmp_path, monkeypatch) -> None:
    """Nothing frozen: the token ids; K blocks frozen: the cached trunk after K blocks. The
    labels come from the tokens file either way."""
    monkeypatch.chdir(tmp_path)
    tokens = messages(8, seed=10)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    paths.tokens_file("val").parent.mkdir(parents=True)
    paths.trunk_file("val").parent.mkdir(parents=True, exist_ok=True)
    tokenized.save(
        tokenized.TokenizedSplit(tokens, labels, torch.arange(8)), paths.tokens_file("val")
    )
    trunk.write(paths.trunk_file("val"), model.gpt, tokens, 2, FP32_CPU)
    whole = trunk.Split.read("val", None)
    assert whole.inputs.frozen_blocks is None and len(whole) == 8
    assert torch.equal(whole.inputs.sequences.rows[:], tokens.rows)
    assert torch.equal(whole.labels, labels)
    cached = trunk.Split.read("val", 2)
    assert cached.inputs.frozen_blocks == 2 and torch.equal(cached.labels, labels)
    expected = trunk.compute(model.gpt, tokens, 2, FP32_CPU).rows
    assert torch.equal(cached.inputs.sequences.rows[:], expected)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_on_a_terminal_names_the_split(model, tmp_path, monkeypatch) -> None:
    """On a terminal the trunk draws a bar named after what it computes ("trunk" unless
    told): compute()'s and write()'s alike."""
    tokens = messages(4, seed=11)
    for run, name in (
        (lambda **desc: trunk.compute(model.gpt, tokens, 1, FP32_CPU, **desc), "compute"),
        (lambda **desc: trunk.write(tmp_path / "c", model.gpt, tokens, 1, FP32_CPU, **desc),
         "write"),
    ):  # fmt: skip
        for desc, shown in (({}, "trunk: "), ({"desc": "val"}, "val: ")):
            monkeypatch.setattr(sys, "stderr", Terminal())
            run(**desc)
            drawn = sys.stderr.getvalue()
            assert shown in drawn and "100%" in drawn, (name, drawn)
