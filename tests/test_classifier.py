"""spamgpt.model.classifier: the model folder written and read back, and the prediction path's
edges (no messages)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spamgpt.data import tokenized, tokenizer
from spamgpt.data.batching import ModelInputs
from spamgpt.errors import SpamGPTError
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.params import ModelParams
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute

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


def save(model: GPT2Classifier, trained: list[str], folder: Path, pretrained: Path, full: bool):
    params = ModelParams(
        hub_url="http://127.0.0.1", repo_id=REPO_ID, revision="main", max_length=None,
        pretrained=True, init_seed=0, trainable_blocks=1, pooling="last", dropout=0.0,
        finetune="blocks", truncation="head", head_ratio=0.25,
    )  # fmt: skip
    eot = tokenizer.load(pretrained / REPO_ID).eot_token
    meta = classifier.classifier_meta(params, THREE, trained, 48, eot)
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
    with pytest.raises(SpamGPTError, match=r"classifier\.json: tensor head\.\w+ is not stored"):
        classifier.load(tmp_path, pretrained)


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
