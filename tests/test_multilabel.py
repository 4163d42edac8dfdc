"""Multi-label training and answers: pos_weight, the loss (Hugging Face's multi-label loss),
the decision rule and the answers built on it; a training run on cached trunk states."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import CPU, PARAMS

from spamgpt import classifier, tokenized, trunk
from spamgpt.batching import ModelInputs
from spamgpt.labels import Classes
from spamgpt.model import GPT2, GPT2Classifier
from spamgpt.random_hub import make_hub
from spamgpt.tasks import task_for
from spamgpt.train import Trainer, shard_loss
from spamgpt.trunk import Split

CLASSES = Classes(("billing", "shipping", "urgent"), None, multi_label=True)
WORDS = ("BILL", "TRUCK", "ASAP")  # each label's word


class NoSaver:
    def save(self, trainer: Trainer) -> None: ...

    def wait(self) -> None: ...


TARGETS = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=torch.float32)


def test_balanced_pos_weight_is_negatives_over_positives() -> None:
    weights = task_for(CLASSES).loss_weights(TARGETS, "balanced")
    assert weights.tolist() == [1.0, 1.0, 3.0]
    mapping = {"billing": 2, "shipping": 1, "urgent": 0.5}
    assert task_for(CLASSES).loss_weights(TARGETS, mapping).tolist() == [2.0, 1.0, 0.5]
    assert task_for(CLASSES).loss_weights(TARGETS, "none") is None


def test_the_training_loss_is_the_mean_binary_cross_entropy() -> None:
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([1.0, 2.0, 3.0])
    task = task_for(CLASSES)
    loss = task.loss_sum(logits, TARGETS, weights) / task.batch_weight(TARGETS, weights)
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=weights)(logits, TARGETS)
    assert float(loss) == pytest.approx(float(expected))
    # validation computes it from the probabilities the prediction path gives
    from_probs = task_for(CLASSES).validation_loss(torch.sigmoid(logits), TARGETS, weights)
    assert from_probs == pytest.approx(float(expected), rel=1e-5)


def test_each_label_over_its_own_threshold_and_the_answers() -> None:
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.1, 0.1]])
    thresholds = {"billing": 0.5, "shipping": 0.1, "urgent": 0.7}
    on = task_for(CLASSES).decisions(probs, thresholds)
    assert on.tolist() == [[True, True, False], [False, True, False]]
    answers = task_for(CLASSES).answers(probs, thresholds)
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
    model = GPT2Classifier(GPT2.from_pretrained(hub), 3, pooling, label_format="multi")
    cached = trunk.compute(model.gpt, split.tokens, 1, CPU, "fp32")
    on_ids = Split(ModelInputs(split.tokens, None), split.labels)
    on_cache = Split(ModelInputs(cached, 1), split.labels)
    indices = torch.arange(len(texts))
    weights = task_for(CLASSES).loss_weights(split.labels, "balanced")
    args = (indices, weights, CPU, "fp32")
    task = task_for(CLASSES)
    with torch.no_grad():
        assert float(shard_loss(task, model, on_cache, *args)) == pytest.approx(
            float(shard_loss(task, model, on_ids, *args)), rel=1e-5
        )
    trained = classifier.freeze(model, 1)  # the last block, the final norm, the head
    params = dataclasses.replace(PARAMS, epochs=2, batch_size=8, lr=3e-3)
    trainer = Trainer(model, trained, on_cache, on_cache, CLASSES, params, CPU, "fp32")

    state = trainer.fit(NoSaver())
    losses = [entry["val/loss"] for entry in state.history]
    assert losses[-1] < losses[0] and "val/micro_f1" in state.history[-1]


# --- pinned by mutation testing (tools/mutate.py multilabel) ---


def test_a_label_without_positives_weighs_all_its_negatives_and_names_are_strings() -> None:
    targets = torch.tensor([[1, 0], [1, 0], [0, 0]], dtype=torch.float32)
    weights = task_for(Classes(("a", "b"), multi_label=True)).loss_weights(targets, "balanced")
    assert weights.tolist() == [0.5, 3.0]  # b: 3 negatives over no positive (counted as 1)
    assert task_for(Classes(("0", "1"), multi_label=True)).loss_weights(
        targets, {1: 2, 0: 0.5}
    ).tolist() == [0.5, 2.0]


def test_validation_loss_by_hand_and_finite_at_certain_mistakes() -> None:
    probs = torch.tensor([[0.8, 0.4], [0.3, 0.9]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    by_hand = -(np.log(0.8) + np.log(0.6) + np.log(0.7) + np.log(0.9)) / 4
    assert task_for(CLASSES).validation_loss(probs, targets, None) == pytest.approx(
        by_hand, rel=1e-6
    )
    weighted = -(2 * np.log(0.8) + np.log(0.6) + np.log(0.7) + 3 * np.log(0.9)) / 4
    loss = task_for(CLASSES).validation_loss(probs, targets, torch.tensor([2.0, 3.0]))
    assert loss == pytest.approx(weighted, rel=1e-6)
    # a certain wrong answer costs -log(tiny) (float32: 87.34), not infinity
    certain = task_for(CLASSES).validation_loss(
        torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), None
    )
    assert certain == pytest.approx(-np.log(np.finfo(np.float32).tiny), rel=1e-6)


def test_answers_and_the_prediction_frame_from_float32_lists() -> None:
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.1, 0.1]], dtype=np.float32)
    answers = task_for(CLASSES).answers(probs.tolist(), None)
    assert [a["labels"] for a in answers] == [["billing", "urgent"], []]
    assert answers[1]["probabilities"] == dict.fromkeys(CLASSES.names, float(np.float32(0.1)))
    frame = task_for(CLASSES).prediction_frame(probs.tolist(), {"urgent": 0.7})
    assert frame.columns.tolist() == ["labels", "p_billing", "p_shipping", "p_urgent"]
    assert frame["labels"].tolist() == ['["billing"]', "[]"]
    assert frame["p_billing"].dtype == np.float64
    assert frame["p_billing"].tolist() == [float(np.float32(0.9)), float(np.float32(0.1))]
    assert task_for(CLASSES).label_lists(np.array([[1, 0, 1]], bool)) == ['["billing", "urgent"]']


def test_answers_of_integer_probabilities_are_floats_and_widths_must_match() -> None:
    answers = task_for(CLASSES).answers(np.array([[1, 0, 1]]), None)
    assert json.dumps(answers[0]["probabilities"]) == (
        '{"billing": 1.0, "shipping": 0.0, "urgent": 1.0}'
    )
    frame = task_for(CLASSES).prediction_frame(np.array([[1, 0, 0]]), None)
    assert frame["p_billing"].dtype == np.float64 and frame["labels"].tolist() == ['["billing"]']
    with pytest.raises(ValueError):  # one probability for three labels: refused, not zipped
        task_for(CLASSES).answers(np.array([[0.7]]), None)
    with pytest.raises(ValueError):
        task_for(CLASSES).label_lists(np.array([[True, False]]))
