"""Multi-label training and answers: pos_weight, the loss (Hugging Face's multi-label loss),
the decision rule and the answers built on it; a training run on cached trunk states."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import CPU, PARAMS

from spamgpt import classifier, multilabel, tokenized, trunk
from spamgpt.batching import ModelInputs
from spamgpt.labels import Classes
from spamgpt.model import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub
from spamgpt.train import Trainer, batch_weight, shard_loss
from spamgpt.trunk import Split

CLASSES = Classes(("billing", "shipping", "urgent"), None, multi_label=True)
WORDS = ("BILL", "TRUCK", "ASAP")  # each label's word


class NoSaver:
    def save(self, trainer: Trainer) -> None: ...

    def wait(self) -> None: ...


TARGETS = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=torch.float32)


def test_balanced_pos_weight_is_negatives_over_positives() -> None:
    weights = multilabel.pos_weight(TARGETS, "balanced", CLASSES.names)
    assert weights.tolist() == [1.0, 1.0, 3.0]
    mapping = {"billing": 2, "shipping": 1, "urgent": 0.5}
    assert multilabel.pos_weight(TARGETS, mapping, CLASSES.names).tolist() == [2.0, 1.0, 0.5]
    assert multilabel.pos_weight(TARGETS, "none", CLASSES.names) is None


def test_the_training_loss_is_the_mean_binary_cross_entropy() -> None:
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([1.0, 2.0, 3.0])
    loss = multilabel.loss_sum(logits, TARGETS, weights) / batch_weight(TARGETS, weights)
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=weights)(logits, TARGETS)
    assert float(loss) == pytest.approx(float(expected))
    # validation computes it from the probabilities the prediction path gives
    from_probs = multilabel.validation_loss(torch.sigmoid(logits), TARGETS, weights)
    assert from_probs == pytest.approx(float(expected), rel=1e-5)


def test_each_label_over_its_own_threshold_and_the_answers() -> None:
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.1, 0.1]])
    thresholds = {"billing": 0.5, "shipping": 0.1, "urgent": 0.7}
    on = CLASSES.predicted(probs, thresholds)
    assert on.tolist() == [[True, True, False], [False, True, False]]
    answers = multilabel.answers(probs, CLASSES, thresholds)
    assert [a["labels"] for a in answers] == [["billing", "shipping"], ["shipping"]]
    assert answers[0]["probabilities"] == {"billing": 0.9, "shipping": 0.2, "urgent": 0.6}
    frame = classifier.prediction_frame(probs, CLASSES, 0.5)  # one threshold for all
    assert [json.loads(v) for v in frame["labels"]] == [["billing", "urgent"], []]
    assert frame["p_urgent"].tolist() == [0.6, 0.1]


def test_targets_of_a_split_file_and_the_classes_found() -> None:
    from spamgpt import labels

    values = ['["billing"]', '["shipping", "urgent"]', "[]"]
    assert CLASSES.targets(values).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    found = labels.found(values, None, None, multi_label=True)
    assert found == CLASSES and Classes.from_dict(found.to_dict()) == CLASSES


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    return make_hub(tmp_path_factory.mktemp("hub"), layers=2, dim=32, heads=4, n_ctx=64)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_training_on_the_trunk_cache_lowers_the_loss(hub, pooling) -> None:
    """The tail trained on cached states of the frozen first block, a BCE step the same
    whether the model reads token ids or the cache."""
    from spamgpt import tokenizer

    enc = tokenizer.load(hub)
    texts = ["BILL due", "TRUCK late", "ASAP BILL", "hello", "TRUCK ASAP", "BILL TRUCK"] * 4
    frame = pd.DataFrame(
        {
            "line": range(len(texts)),
            "text": texts,
            "label": [
                json.dumps([n for n, w in zip(CLASSES.names, WORDS, strict=True) if w in t])
                for t in texts
            ],
        }
    )
    split = tokenized.pack(tokenized.encode_packed(enc, texts), frame, 16, CLASSES)
    torch.manual_seed(0)
    model = GPT2Classifier(GPT2.from_pretrained(hub), 3, pooling, multi_label=True)
    cached = trunk.compute(model.gpt, split.tokens, 1, CPU, "fp32")
    on_ids = Split(ModelInputs(split.tokens, None), split.labels)
    on_cache = Split(ModelInputs(cached, 1), split.labels)
    indices = torch.arange(len(texts))
    weights = multilabel.pos_weight(split.labels, "balanced", CLASSES.names)
    args = (indices, weights, CPU, "fp32")
    with torch.no_grad():
        assert float(shard_loss(model, on_cache, *args)) == pytest.approx(
            float(shard_loss(model, on_ids, *args)), rel=1e-5
        )
    trained = classifier.freeze(model, 1)  # the last block, the final norm, the head
    params = dataclasses.replace(PARAMS, epochs=2, batch_size=8, lr=3e-3)
    trainer = Trainer(model, trained, on_cache, on_cache, CLASSES, params, CPU, "fp32")

    state = trainer.fit(NoSaver())
    losses = [entry["val/loss"] for entry in state.history]
    assert losses[-1] < losses[0] and "val/micro_f1" in state.history[-1]
