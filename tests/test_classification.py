"""spamgpt.tasks.classification's multi-label task: its report against scikit-learn's definitions
and the per-label thresholds; training and answers: pos_weight, the loss (Hugging Face's
multi-label loss), the decision rule and the answers built on it; a training run on cached
trunk states. (The single-label task's report and threshold: tests/test_metrics.py.)"""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm
from test_train import CPU, PARAMS

from spamgpt.data import tokenized
from spamgpt.data.batching import ModelInputs
from spamgpt.errors import ParamsError
from spamgpt.finetune.train import Trainer, shard_loss
from spamgpt.labels import Classes
from spamgpt.model import classifier, trunk
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.model.trunk import Split
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute
from spamgpt.tasks.registry import task_for

CLASSES = Classes(("billing", "shipping", "urgent"), None, label_format="multi")


def sample(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(targets, probabilities): each label's probability leans towards its truth."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.3, 0.5, 0.1]).astype(np.float32)
    probs = np.clip(0.35 * targets + rng.random((n, 3)) * 0.65, 0, 1)
    return targets, probs


def test_report_matches_scikit_learn() -> None:
    targets, probs = sample()
    thresholds = {"billing": 0.4, "shipping": 0.5, "urgent": 0.6}
    rep = task_for(CLASSES).report(targets, probs, thresholds)
    truth = targets.astype(int)
    predicted = (probs >= [0.4, 0.5, 0.6]).astype(int)
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted))
    assert rep["hamming_loss"] == pytest.approx(skm.hamming_loss(truth, predicted))
    for average in ("micro", "macro"):
        expected = skm.f1_score(truth, predicted, average=average, zero_division=0)
        assert rep[f"{average}_f1"] == pytest.approx(expected)
    samples = skm.f1_score(truth, predicted, average="samples", zero_division=1)
    assert rep["samples_f1"] == pytest.approx(samples)
    matrices = skm.multilabel_confusion_matrix(truth, predicted)
    for i, name in enumerate(CLASSES.names):
        label = rep[name]
        assert label["confusion_matrix"] == matrices[i].tolist()
        assert label["support"] == truth[:, i].sum()
        assert label["threshold"] == thresholds[name]
        p, r, f, _ = skm.precision_recall_fscore_support(
            truth[:, i], predicted[:, i], average="binary", zero_division=0
        )
        assert (label["precision"], label["recall"], label["f1"]) == pytest.approx((p, r, f))


def test_label_pair_confusion_counts_found_missed_and_claimed_labels() -> None:
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    predicted = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=bool)
    matrix = task_for(CLASSES).confusion(truth, predicted)
    # rows actual billing, shipping, urgent, (none); columns predicted the same
    assert matrix.tolist() == [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]


RARE = Classes(("billing", "shipping", "refund", "fraud", "legal"), None, label_format="multi")


