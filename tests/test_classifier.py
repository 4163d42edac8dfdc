"""spamgpt.model.classifier: the model folder written and read back, and the prediction path's
edges (no messages)."""

import dataclasses
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from spamgpt import paths
from spamgpt.contracts import Tokenization
from spamgpt.data import tokenized, tokenizer
from spamgpt.data.batching import ModelInputs
from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.labels import Classes
from spamgpt.model import classifier, trunk
from spamgpt.model.gpt2 import GPT2, GPT2Classifier, GPTConfig
from spamgpt.params import LoraParams, ModelParams
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute
from spamgpt.texts import TextFields, Truncation

REPO_ID = "openai-community/gpt2"
CPU = torch.device("cpu")
FP32_CPU = Compute(CPU, "fp32")
THREE = Classes(("billing", "bug", "praise"), "bug")  # the positive class is not the last
TEXTS = ["free entry, txt WIN", "see you at 7", "", "a longer message about the invoice"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrained root (<root>/<repo_id>) holding a tiny random GPT-2."""
    root = tmp_path_factory.mktemp("pretrained")
    hub = make_hub(tmp_path_factory.mktemp("hub"), layers=2, dim=32, heads=4, n_ctx=64)
    shutil.copytree(hub, root / REPO_ID)
    return root


def trained_model(pretrained: Path) -> tuple[GPT2Classifier, list[str]]:
    """A three-class classifier whose last block, ln_f and head differ from the base's."""
    torch.manual_seed(0)
    model = GPT2Classifier(GPT2.from_pretrained(pretrained / REPO_ID), len(THREE))
    trained = classifier.freeze(model, 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in trained:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval(), trained


PARAMS = ModelParams(
    hub_url="http://127.0.0.1", repo_id=REPO_ID, revision="main", max_length=None,
    pretrained=True, init_seed=0, trainable_blocks=1, pooling="last", dropout=0.0,
    finetune="blocks", truncation="head", head_ratio=0.25,
)  # fmt: skip


def save(model: GPT2Classifier, trained: list[str], folder: Path, pretrained: Path, full: bool):
    eot = tokenizer.load(pretrained / REPO_ID).eot_token
    meta = classifier.classifier_meta(PARAMS, THREE, trained, 48, eot)
    classifier.save(model, folder, meta, pretrained / REPO_ID, full=full)


def probabilities(model: GPT2Classifier, folder: Path) -> torch.Tensor:
    enc = tokenizer.load(folder)
    return classifier.classify_texts(model, enc, TEXTS, 48, FP32_CPU)[0]


@pytest.mark.parametrize("full", [False, True], ids=["trained tensors", "every tensor"])
def test_a_saved_model_loads_back_whole_and_answers_the_same(
    pretrained: Path, tmp_path: Path, full: bool
) -> None:
    model, trained = trained_model(pretrained)
    save(model, trained, tmp_path, pretrained, full)
    stored = set(load_file(tmp_path / classifier.WEIGHTS))
    assert stored == (set(model.state_dict()) if full else set(trained))
    # the base is read from the pretrained root only when the folder lacks it
    loaded, meta = classifier.load(tmp_path, pretrained if not full else tmp_path / "none")
    assert not loaded.training and classifier.classes_of(meta) == THREE
    ours, theirs = loaded.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys() and not any(t.is_meta for t in ours.values())
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert torch.equal(probabilities(loaded, tmp_path), probabilities(model, tmp_path))


def test_a_model_folder_that_stores_too_few_tensors_is_refused(
    pretrained: Path, tmp_path: Path
) -> None:
    """classifier.json and model.safetensors agree, but the head is in neither: one line,
    not a model that answers from uninitialised (meta) tensors."""
    model, trained = trained_model(pretrained)
    save(model, [n for n in trained if not n.startswith("head.")], tmp_path, pretrained, False)
    with pytest.raises(SpamGPTError) as info:
        classifier.load(tmp_path, pretrained)
    # the first of those missing (head.weight, head.bias), as the model lists them
    assert str(info.value) == (
        f"{tmp_path / classifier.CLASSIFIER_JSON}: tensor head.weight is not stored"
    )


def test_a_classifier_json_whose_base_differs_is_refused(pretrained: Path, tmp_path: Path) -> None:
    model, trained = trained_model(pretrained)
    save(model, trained, tmp_path, pretrained, False)
    meta = json.loads((tmp_path / classifier.CLASSIFIER_JSON).read_text())
    meta["config"]["n_ctx"] = 32
    (tmp_path / classifier.CLASSIFIER_JSON).write_text(json.dumps(meta))
    with pytest.raises(SpamGPTError, match="config differs from"):
        classifier.load(tmp_path, pretrained)


def test_no_messages_give_no_probabilities_and_no_answers(pretrained: Path) -> None:
    model, _ = trained_model(pretrained)
    none = ModelInputs(tokenized.pack_ids([], 48), frozen_blocks=None)
    probs = classifier.class_probabilities(model, none, FP32_CPU)
    assert probs.shape == (0, len(THREE)) and probs.dtype == torch.float32
    enc = tokenizer.load(pretrained / REPO_ID)
    texts, truncated = classifier.classify_texts(model, enc, [], 48, FP32_CPU)
    assert texts.shape == (0, len(THREE)) and truncated == []
    assert classifier.answers(probs, THREE, 0.5) == []


def test_answers_read_the_positive_class_from_its_own_column() -> None:
    """Two classes, the positive one first: the threshold applies to column 0. Three: the most
    probable class, and the positive one's probability is its (middle) column."""
    first = Classes(("spam", "ham"), "spam")
    answers = classifier.answers(torch.tensor([[0.4, 0.6], [0.2, 0.8]]), first, 0.3)
    assert [a["label"] for a in answers] == ["spam", "ham"]
    assert [a["spam_probability"] for a in answers] == pytest.approx([0.4, 0.2])
    assert [a["probability"] for a in answers] == pytest.approx([0.4, 0.8])
    probs = torch.tensor([[0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])
    answers = classifier.answers(probs, THREE, 0.3)
    assert [a["label"] for a in answers] == ["billing", "praise"]
    assert [a["bug_probability"] for a in answers] == pytest.approx([0.4, 0.2])
    assert answers[0]["probabilities"] == pytest.approx({"billing": 0.5, "bug": 0.4, "praise": 0.1})


def test_freeze_leaves_the_last_blocks_ln_f_and_the_head_trainable(pretrained: Path) -> None:
    model = GPT2Classifier(GPT2.from_pretrained(pretrained / REPO_ID), 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(dict(model.named_parameters()))  # nothing frozen until freeze()
    names = classifier.freeze(model, 1)
    assert {n.split(".")[1] if n.startswith("gpt.") else n.split(".")[0] for n in names} == {
        "h", "ln_f", "head"
    }  # fmt: skip
    assert all(n.startswith(("gpt.h.1.", "gpt.ln_f.", "head.")) for n in names)
    assert names == [n for n, p in model.named_parameters() if p.requires_grad]
    assert classifier.freeze(model, 0) == ["head.weight", "head.bias"]
    assert len(classifier.freeze(model, "all")) == len(list(model.parameters()))


def test_frozen_blocks_counts_the_leading_blocks_that_stay_frozen() -> None:
    assert [classifier.frozen_blocks(3, k) for k in (0, 1, 3)] == [3, 2, 0]
    assert classifier.frozen_blocks(3, 1, "lora") == 2
    assert classifier.frozen_blocks(3, "all") is None  # a full fine-tune: nothing to cache
    assert classifier.frozen_blocks(3, "all", "lora") == 0  # LoRA: the embeddings stay frozen
    with pytest.raises(ParamsError) as info:
        classifier.frozen_blocks(3, 4)
    assert str(info.value) == (
        "model.trainable_blocks: must be <= the model's 3 blocks or 'all', got 4"
    )


def test_a_random_base_is_drawn_from_init_seed_alone(pretrained: Path) -> None:
    """model.pretrained false: GPT-2's initialisation from init_seed, with the model's
    dropout; the global RNG (which then draws the head) is left as it was."""
    params = replace(PARAMS, pretrained=False, init_seed=7, dropout=0.25)
    torch.manual_seed(0)
    gpt = classifier.base_model(params, pretrained / REPO_ID)
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())
    config = GPTConfig.from_json(pretrained / REPO_ID / "config.json")
    config.dropout = 0.25
    torch.manual_seed(7)
    expected = GPT2.init_random(config).state_dict()
    assert gpt.config == config and gpt.drop.p == 0.25
    ours = gpt.state_dict()
    assert ours.keys() == expected.keys() and all(torch.equal(ours[k], expected[k]) for k in ours)
    base = classifier.base_model(replace(PARAMS, dropout=0.25), pretrained / REPO_ID)
    file = GPT2.from_pretrained(pretrained / REPO_ID).state_dict()
    assert base.config.dropout == 0.25 and base.h[0].attn.dropout == 0.25
    assert all(torch.equal(base.state_dict()[k], file[k]) for k in file)


@pytest.fixture
def project(pretrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose models/pretrained/<repo_id> is the tiny GPT-2."""
    (tmp_path / paths.PRETRAINED_DIR).mkdir(parents=True)
    shutil.copytree(pretrained / REPO_ID, tmp_path / paths.pretrained_dir(REPO_ID))
    monkeypatch.chdir(tmp_path)
    return tmp_path


LORA = LoraParams(rank=2, alpha=4.0, targets=["c_attn", "mlp.c_proj"])


def test_for_training_seeds_the_head_and_trains_what_the_params_say(project: Path) -> None:
    params = replace(PARAMS, pooling="mean", dropout=0.1)
    model, names = classifier.for_training(params, LORA, THREE, CPU, seed=3)
    torch.manual_seed(3)
    expected = GPT2Classifier(GPT2.from_pretrained(paths.pretrained_dir(REPO_ID)), 3, "mean")
    ours, theirs = model.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model.pooling == "mean" and model.label_format == "single" and model.gpt.drop.p == 0.1
    assert names == classifier.freeze(expected, 1) and "gpt.h.1.mlp.c_fc.weight" in names
    multi = Classes(("a", "b"), None, label_format="multi")
    assert classifier.for_training(params, LORA, multi, CPU, seed=3)[0].label_format == "multi"
    meta = torch.device("meta")  # as a CUDA card would be: the model is moved there
    on_meta, _ = classifier.for_training(params, LORA, THREE, meta, seed=3)
    assert all(p.is_meta for p in on_meta.parameters())


def test_for_training_with_lora_adapts_the_trainable_blocks_targets(project: Path) -> None:
    params = replace(PARAMS, finetune="lora")
    _, names = classifier.for_training(params, LORA, THREE, CPU, seed=0)
    adapters = [f"gpt.h.1.{t}.lora_{ab}" for t in ("attn.c_attn", "mlp.c_proj") for ab in "AB"]
    assert sorted(names) == sorted([*adapters, "head.weight", "head.bias"])
    _, every = classifier.for_training(replace(params, trainable_blocks="all"), LORA, THREE, CPU, 0)
    assert {n.split(".")[2] for n in every if ".lora_" in n} == {"0", "1"}  # every block


@pytest.mark.parametrize("finetune", ["blocks", "lora"])
def test_export_writes_a_folder_that_answers_as_the_trained_model(
    project: Path, finetune: str
) -> None:
    """LoRA's adapters are folded into GPT-2's weights; the folder names its text fields and,
    from a random base, stores every tensor."""
    params = replace(PARAMS, finetune=finetune, pretrained=finetune == "blocks")
    model, names = classifier.for_training(params, LORA, THREE, CPU, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in names:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    before = probabilities(model, paths.pretrained_dir(REPO_ID))
    weights = {n: t.clone() for n, t in model.state_dict().items() if n in names}
    fields = TextFields(("subject", "body"), "{subject}: {body}")
    tokens = Tokenization(max_length=48, pad_id=556)
    classifier.export(model, weights, names, params, THREE, tokens, project / "out", fields)
    meta = json.loads((project / "out" / classifier.CLASSIFIER_JSON).read_text())
    assert meta["text_columns"] == ["subject", "body"] and meta["text_template"] == fields.template
    assert meta["full"] is (finetune == "lora") and meta["max_length"] == 48
    assert meta["pad_id"] == 556 and meta["repo_id"] == REPO_ID
    stored = set(load_file(project / "out" / classifier.WEIGHTS))
    if finetune == "lora":
        assert stored == set(GPT2Classifier(GPT2(model.gpt.config), 3).state_dict())
        assert sorted(meta["trained"]) == sorted(
            ["gpt.h.1.attn.c_attn.weight", "gpt.h.1.mlp.c_proj.weight", "head.weight", "head.bias"]
        )
    else:
        assert stored == set(names) == set(meta["trained"])
    loaded, _ = classifier.load(project / "out", paths.PRETRAINED_DIR)
    torch.testing.assert_close(probabilities(loaded, project / "out"), before)


def test_save_writes_the_config_the_tokenizer_and_the_meta(pretrained: Path, tmp_path: Path):
    model, trained = trained_model(pretrained)
    save(model, trained, tmp_path, pretrained, False)
    meta = json.loads((tmp_path / classifier.CLASSIFIER_JSON).read_text())
    assert meta == {
        "repo_id": REPO_ID, "revision": "main", "pretrained": True, "pooling": "last",
        **THREE.to_dict(), "max_length": 48, "truncation": "head", "head_ratio": 0.25,
        "pad_id": tokenizer.load(pretrained / REPO_ID).eot_token, "trained": trained,
        "config": dataclasses.asdict(model.gpt.config), "full": False,
    }  # fmt: skip
    for name in classifier.TOKENIZER_FILES:
        assert (tmp_path / name).read_bytes() == (pretrained / REPO_ID / name).read_bytes()


def test_fold_temperature_divides_the_logits_and_adds_the_shift(pretrained: Path) -> None:
    model, _ = trained_model(pretrained)
    idx = torch.randint(0, 500, (2, 6), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([6, 3])
    with torch.no_grad():
        before = model(idx, lengths).double()
        classifier.fold_temperature(model, None, THREE)  # None: unchanged
        assert torch.equal(model(idx, lengths).double(), before)
        classifier.fold_temperature(model, 2.0, THREE)
        torch.testing.assert_close(model(idx, lengths).double(), before / 2, atol=1e-6, rtol=0)
        shift = {"billing": 0.5, "bug": -1.0, "praise": 2.0}
        classifier.fold_temperature(model, 4.0, THREE, shift)
        expected = before / 8 + torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
        torch.testing.assert_close(model(idx, lengths).double(), expected, atol=1e-6, rtol=0)


def test_a_multi_label_head_takes_each_labels_temperature(pretrained: Path) -> None:
    labels = Classes(("a", "b"), None, label_format="multi")
    model = GPT2Classifier(GPT2.from_pretrained(pretrained / REPO_ID), 2, label_format="multi")
    idx, lengths = torch.randint(0, 500, (3, 5), generator=torch.Generator()), torch.tensor([5] * 3)
    with torch.no_grad():
        before = model.eval()(idx, lengths).double()
        classifier.fold_temperature(model, {"b": 4.0, "a": 0.5}, labels, {"a": 1.0, "b": 0.0})
        expected = before / torch.tensor([0.5, 4.0], dtype=torch.float64) + torch.tensor([1.0, 0])
        torch.testing.assert_close(model(idx, lengths).double(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("where", ["classifier.json", "argument"])
def test_load_folds_the_temperature_and_shift_into_the_head(
    pretrained: Path, tmp_path: Path, where: str
) -> None:
    """A logged model's classifier.json names its own calibration (it wins over the
    arguments); models/finetuned's comes as load's arguments."""
    model, trained = trained_model(pretrained)
    save(model, trained, tmp_path, pretrained, False)
    shift = {"billing": 0.5, "bug": 0.0, "praise": -0.5}
    if where == "classifier.json":
        meta = json.loads((tmp_path / classifier.CLASSIFIER_JSON).read_text())
        meta |= {classifier.TEMPERATURE: 2.0, classifier.SHIFT: shift}
        (tmp_path / classifier.CLASSIFIER_JSON).write_text(json.dumps(meta))
        loaded, _ = classifier.load(tmp_path, pretrained, temperature=8.0, shift=None)
    else:
        loaded, _ = classifier.load(tmp_path, pretrained, temperature=2.0, shift=shift)
    idx, lengths = torch.randint(0, 500, (2, 7), generator=torch.Generator()), torch.tensor([7, 2])
    with torch.no_grad():
        expected = model(idx, lengths).double() / 2 + torch.tensor([0.5, 0.0, -0.5])
        torch.testing.assert_close(loaded(idx, lengths).double(), expected, atol=1e-6, rtol=0)


def test_a_missing_or_corrupt_model_folder_is_one_line(pretrained: Path, tmp_path: Path) -> None:
    with pytest.raises(SpamGPTError) as info:
        classifier.load(tmp_path, pretrained)
    assert str(info.value) == (
        f"no fine-tuned model at {tmp_path}: {tmp_path / classifier.CLASSIFIER_JSON} is missing"
    )
    model, trained = trained_model(pretrained)
    save(model, trained, tmp_path, pretrained, False)
    (tmp_path / classifier.CLASSIFIER_JSON).write_text("{")
    with pytest.raises(SpamGPTError, match=r"^.*: corrupt model files \(Expecting"):
        classifier.load(tmp_path, pretrained)


def test_a_tensor_the_meta_does_not_name_is_refused(pretrained: Path, tmp_path: Path) -> None:
    model, trained = trained_model(pretrained)
    save(model, trained, tmp_path, pretrained, False)
    tensors = load_file(tmp_path / classifier.WEIGHTS)
    tensors["gpt.h.0.ln_1.weight"] = model.state_dict()["gpt.h.0.ln_1.weight"]
    save_file(tensors, tmp_path / classifier.WEIGHTS)
    with pytest.raises(SpamGPTError) as info:
        classifier.load(tmp_path, pretrained)
    assert str(info.value) == (
        f"{tmp_path / classifier.WEIGHTS}: tensor gpt.h.0.ln_1.weight is missing or unexpected"
    )
    del tensors["gpt.h.0.ln_1.weight"], tensors["head.bias"]
    save_file(tensors, tmp_path / classifier.WEIGHTS)
    with pytest.raises(SpamGPTError, match=r"tensor head\.bias is missing or unexpected$"):
        classifier.load(tmp_path, pretrained)


@pytest.mark.parametrize(("max_tokens", "full_last"), [(None, False), (16, False), (16, True)])
def test_class_logits_are_each_messages_own_in_the_given_order(
    pretrained: Path, max_tokens: int | None, full_last: bool
) -> None:
    """Batched by length (small batches with max_tokens 16), returned in the messages' order:
    each row the logits of that message run alone; probabilities their softmax."""
    model, _ = trained_model(pretrained)
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, 500, (n,), generator=g) for n in (3, 9, 1, 6, 12, 2, 5)]
    inputs = ModelInputs(tokenized.pack_ids([r.tolist() for r in rows], 48), frozen_blocks=None)
    out = classifier.class_logits(model, inputs, Compute(CPU, "fp32", max_tokens), full_last)
    with torch.no_grad():
        alone = torch.cat([model(r[None], torch.tensor([len(r)])) for r in rows])
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=0)
    probs = classifier.class_probabilities(
        model, inputs, Compute(CPU, "fp32", max_tokens), full_last
    )
    torch.testing.assert_close(probs, alone.softmax(-1), atol=1e-6, rtol=0)


def test_classify_texts_says_which_texts_were_cut_and_keeps_the_rule(pretrained: Path) -> None:
    model, _ = trained_model(pretrained)
    enc = tokenizer.load(pretrained / REPO_ID)
    ids = tokenized.encode(enc, TEXTS)
    exact = len(ids[3])  # the longest text: cut one token shorter than it, not at its length
    _, truncated = classifier.classify_texts(model, enc, TEXTS, exact, FP32_CPU)
    assert truncated == [False] * 4
    _, truncated = classifier.classify_texts(model, enc, TEXTS, exact - 1, FP32_CPU)
    assert truncated == [len(row) > exact - 1 for row in ids] and truncated[3]
    inputs = ModelInputs(tokenized.pack_ids(ids, exact), frozen_blocks=None)
    bf16, _ = classifier.classify_texts(model, enc, TEXTS, exact, Compute(CPU, "bf16"))
    assert torch.equal(bf16, classifier.class_probabilities(model, inputs, Compute(CPU, "bf16")))
    assert not torch.equal(bf16, classifier.class_probabilities(model, inputs, FP32_CPU))
    tail = Truncation("tail")
    cut, _ = classifier.classify_texts(model, enc, TEXTS[3:], 2, FP32_CPU, tail)
    with torch.no_grad():
        last_two = model(torch.tensor([ids[3][-2:]]), torch.tensor([2])).softmax(-1)
    torch.testing.assert_close(cut, last_two, atol=1e-6, rtol=0)


def test_prediction_frame_takes_a_tensor_or_an_array() -> None:
    probs = torch.tensor([[0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])
    frame = classifier.prediction_frame(probs, THREE, None)
    assert frame["label"].tolist() == ["billing", "praise"]
    assert frame.equals(classifier.prediction_frame(probs.numpy(), THREE, None))
    sms = Classes(("ham", "spam"), "spam")
    two = torch.tensor([[0.7, 0.3], [0.9, 0.1]])
    assert classifier.prediction_frame(two, sms, 0.2)["label"].tolist() == ["spam", "ham"]


def test_load_draws_nothing_and_rebuilds_dropout_and_label_format(
    pretrained: Path, tmp_path: Path
) -> None:
    """A model trained with dropout (its classifier.json's config says so) over the base,
    multi-label: loaded without a draw from the global RNG, its config and task as saved."""
    model, trained = trained_model(pretrained)
    model.gpt.config.dropout = 0.1
    save(model, trained, tmp_path, pretrained, False)
    meta = json.loads((tmp_path / classifier.CLASSIFIER_JSON).read_text())
    meta |= {"positive_label": None, "label_format": "multi"}
    (tmp_path / classifier.CLASSIFIER_JSON).write_text(json.dumps(meta))
    torch.manual_seed(0)
    loaded, _ = classifier.load(tmp_path, pretrained)
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())
    assert loaded.gpt.config.dropout == 0.1 and loaded.label_format == "multi"


def test_logits_of_the_cached_trunk_are_those_of_the_tokens(pretrained: Path) -> None:
    """ModelInputs says how many blocks its cached states have been through: logits() hands
    that on to the model."""
    model, _ = trained_model(pretrained)
    g = torch.Generator().manual_seed(3)
    ids = [torch.randint(0, 500, (n,), generator=g).tolist() for n in (4, 9, 2)]
    tokens = tokenized.pack_ids(ids, 48)
    cached = ModelInputs(trunk.compute(model.gpt, tokens, 1, FP32_CPU), frozen_blocks=1)
    indices = torch.tensor([2, 0, 1])
    with torch.no_grad():
        expected = classifier.logits(model, ModelInputs(tokens, None), indices, CPU)
        torch.testing.assert_close(
            classifier.logits(model, cached, indices, CPU), expected, rtol=0, atol=1e-6
        )


def test_the_folded_head_is_rounded_to_float32_once(pretrained: Path) -> None:
    """w / T and b / T + c are computed in float64 from float64 T and c, then rounded: a T or
    c rounded to float32 first would move some weights by an ulp, and a bias of 1 with
    c = 2^-24 + 2^-50 (just over half float32's ulp at 1) would round down, not up."""
    model, _ = trained_model(pretrained)
    weight = model.head.weight.detach().double()
    with torch.no_grad():
        model.head.bias.fill_(1.0)
    shift = {"billing": 2.0**-24 + 2.0**-50, "bug": 0.0, "praise": 0.0}
    classifier.fold_temperature(model, 1.0, THREE, shift)
    assert model.head.bias[0].item() == 1 + 2.0**-23
    classifier.fold_temperature(model, 3.3, THREE)
    assert torch.equal(model.head.weight, (weight / 3.3).float())