def rare_labels(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two common labels the model separates, and three with 4 validation positives each
    that it barely scores (every probability under 0.2): each rare label's own F1 optimum
    is a tiny threshold that claims it for many messages without it."""
    rng = np.random.default_rng(seed)
    targets = np.zeros((n, 5), dtype=np.float32)
    targets[:, :2] = rng.random((n, 2)) < [0.4, 0.3]
    for j in (2, 3, 4):
        targets[rng.choice(n, 4, replace=False), j] = 1
    probs = np.clip(0.3 * targets + rng.random((n, 5)) * 0.6, 0, 1)
    probs[:, 2:] = 0.05 * targets[:, 2:] + rng.random((n, 3)) * 0.12
    return targets, probs


def sk_metric(objective: str, targets: np.ndarray, predicted: np.ndarray) -> float:
    """The selected metric as scikit-learn computes it."""
    if objective == "accuracy":
        return skm.accuracy_score(targets, predicted)
    average = objective.removesuffix("_f1")
    return skm.f1_score(targets, predicted, average=average, zero_division=0)


@pytest.mark.parametrize("select_metric", ["micro_f1", "macro_f1", "accuracy", "auto"])
def test_auto_is_never_worse_than_half_and_rare_labels_keep_it(select_metric: str) -> None:
    targets, probs = rare_labels()
    choice = task_for(RARE).choose_threshold("auto", targets, probs, select_metric)
    objective = "macro_f1" if select_metric == "auto" else select_metric
    at_half = sk_metric(objective, targets, probs >= 0.5)
    chosen = sk_metric(objective, targets, probs >= task_for(RARE).thresholds(choice.threshold))
    assert chosen >= at_half
    assert choice.kept_default == ["refund", "fraud", "legal"]  # 4 positives each, under 10
    assert [choice.threshold[name] for name in choice.kept_default] == [0.5, 0.5, 0.5]
    assert choice.threshold["billing"] != 0.5 and choice.reached is None
    # each label's own F1 optimum (the former auto) claims rare labels everywhere
    assert max(choice.best_f1[name] for name in choice.kept_default) < 0.2
    per_label = sk_metric(objective, targets, probs >= task_for(RARE).thresholds(choice.best_f1))
    if objective == "micro_f1":
        assert per_label < at_half < chosen


def test_auto_is_never_worse_than_half_on_random_sets() -> None:
    """Random sizes, label rates and probabilities (rounded: many ties), every objective."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        n, labels = int(rng.integers(20, 120)), int(rng.integers(2, 6))
        names = Classes(tuple(f"l{i}" for i in range(labels)), None, label_format="multi")
        targets = rng.random((n, labels)) < rng.uniform(0.05, 0.6, labels)
        probs = np.round(np.clip(0.3 * targets + 0.7 * rng.random((n, labels)), 0, 1), 2)
        for objective in ("micro_f1", "macro_f1", "accuracy"):
            choice = task_for(names).choose_threshold(
                "auto", targets, probs, objective, int(rng.integers(1, 12))
            )
            chosen = probs >= task_for(names).thresholds(choice.threshold)
            at_half = sk_metric(objective, targets, probs >= 0.5)
            assert sk_metric(objective, targets, chosen) >= at_half, (n, labels, objective)


def test_micro_f1_auto_ends_where_no_single_label_move_helps() -> None:
    """Coordinate ascent's end: no label's threshold among its validation probabilities
    (the others fixed) gives scikit-learn's micro F1 more."""
    targets, probs = sample(n=100, seed=3)
    choice = task_for(CLASSES).choose_threshold("auto", targets, probs, "micro_f1", 1)
    chosen = task_for(CLASSES).thresholds(choice.threshold)
    reached = skm.f1_score(targets, probs >= chosen, average="micro")
    assert reached > skm.f1_score(targets, probs >= 0.5, average="micro")
    for i in range(len(CLASSES)):
        for t in np.unique(probs[:, i]):
            moved = chosen.copy()
            moved[i] = t
            assert skm.f1_score(targets, probs >= moved, average="micro") <= reached + 1e-12


def test_macro_f1_auto_is_each_labels_f1_optimum() -> None:
    """Macro F1 is the labels' mean: its optimum is each label's own."""
    targets, probs = sample()
    choice = task_for(CLASSES).choose_threshold("auto", targets, probs, "macro_f1")
    assert choice.kept_default == []  # 200 messages: every label has 10 positives or more
    for i, name in enumerate(CLASSES.names):
        best = max(skm.f1_score(targets[:, i], probs[:, i] >= t) for t in np.unique(probs[:, i]))
        assert skm.f1_score(targets[:, i], probs[:, i] >= choice.threshold[name]) == best


def test_min_support_and_a_labels_f1_choose_which_labels_move() -> None:
    targets, probs = sample()
    support = targets.sum(axis=0).astype(int)  # billing, shipping, urgent
    cut = int(support[2]) + 1  # urgent just under it, the others over
    choice = task_for(CLASSES).choose_threshold("auto", targets, probs, "auto", cut)
    assert choice.kept_default == ["urgent"] and choice.threshold["urgent"] == 0.5
    at_support = task_for(CLASSES).choose_threshold("auto", targets, probs, "auto", int(support[2]))
    assert at_support.kept_default == []  # as many positives as min_support: chosen
    one = task_for(CLASSES).choose_threshold("auto", targets, probs, "shipping_f1")
    assert one.threshold["billing"] == one.threshold["urgent"] == 0.5  # they cannot change it
    assert one.threshold["shipping"] == one.best_f1["shipping"]


def test_a_number_applies_to_every_label_and_a_policy_to_each() -> None:
    targets, probs = sample()
    fixed = task_for(CLASSES).choose_threshold(0.7, targets, probs)
    assert fixed.threshold == dict.fromkeys(CLASSES.names, 0.7) and fixed.kept_default == []
    policy = task_for(CLASSES).choose_threshold({"min_precision": 0.9}, targets, probs, "micro_f1")
    for i, name in enumerate(CLASSES.names):
        predicted = probs[:, i] >= policy.threshold[name]
        precision = skm.precision_score(targets[:, i], predicted)
        assert precision >= 0.9 and policy.reached[name]["precision"] == pytest.approx(precision)
        recall = skm.recall_score(targets[:, i], predicted)
        assert policy.reached[name]["recall"] == pytest.approx(recall)


def test_a_policy_leaves_rare_labels_at_half() -> None:
    targets, probs = rare_labels()
    policy = task_for(RARE).choose_threshold({"max_fpr": 0.05}, targets, probs)
    assert policy.kept_default == ["refund", "fraud", "legal"]
    for i, name in enumerate(RARE.names):
        fpr = (probs[:, i] >= policy.threshold[name])[targets[:, i] == 0].mean()
        assert policy.reached[name]["fpr"] == pytest.approx(fpr)
        if name in policy.kept_default:
            assert policy.threshold[name] == 0.5
        else:
            assert fpr <= 0.05


def test_null_and_an_unreachable_policy_are_refused_in_one_line() -> None:
    targets, probs = sample()
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: multi-label data needs"):
        task_for(CLASSES).choose_threshold(None, targets, probs)
    worst = np.where(targets > 0, 0.0, 1.0)  # every positive below every negative
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: no threshold gives 'billing'"):
        task_for(CLASSES).choose_threshold({"min_precision": 0.99}, targets, worst)


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
    found = labels.found(values, None, None, label_format="multi")
    assert found == CLASSES and Classes.from_dict(found.to_dict()) == CLASSES


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    return make_hub(tmp_path_factory.mktemp("hub"), layers=2, dim=32, heads=4, n_ctx=64)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_training_on_the_trunk_cache_lowers_the_loss(hub, pooling) -> None:
    """The tail trained on cached states of the frozen first block, a BCE step the same
    whether the model reads token ids or the cache."""
    from spamgpt.data import tokenizer

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
    cached = trunk.compute(model.gpt, split.tokens, 1, Compute(CPU, "fp32"))
    on_ids = Split(ModelInputs(split.tokens, None), split.labels)
    on_cache = Split(ModelInputs(cached, 1), split.labels)
    indices = torch.arange(len(texts))
    weights = task_for(CLASSES).loss_weights(split.labels, "balanced")
    args = (indices, weights, Compute(CPU, "fp32"))
    task = task_for(CLASSES)
    with torch.no_grad():
        assert float(shard_loss(task, model, on_cache, *args)) == pytest.approx(
            float(shard_loss(task, model, on_ids, *args)), rel=1e-5
        )
    trained = classifier.freeze(model, 1)  # the last block, the final norm, the head
    params = dataclasses.replace(PARAMS, epochs=2, batch_size=8, lr=3e-3)
    trainer = Trainer(model, trained, on_cache, on_cache, CLASSES, params, Compute(CPU, "fp32"))

    state = trainer.fit(NoSaver())
    losses = [entry["val/loss"] for entry in state.history]
    assert losses[-1] < losses[0] and "val/micro_f1" in state.history[-1]


# --- pinned by mutation testing (tools/mutate.py multilabel, before classification) ---


def test_a_label_without_positives_weighs_all_its_negatives_and_names_are_strings() -> None:
    targets = torch.tensor([[1, 0], [1, 0], [0, 0]], dtype=torch.float32)
    weights = task_for(Classes(("a", "b"), label_format="multi")).loss_weights(targets, "balanced")
    assert weights.tolist() == [0.5, 3.0]  # b: 3 negatives over no positive (counted as 1)
    assert task_for(Classes(("0", "1"), label_format="multi")).loss_weights(
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
