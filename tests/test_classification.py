"""spamgpt.tasks.classification's multi-label task: its report against scikit-learn's definitions
and the per-label thresholds; training and answers: pos_weight, the loss (Hugging Face's
multi-label loss), the decision rule and the answers built on it; a training run on cached
trunk states. The single-label task: its report against a hand-worked example, counts and
scikit-learn, its thresholds and policies (tests/test_metrics.py's examples). Both: their
calibration and training pieces, pinned by mutation testing."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from test_metrics import (
    LABELS,
    PROBS,
    THREE,
    average_precision_by_steps,
    counts,
    generated,
    roc_auc_by_pairs,
    scores,
    two,
)
from test_train import CPU, PARAMS

from spamgpt.data import tokenized
from spamgpt.data.batching import ModelInputs
from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.finetune.train import Trainer, shard_loss
from spamgpt.labels import SMS, Classes
from spamgpt.model import classifier, trunk
from spamgpt.model.gpt2 import GPT2, GPT2Classifier
from spamgpt.model.trunk import Split
from spamgpt.random_hub import make_hub
from spamgpt.runtime import Compute
from spamgpt.tasks import calibration, metrics, task
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


# --- the single-label task (moved from tests/test_metrics.py with its half of metrics) ---


def test_report_of_a_hand_worked_example() -> None:
    rep = task_for(SMS).report(LABELS, two(PROBS), 0.5)
    assert rep["confusion_matrix"] == [[3, 2], [1, 2]]
    assert rep["accuracy"] == pytest.approx(5 / 8)
    assert rep["spam"] == pytest.approx(
        {"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7, "support": 3}
    )
    assert rep["ham"] == pytest.approx(
        {"precision": 3 / 4, "recall": 3 / 5, "f1": 2 / 3, "support": 5}
    )
    assert rep["macro_f1"] == pytest.approx((4 / 7 + 2 / 3) / 2)
    # ROC AUC: of the 15 (spam, ham) pairs, 0.4 outranks 3 hams, 0.8 outranks 4, 0.9 all 5.
    assert rep["roc_auc"] == pytest.approx(12 / 15)
    # PR AUC (average precision): recall steps of 1/3 at 0.9 (P 1), 0.8 (P 2/3), 0.4 (P 3/5).
    assert rep["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.77])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_agrees_with_counts_and_scikit_learn(seed: int, threshold: float) -> None:
    labels, probs = generated(seed, decimals=2 if seed == 2 else None)
    rep = task_for(SMS).report(labels, two(probs), threshold)
    predicted = (probs >= threshold).astype(int)
    tn, fp, fn, tp = counts(labels, predicted)
    assert rep["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert rep["accuracy"] == pytest.approx((tn + tp) / len(labels))
    expected = {
        "ham": {"precision": tn / (tn + fn), "recall": tn / (tn + fp), "support": tn + fp},
        "spam": {"precision": tp / (tp + fp), "recall": tp / (tp + fn), "support": tp + fn},
    }
    for name, values in expected.items():
        p, r = values["precision"], values["recall"]
        assert rep[name] == pytest.approx(values | {"f1": 2 * p * r / (p + r)}), name
    assert rep["macro_f1"] == pytest.approx(skm.f1_score(labels, predicted, average="macro"))
    assert rep["spam"]["f1"] == pytest.approx(skm.f1_score(labels, predicted))
    assert rep["roc_auc"] == pytest.approx(roc_auc_by_pairs(labels, probs))
    assert rep["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs))
    assert rep["pr_auc"] == pytest.approx(average_precision_by_steps(labels, probs))
    assert rep["pr_auc"] == pytest.approx(skm.average_precision_score(labels, probs))


def test_report_of_one_class_has_no_aucs_and_zero_not_nan() -> None:
    rep = task_for(SMS).report(np.zeros(4, dtype=int), two(np.array([0.1, 0.6, 0.2, 0.3])), 0.5)
    assert rep["roc_auc"] is None and rep["pr_auc"] is None
    assert rep["spam"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert rep["confusion_matrix"] == [[3, 1], [0, 0]]


def test_three_classes_report_per_class_and_a_3x3_matrix() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8],
         [0.6, 0.2, 0.2]]
    )  # fmt: skip
    rep = task_for(THREE).report(labels, probs, None)
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert rep["accuracy"] == pytest.approx(3 / 6)
    assert {k: rep[k]["f1"] for k in THREE.names} == pytest.approx(
        {"billing": 0.5, "outage": 0.5, "sales": 0.5}
    )
    assert rep["macro_f1"] == pytest.approx(0.5)
    assert rep["roc_auc"] is None and rep["pr_auc"] is None
    flat = metrics.flat(rep, "test", THREE)
    assert flat["test/outage_recall"] == pytest.approx(0.5) and "test/roc_auc" not in flat
    assert task_for(THREE).selection_score(rep, 0.7) == rep["macro_f1"]


def test_choose_threshold_only_for_a_positive_class_of_two() -> None:
    labels, probs = np.array([0, 1, 1, 0]), two(np.array([0.2, 0.7, 0.4, 0.3]))
    assert task_for(SMS).choose_threshold(0.5, labels, probs) == (0.5, 0.4, None, None)
    assert task_for(SMS).choose_threshold("auto", labels, probs) == (0.4, 0.4, None, None)
    none = (None, None, None, None)  # no kept_default: one threshold
    assert task_for(Classes(("ham", "spam"))).choose_threshold(0.5, labels, probs) == none
    with pytest.raises(ParamsError, match=r"evaluate\.threshold: a threshold applies to two"):
        task_for(Classes(THREE.names, "outage")).choose_threshold(0.5, labels, probs)
    assert task_for(Classes(THREE.names, "outage")).choose_threshold(None, labels, probs) == none


# The hand-worked example's thresholds, from the highest score down, as (threshold, tp, fp):
# (0.9, 1, 0) (0.85, 1, 1) (0.8, 2, 1) (0.6, 2, 2) (0.4, 3, 2) (0.3, 3, 3) ...
@pytest.mark.parametrize(
    ("policy", "threshold", "precision", "recall", "fpr"),
    [
        ({"min_precision": 0.6}, 0.4, 3 / 5, 1.0, 2 / 5),
        ({"min_precision": 0.65}, 0.8, 2 / 3, 2 / 3, 1 / 5),
        ({"min_precision": 1.0}, 0.9, 1.0, 1 / 3, 0.0),
        ({"max_fpr": 0.2}, 0.8, 2 / 3, 2 / 3, 1 / 5),  # not 0.85: as many found, fewer fp
        ({"max_fpr": 0.0}, 0.9, 1.0, 1 / 3, 0.0),
        ({"max_fpr": 0.5}, 0.4, 3 / 5, 1.0, 2 / 5),
    ],
)
def test_a_policy_picks_the_highest_recall_within_its_bound(
    policy: dict, threshold: float, precision: float, recall: float, fpr: float
) -> None:
    choice = task_for(SMS).choose_threshold(policy, LABELS, two(PROBS))
    assert choice.threshold == threshold and choice.best_f1 == 0.4
    reached = {"precision": precision, "recall": recall, "fpr": fpr}
    assert choice.reached == pytest.approx(reached)
    rep = task_for(SMS).report(LABELS, two(PROBS), choice.threshold)  # labels at that threshold
    assert (rep["spam"]["precision"], rep["spam"]["recall"]) == pytest.approx((precision, recall))


def test_three_classes_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=200)
    probs = rng.dirichlet(np.ones(3), size=200)
    rep = task_for(THREE).report(labels, probs, None)
    predicted = probs.argmax(axis=1)
    assert rep["confusion_matrix"] == skm.confusion_matrix(labels, predicted).tolist()
    p, r, f1, support = skm.precision_recall_fscore_support(labels, predicted, zero_division=0)
    for i, name in enumerate(THREE.names):
        assert rep[name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f1[i], "support": support[i]}
        )
    assert rep["macro_f1"] == pytest.approx(f1.mean())


def test_the_positive_class_first_gives_the_same_metrics_thresholds_and_curves() -> None:
    """The hand-worked example with the columns swapped: spam first, at index 0. Every number
    that concerns spam is the same; the confusion matrix reads in the new order."""
    spam_first = Classes(("spam", "ham"), "spam")
    labels, probs = 1 - LABELS, two(PROBS)[:, ::-1]
    ours, reference = (
        task_for(spam_first).report(labels, probs, 0.5),
        task_for(SMS).report(LABELS, two(PROBS), 0.5),
    )
    for key in ("accuracy", "macro_f1", "roc_auc", "pr_auc", "spam", "ham"):
        assert ours[key] == pytest.approx(reference[key]), key
    assert ours["confusion_matrix"] == [[2, 1], [2, 3]]  # rows spam, ham: tp fn / fp tn
    assert task_for(spam_first).selection_score(ours, 0.0) == reference["spam"]["f1"]
    for setting in (0.5, "auto"):
        assert task_for(spam_first).choose_threshold(setting, labels, probs) == pytest.approx(
            task_for(SMS).choose_threshold(setting, LABELS, two(PROBS))
        )
    curves = task_for(spam_first).curve_frames(labels, probs)
    for name, frame in task_for(SMS).curve_frames(LABELS, two(PROBS)).items():
        assert curves[name].equals(frame), name


@settings(max_examples=30, deadline=None)
@given(
    data=st.data(),
    probs=scores,
    threshold=st.sampled_from([None, 0.25, 0.5, 0.8]),
    positive_first=st.booleans(),
)
def test_any_two_class_report_is_scikit_learns(
    data: st.DataObject, probs: list[float], threshold: float | None, positive_first: bool
) -> None:
    labels = np.array(
        data.draw(st.lists(st.integers(0, 1), min_size=len(probs), max_size=len(probs)))
    )
    classes = Classes(("spam", "ham"), "spam") if positive_first else SMS
    positive = classes.positive_index
    p = np.array(probs)
    probabilities = np.column_stack([p, 1 - p]) if positive_first else two(p)
    rep = task_for(classes).report(labels, probabilities, threshold)
    predicted = task_for(classes).decisions(probabilities, threshold)
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert rep["macro_f1"] == pytest.approx(
        skm.f1_score(labels, predicted, average="macro", labels=[0, 1], zero_division=0)
    )
    sk = skm.precision_recall_fscore_support(labels, predicted, labels=[0, 1], zero_division=0)
    for i, name in enumerate(classes.names):
        got = rep[name]
        assert [got["precision"], got["recall"], got["f1"]] == pytest.approx([s[i] for s in sk[:3]])
        assert got["support"] == sk[3][i]
    assert (
        rep["confusion_matrix"] == skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    )
    if len(np.unique(labels)) == 2:
        is_positive, score = labels == positive, probabilities[:, positive]
        assert rep["roc_auc"] == pytest.approx(skm.roc_auc_score(is_positive, score))
        assert rep["pr_auc"] == pytest.approx(skm.average_precision_score(is_positive, score))
    else:
        assert rep["roc_auc"] is None and rep["pr_auc"] is None


def test_compared_and_selection_figures_are_the_reports_own() -> None:
    rep = task_for(SMS).report(LABELS, two(PROBS), 0.5)
    assert task_for(SMS).compared_figures(rep) == {
        "accuracy": rep["accuracy"],
        "macro_f1": rep["macro_f1"],
        "spam": {"precision": 0.5, "recall": 2 / 3, "f1": rep["spam"]["f1"]},
    }
    plain = Classes(("ham", "spam"))
    assert task_for(plain).compared_figures(rep) == {"accuracy": 0.625, "macro_f1": rep["macro_f1"]}
    assert task_for(SMS).selection_figure(rep) == {"spam": {"f1": rep["spam"]["f1"]}}
    assert task_for(plain).selection_figure(rep) == {"macro_f1": rep["macro_f1"]}


# --- pinned by mutation testing (tools/mutate.py tasks.classification) ---

PLAIN = Classes(("ham", "spam"))  # two classes, no positive one
SPAM_FIRST = Classes(("spam", "ham"), "spam")


def test_single_label_weights_losses_and_the_batch_weight_by_hand() -> None:
    sms = task_for(SMS)
    targets = torch.tensor([0, 0, 0, 1])
    assert sms.balanced_weights(targets).tolist() == pytest.approx([4 / 6, 2.0])
    three = task_for(THREE)  # a class with no message: counted as one
    assert three.balanced_weights(torch.tensor([0, 0, 1, 1])).tolist() == pytest.approx(
        [4 / 6, 4 / 6, 4 / 3]
    )
    assert sms.loss_weights(targets, "balanced").tolist() == pytest.approx([4 / 6, 2.0])
    assert sms.loss_weights(targets, {"spam": 3, "ham": 0.5}).tolist() == [0.5, 3.0]
    assert sms.loss_weights(targets, "none") is None
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 1.0], [0.0, 3.0]])
    weights = torch.tensor([0.5, 3.0])
    ce = -torch.log_softmax(logits, dim=-1)[torch.arange(4), targets]
    assert float(sms.loss_sum(logits, targets, weights)) == pytest.approx(
        float((ce * weights[targets]).sum())
    )
    assert float(sms.loss_sum(logits, targets, None)) == pytest.approx(float(ce.sum()))
    rows = sms.row_weights(targets, weights)
    assert rows.tolist() == [0.5, 0.5, 0.5, 3.0]
    assert sms.row_weights(targets, None).tolist() == [1.0] * 4
    assert float(sms.weighted_loss_sum(logits, targets, rows, weights)) == pytest.approx(
        float(sms.loss_sum(logits, targets, weights))
    )
    assert float(sms.weighted_loss_sum(logits, targets, torch.tensor([1.0, 0, 0, 2]), None)) == (
        pytest.approx(float(ce[0] + 2 * ce[3]))
    )
    assert sms.batch_weight(targets, weights) == 4.5 and sms.batch_weight(targets, None) == 4.0
    assert sms.decisions_per_row(targets) == 1


def test_multi_label_row_weights_and_decisions_per_row() -> None:
    tags = task_for(CLASSES)
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.5, -1.0], [2.0, 2.0, 2.0], [-1.0, 0.0, 1.0]])
    weights = torch.tensor([1.0, 2.0, 3.0])
    assert tags.row_weights(TARGETS, weights).tolist() == [1.0] * 4
    assert tags.row_weights(TARGETS, None).tolist() == [1.0] * 4
    each = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, TARGETS, pos_weight=weights, reduction="none"
    )
    rows = torch.tensor([1.0, 0.0, 2.0, 1.0])
    assert float(tags.weighted_loss_sum(logits, TARGETS, rows, weights)) == pytest.approx(
        float(each[0].sum() + 2 * each[2].sum() + each[3].sum())
    )
    assert tags.batch_weight(TARGETS, weights) == 12.0 and tags.decisions_per_row(TARGETS) == 3


def test_probabilities_log_odds_and_the_output_explained() -> None:
    logits = torch.tensor([[1.0, 2.0, -0.5], [0.3, -1.0, 2.0]])
    single, multi = task_for(THREE), task_for(CLASSES)
    p = torch.softmax(logits, dim=-1)
    assert torch.equal(single.probabilities(logits), p)
    assert torch.equal(multi.probabilities(logits), torch.sigmoid(logits))
    for target in range(3):  # the class's log odds: log(p / (1 - p))
        expected = torch.log(p[:, target] / (1 - p[:, target]))
        assert single.log_odds(logits, target) == pytest.approx(expected, rel=1e-5)
        assert torch.equal(multi.log_odds(logits, target), logits[:, target])
    assert single.explained({"label": "sales"}) == 2
    assert multi.explained({"probabilities": {"billing": 0.2, "shipping": 0.7, "urgent": 0.5}}) == 1


def test_single_label_validation_loss_and_threshold() -> None:
    probs = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.0, 1.0]])
    targets = torch.tensor([0, 1, 0])
    tiny = -np.log(np.finfo(np.float32).tiny)  # a certain mistake: not infinity
    by_hand = (-np.log(0.8) - np.log(0.6) + tiny) / 3
    assert task_for(SMS).validation_loss(probs, targets, None) == pytest.approx(by_hand, rel=1e-6)
    weighted = (-2 * np.log(0.8) - 3 * np.log(0.6) + 2 * tiny) / 7
    loss = task_for(SMS).validation_loss(probs, targets, torch.tensor([2.0, 3.0]))
    assert loss == pytest.approx(weighted, rel=1e-6)
    assert task_for(SMS).validation_threshold() == 0.5
    assert task_for(PLAIN).validation_threshold() is None
    assert task_for(Classes(THREE.names, "sales")).validation_threshold() is None
    assert task_for(CLASSES).validation_threshold() == 0.5


def test_single_label_decisions_with_and_without_a_threshold() -> None:
    probs = np.array([[0.7, 0.3], [0.35, 0.65], [0.6, 0.4]])
    assert task_for(SMS).decisions(probs, 0.4).tolist() == [0, 1, 1]  # spam at >= 0.4
    assert task_for(SMS).decisions(probs, 0.65).tolist() == [0, 1, 0]  # at exactly 0.65: spam
    assert task_for(SMS).decisions(probs, None).tolist() == [0, 1, 0]
    assert task_for(PLAIN).decisions(probs, 0.3).tolist() == [0, 1, 0]  # no positive: argmax
    # the positive class first: spam (index 0) where its probability reaches the threshold
    assert task_for(SPAM_FIRST).decisions(probs, 0.6).tolist() == [0, 1, 0]


def test_single_label_compared_threshold_metrics_and_figures() -> None:
    rep = task_for(SMS).report(LABELS, two(PROBS), 0.5)
    baseline = task_for(SMS).report(LABELS, two(PROBS), 0.7)
    policy = task.ThresholdChoice(0.6, 0.4, {"precision": 0.5, "recall": 1.0, "fpr": 0.25})
    compared = task_for(SMS).compared(rep, baseline, policy)
    assert compared == {
        **task_for(SMS).compared_figures(rep),
        "threshold": 0.6,
        "val_at_threshold": policy.reached,
        "baseline": {"spam": {"f1": baseline["spam"]["f1"]}},
    }
    plain = task_for(SMS).compared(rep, baseline, task.ThresholdChoice(0.5, 0.4, None))
    assert "val_at_threshold" not in plain and plain["threshold"] == 0.5
    assert task_for(SMS).threshold_metrics(policy) == {
        "test/threshold": 0.6,
        "val/best_threshold": 0.4,
        "val/threshold_precision": 0.5,
        "val/threshold_recall": 1.0,
        "val/threshold_fpr": 0.25,
    }
    none = task.ThresholdChoice(None, None, None)
    assert task_for(PLAIN).threshold_metrics(none) == {}
    figures = task_for(SMS).report_figures(rep, "val")
    assert list(figures) == ["evaluation/val_confusion_matrix.png"]
    (counts, _) = figures["evaluation/val_confusion_matrix.png"].axes
    assert [t.get_text() for t in counts.texts] == ["3", "2", "1", "2"]
    assert task_for(SMS).confusion_classes() == SMS


def test_multi_label_threshold_metrics_compared_and_the_confusion_figure() -> None:
    tags = Classes(("a b", "c"), None, label_format="multi")
    choice = task.ThresholdChoice(
        {"a b": 0.3, "c": 0.5}, {"a b": 0.35, "c": 0.45}, {"a b": {"precision": 0.9}, "c": None}
    )
    assert task_for(tags).threshold_metrics(choice) == {
        "test/threshold_a_b": 0.3,
        "val/best_threshold_a_b": 0.35,
        "val/threshold_a_b_precision": 0.9,
        "test/threshold_c": 0.5,
        "val/best_threshold_c": 0.45,
    }
    targets, probs = sample(n=40, seed=2)
    rep = task_for(CLASSES).report(targets, probs, None)
    baseline = task_for(CLASSES).report(targets, probs, 0.7)
    assert task_for(CLASSES).compared(rep, baseline, choice) == {
        **{key: rep[key] for key in task_for(CLASSES).COMPARED},
        "baseline": {"micro_f1": baseline["micro_f1"]},
    }
    figures = task_for(CLASSES).report_figures(rep, "test")
    (counts, _) = figures["evaluation/test_confusion_matrix.png"].axes
    names = [t.get_text() for t in counts.get_xticklabels()]
    assert names == ["billing", "shipping", "urgent", "(none)"]


def test_single_label_test_errors_answers_and_the_prediction_frame() -> None:
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.55, 0.45]])
    table = task_for(SMS).prediction_frame(probs, 0.4)
    assert table.columns.tolist() == ["label", "probability", "p_ham", "p_spam"]
    assert table["label"].tolist() == ["ham", "spam", "spam"]
    assert table["probability"].tolist() == [0.7, 0.8, 0.45]
    assert task_for(SMS).answer_columns() == table.columns.tolist()
    table = table.assign(line=[2, 3, 4], text=["a", "b", "c"])
    table["label"] = ["ham", "ham", "spam"]  # the actual labels; predicted below
    table["predicted"] = ["ham", "spam", "spam"]
    confusion, wrong = task_for(SMS).test_errors(np.array([0, 0, 1]), probs, 0.4, table)
    assert confusion.to_dict("list") == {
        "actual": ["ham", "ham", "spam"],
        "predicted": ["ham", "spam", "spam"],
    }
    assert wrong.to_dict("list") == {
        "line": [3],
        "label": ["ham"],
        "predicted": ["spam"],
        "spam_probability": [0.8],
        "text": ["b"],
    }
    _, wrong = task_for(PLAIN).test_errors(np.array([0, 0, 1]), probs, None, table)
    assert wrong.columns.tolist() == ["line", "label", "predicted", "probability", "text"]
    assert wrong["probability"].tolist() == [0.8]
    answers = task_for(SMS).answers(probs, 0.4)
    assert answers[2] == {
        "label": "spam",
        "probability": 0.45,
        "probabilities": {"ham": 0.55, "spam": 0.45},
        "spam_probability": 0.45,
    }
    assert "spam_probability" not in task_for(PLAIN).answers(probs, None)[0]
    assert task_for(SMS).plain_answer(answers[0]) == "ham\t0.3000"
    plain = task_for(PLAIN).answers(probs, None)[1]
    assert task_for(PLAIN).plain_answer(plain) == "spam\t0.8000"


def test_multi_label_test_errors_and_plain_answers() -> None:
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    probs = np.array([[0.9, 0.1, 0.2], [0.1, 0.3, 0.1], [0.2, 0.1, 0.1]])
    table = pd.DataFrame({"line": [1, 2, 3]})
    confusion, wrong = task_for(CLASSES).test_errors(targets, probs, None, table)
    assert confusion.to_dict("list") == {
        "actual": ["billing", "shipping"],
        "predicted": ["billing", "(none)"],
    }
    assert wrong["line"].tolist() == [2]
    answer = task_for(CLASSES).answers(probs, None)[0]
    assert task_for(CLASSES).plain_answer(answer) == (
        "billing\tbilling=0.9000 shipping=0.1000 urgent=0.2000"
    )
    nothing = task_for(CLASSES).answers(probs, None)[2]
    assert task_for(CLASSES).plain_answer(nothing).startswith("(none)\t")
    both = {"labels": ["billing", "urgent"], "probabilities": {"billing": 1.0}}
    assert task_for(CLASSES).plain_answer(both) == "billing|urgent\tbilling=1.0000"
    assert task_for(CLASSES).answer_columns() == ["labels", "p_billing", "p_shipping", "p_urgent"]


def test_serving_config_and_the_baseline_threshold() -> None:
    assert task_for(SMS).serving_config() == {}
    assert task_for(CLASSES).serving_config() == {"multi_label": True}
    assert task_for(SMS).baseline_threshold() == 0.5
    assert task_for(PLAIN).baseline_threshold() is None
    assert task_for(CLASSES).baseline_threshold() == 0.5


def test_the_baselines_estimators_outputs_and_audit_folds() -> None:
    from scipy.special import expit, softmax
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.pipeline import make_pipeline

    svm = task_for(SMS).baseline_estimator()
    assert (type(svm).__name__, svm.class_weight, svm.random_state) == ("LinearSVC", "balanced", 0)
    multi = task_for(CLASSES).baseline_estimator()
    assert type(multi).__name__ == "OneVsRestClassifier"
    assert (multi.estimator.class_weight, multi.estimator.random_state) == ("balanced", 0)
    texts = ["win cash now", "see you soon", "cash prize win", "lunch soon?", "free cash", "ok"]
    model = make_pipeline(CountVectorizer(), task_for(SMS).baseline_estimator())
    model.fit(texts, [1, 0, 1, 0, 1, 0])
    margins = model.decision_function(texts)
    out = task_for(SMS).baseline_outputs(model, texts)
    np.testing.assert_allclose(out, np.column_stack([1 - expit(margins), expit(margins)]))
    model.fit(texts, [1, 0, 1, 2, 1, 2])  # three classes: one margin a class
    out = task_for(THREE).baseline_outputs(model, texts)
    np.testing.assert_allclose(out, softmax(model.decision_function(texts), axis=1))
    sets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1]])
    model = make_pipeline(CountVectorizer(), task_for(CLASSES).baseline_estimator())
    model.fit(texts, sets)
    out = task_for(CLASSES).baseline_outputs(model, texts)
    np.testing.assert_allclose(out, expit(model.decision_function(texts)))
    folds = task_for(SMS).audit_folds(3, 7)
    assert (type(folds).__name__, folds.n_splits, folds.shuffle, folds.random_state) == (
        "StratifiedKFold", 3, True, 7
    )  # fmt: skip
    folds = task_for(CLASSES).audit_folds(4, 5)
    assert (type(folds).__name__, folds.n_splits, folds.shuffle, folds.random_state) == (
        "KFold", 4, True, 5
    )  # fmt: skip


def test_the_label_audit_finds_a_mislabelled_row_and_suggests_its_label() -> None:
    rng = np.random.default_rng(3)
    labels = np.array([0, 1] * 20)
    probs = np.where(labels[:, None] == [0, 1], 0.9, 0.1) + rng.random((40, 2)) * 0.01
    probs /= probs.sum(axis=1, keepdims=True)
    labels[5] = 0  # a spam message given ham: its ham probability about 0.1
    issues = task_for(SMS).label_issues(labels, probs)
    assert issues.tolist() == [5]
    quality = task_for(SMS).label_quality(labels, probs)
    assert quality == pytest.approx(probs[np.arange(40), labels])  # self-confidence
    assert task_for(SMS).suggested_labels(probs[4:6]) == ["ham", "spam"]
    assert task_for(SMS).given_labels("spam") == ["spam"]
    sets = np.tile(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]), (10, 1))
    label_probs = np.where(sets == 1, 0.9, 0.05)
    sets[6] = [1, 0, 0]  # given billing; its probabilities say urgent alone
    issues = task_for(CLASSES).label_issues(sets, label_probs)
    assert issues.tolist() == [6]
    quality = task_for(CLASSES).label_quality(sets, label_probs)
    assert quality.argmin() == 6 and quality.shape == (40,)
    suggested = task_for(CLASSES).suggested_labels(np.array([[0.5, 0.49, 0.9], [0.1, 0.2, 0.3]]))
    assert suggested == ['["billing", "urgent"]', "[]"]
    assert task_for(Classes(("é", "b"), None, "multi")).suggested_labels(np.array([[0.9, 0]])) == [
        '["é"]'
    ]
    assert task_for(CLASSES).given_labels('["urgent", "billing"]') == ["urgent", "billing"]


def test_temperatures_and_shifts_per_class_and_per_label() -> None:
    sms, tags = task_for(SMS), task_for(Classes(("a b", "c"), None, label_format="multi"))
    assert sms.temperature(np.array([2.5])) == 2.5
    assert sms.temperature_metrics(2.5) == {"calibration/temperature": 2.5}
    assert sms.head_temperatures(2.5) == [2.5, 2.5]
    assert sms.head_shifts({"spam": -1.0, "ham": 0.0}) == [0.0, -1.0]
    assert tags.temperature(np.array([0.5, 2.0])) == {"a b": 0.5, "c": 2.0}
    assert tags.temperature_metrics({"a b": 0.5, "c": 2.0}) == {
        "calibration/temperature_a_b": 0.5,
        "calibration/temperature_c": 2.0,
    }
    assert tags.head_temperatures({"c": 2.0, "a b": 0.5}) == [0.5, 2.0]
    with pytest.raises(SpamGPTError) as info:
        tags.head_shifts({"a b": 0.0, "d": 1.0})
    assert str(info.value) == (
        "the shifts are of the labels a b, d, the model has a b, c: evaluate another model's? "
        "(run evaluate again, models/calibration.json)"
    )
    fitted, shift = np.array([1.0, 1.0, 0.7]), np.array([0.0, 0.3, 0.0])
    assert tags.unfitted(fitted[:2]).tolist() == [True, True]
    three = task_for(Classes(("x", "y", "z"), None, label_format="multi"))
    assert three.unfitted(fitted, shift).tolist() == [True, False, False]
    assert three.unfitted_labels(fitted, shift) == ["x"]
    assert three.unfitted_labels(fitted) == ["x", "y"]


def test_calibration_through_each_task_is_its_own_shapes() -> None:
    rng = np.random.default_rng(8)
    z = rng.normal(scale=2.0, size=(200, 2))
    labels = (rng.random(200) < calibration.probabilities(z, 1.0)[:, 1]).astype(int)
    sms = task_for(SMS)
    assert (
        sms.fit_temperature(z * 2, labels).tolist()
        == calibration.fit_temperature(z * 2, labels).tolist()
    )
    t, c = sms.fit_platt(z * 2, labels)
    by_platt = calibration.fit_platt(z * 2, labels)
    assert (t.tolist(), c.tolist()) == (by_platt[0].tolist(), by_platt[1].tolist())
    assert t[0] == pytest.approx(2, rel=0.3)  # the logits doubled
    np.testing.assert_array_equal(sms.calibrated(z, t, c), calibration.probabilities(z, t, c))
    assert sms.calibration_scores(labels, z, t, c) == calibration.scores(labels, z, t, c)
    frame = sms.reliability_frame(labels, {"raw": calibration.probabilities(z, 1.0)})
    assert frame.equals(
        calibration.reliability_frame(
            {"raw": calibration.top_class(calibration.probabilities(z, 1.0), labels)}
        )
    )
    tags = task_for(Classes(("a", "b"), None, label_format="multi"))
    y = (rng.random((200, 2)) < calibration.label_probabilities(z, 1.0)).astype(float)
    assert (
        tags.fit_temperature(z * 3, y).tolist()
        == calibration.fit_label_temperatures(z * 3, y).tolist()
    )
    t, c = tags.fit_platt(z * 3, y)
    np.testing.assert_array_equal(
        tags.calibrated(z, t, c), calibration.label_probabilities(z, t, c)
    )
    assert tags.calibration_scores(y, z, t, c) == calibration.label_scores(y, z, t, ["a", "b"], c)
    frame = tags.reliability_frame(y, {"raw": calibration.label_probabilities(z, 1.0)})
    assert frame.equals(
        calibration.reliability_frame(
            {"raw": calibration.each_label(calibration.label_probabilities(z, 1.0), y)}
        )
    )


@pytest.mark.parametrize(
    ("classes", "setting", "said"),
    [
        (PLAIN, 0.5, ["no data.positive_label: each message gets its most probable class"]),
        (PLAIN, None, []),
        (SMS, 0.5, []),
        (SMS, None, []),
    ],
)
def test_single_label_check_threshold_says_when_the_most_probable_class_decides(
    caplog, classes: Classes, setting: float | None, said: list[str]
) -> None:
    with caplog.at_level("INFO", logger="spamgpt.tasks.classification"):
        task_for(classes).check_threshold(setting)
    assert [r.getMessage() for r in caplog.records] == said


def test_threshold_settings_each_task_refuses() -> None:
    task_for(CLASSES).check_threshold(0.5)  # a number for every label: fine
    task_for(CLASSES).check_threshold({"max_fpr": 0.1})
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold"):
        task_for(CLASSES).check_threshold({"max_fpr": 2.0})
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: the policy"):
        task_for(PLAIN).check_threshold({"max_fpr": 0.1})  # no positive class
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: a threshold applies to two"):
        task_for(Classes(THREE.names, "sales")).check_threshold(0.5)
    with pytest.raises(ParamsError, match=r"^evaluate\.threshold: multi-label data needs"):
        task_for(CLASSES).check_threshold(None)


def test_rates_and_whether_decisions_meet_a_policy_by_hand() -> None:
    from spamgpt.tasks.classification import _meets, _rates

    truth = np.array([True, True, False, False, False])
    assert _rates(truth, np.array([True, False, True, False, False])) == {
        "precision": 0.5, "recall": 0.5, "fpr": 1 / 3
    }  # fmt: skip
    assert _rates(truth, np.zeros(5, bool)) == {"precision": 0.0, "recall": 0.0, "fpr": 0.0}
    assert _rates(np.zeros(2, bool), np.ones(2, bool)) == {
        "precision": 0.0, "recall": 0.0, "fpr": 1.0
    }  # fmt: skip
    assert _rates(np.ones(2, bool), np.ones(2, bool)) == {
        "precision": 1.0, "recall": 1.0, "fpr": 0.0
    }  # fmt: skip
    half = np.array([True, False, True, False, False])  # precision 1/2, fpr 1/3
    assert _meets({"min_precision": 0.5}, truth, half)
    assert not _meets({"min_precision": 0.51}, truth, half)
    assert _meets({"max_fpr": 1 / 3}, truth, half)
    assert not _meets({"max_fpr": 0.3}, truth, half)
    assert not _meets({"max_fpr": 0.5}, truth, np.array([False, False, True, False, False]))
    assert not _meets({"max_fpr": 1.0}, np.zeros(5, bool), half)  # no true positive


def test_single_label_curves_and_a_policy_error_name_the_class() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.1, 0.8, 0.1], [0.3, 0.4, 0.3], [0.2, 0.2, 0.6],
         [0.4, 0.1, 0.5]]
    )  # fmt: skip
    frames = task_for(THREE).curve_frames(labels, probs)
    assert frames["roc"]["class"].unique().tolist() == list(THREE.names)
    for i, name in enumerate(THREE.names):
        fpr, tpr, _ = skm.roc_curve(labels == i, probs[:, i])
        roc = frames["roc"][frames["roc"]["class"] == name]
        np.testing.assert_allclose(roc[["fpr", "tpr"]].to_numpy(float).T, [fpr, tpr])
    one = task_for(Classes(THREE.names, "outage")).curve_frames(labels, probs)
    assert one["roc"]["class"].unique().tolist() == ["outage"]
    worst = two(np.where(LABELS == 1, 0.1, 0.9))  # every spam below every ham
    with pytest.raises(ParamsError, match=r"no threshold gives 'spam' a validation precision"):
        task_for(SMS).choose_threshold({"min_precision": 0.9}, LABELS, worst)


def test_multi_label_curves_are_each_labels_against_scikit_learn() -> None:
    targets, probs = sample(n=60, seed=4)
    targets[:, 2] = 1  # urgent on every message: no curve
    frames = task_for(CLASSES).curve_frames(targets, probs)
    assert frames["roc"].columns.tolist() == ["class", "point", "fpr", "tpr"]
    assert list(frames) == ["roc", "pr"]
    for kind in ("roc", "pr"):
        assert frames[kind]["class"].unique().tolist() == ["billing", "shipping"]
        assert frames[kind].index.tolist() == list(range(len(frames[kind])))
    for i, name in enumerate(("billing", "shipping")):
        fpr, tpr, _ = skm.roc_curve(targets[:, i], probs[:, i])
        roc = frames["roc"][frames["roc"]["class"] == name]
        np.testing.assert_allclose(roc[["fpr", "tpr"]].to_numpy(float).T, [fpr, tpr])
        assert roc["point"].tolist() == list(range(len(fpr)))
        precision, recall, _ = skm.precision_recall_curve(targets[:, i], probs[:, i])
        pr = frames["pr"][frames["pr"]["class"] == name]
        np.testing.assert_allclose(
            pr[["recall", "precision"]].to_numpy(float).T, [recall, precision]
        )


def test_widths_and_names_each_task_refuses() -> None:
    with pytest.raises(ValueError):  # one probability for two classes: refused, not zipped
        task_for(SMS).answers(np.array([[0.7]]), None)
    tags = task_for(Classes(("a", "b"), None, label_format="multi"))
    with pytest.raises(ValueError):
        tags.temperature(np.array([1.5]))
    with pytest.raises(ValueError):
        tags.unfitted_labels(np.array([1.0, 1.0, 1.0]))
    with pytest.raises(SpamGPTError, match=r"^the temperatures are of the labels a, c, the model"):
        tags.head_temperatures({"a": 1.0, "c": 2.0})
    frame = task_for(SMS).prediction_frame(np.array([[0.25, 0.75]], dtype=np.float32), None)
    assert frame["p_spam"].dtype == np.float64 and frame["probability"].dtype == np.float64
    assert frame["probability"].tolist() == [0.75]
    # the probability shown of a wrong message: six decimals
    probs = np.array([[0.1234567, 0.8765433]])
    table = pd.DataFrame(
        {"line": [1], "label": ["ham"], "predicted": ["spam"], "probability": [0.9], "text": ["x"]}
    )
    _, wrong = task_for(SMS).test_errors(np.array([0]), probs, 0.5, table)
    assert wrong["spam_probability"].tolist() == [0.876543]


def test_multi_label_test_errors_apply_the_threshold() -> None:
    targets = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    probs = np.array([[0.45, 0.1, 0.2], [0.1, 0.3, 0.1]])
    table = pd.DataFrame({"line": [1, 2]})
    thresholds = {"billing": 0.4, "shipping": 0.25, "urgent": 0.5}
    confusion, wrong = task_for(CLASSES).test_errors(targets, probs, thresholds, table)
    assert wrong.empty and confusion.to_dict("list") == {
        "actual": ["billing", "shipping"], "predicted": ["billing", "shipping"]
    }  # fmt: skip


XY = Classes(("x", "y", "z"), None, label_format="multi")


def test_each_candidate_threshold_scores_the_objective_as_scikit_learn() -> None:
    """_Search's one sorted pass: for each label and each of its candidate thresholds (the
    other labels as they are), the objective is scikit-learn's at those thresholds."""
    from spamgpt.tasks.classification import _Search

    rng = np.random.default_rng(11)
    truth = rng.random((40, 3)) < [0.3, 0.5, 0.0]  # z on no message: its F1 0 (0/0)
    probs = np.round(rng.random((40, 3)), 1)  # many ties, and some exactly at a threshold
    search = _Search(truth, probs, np.array([0.5, 0.3, 0.6]))
    search.move(1, 0.4)  # a move, as the ascent makes one

    def by_sklearn(objective: str, i: int, thresholds: np.ndarray) -> float:
        predicted = probs >= thresholds
        if objective == "accuracy":
            return skm.accuracy_score(truth, predicted)
        if objective in ("micro_f1", "macro_f1"):
            average = objective.removesuffix("_f1")
            return skm.f1_score(truth, predicted, average=average, zero_division=0)
        return skm.f1_score(truth[:, i], predicted[:, i], zero_division=0)

    for i in range(3):
        for objective in ("micro_f1", "macro_f1", "accuracy", "own"):
            candidates, values, now = search.objective_by_threshold(i, objective, 3, None)
            assert candidates.tolist() == sorted(set(probs[:, i].tolist()), reverse=True)
            assert now == pytest.approx(by_sklearn(objective, i, search.thresholds), abs=1e-12)
            for candidate, value in zip(candidates, values, strict=True):
                moved = search.thresholds.copy()
                moved[i] = candidate
                expected = by_sklearn(objective, i, moved)
                assert value == pytest.approx(expected, abs=1e-12), (i, objective, candidate)
        _, values, _ = search.objective_by_threshold(i, "micro_f1", 3, {"min_precision": 0.6})
        for candidate, value in zip(candidates, values, strict=True):
            on = probs[:, i] >= candidate
            tp = (on & truth[:, i]).sum()
            if tp == 0 or tp / on.sum() < 0.6:
                assert value == -np.inf


def test_the_ascent_keeps_half_on_a_tie_and_takes_the_nearest_of_tied_candidates() -> None:
    x = np.array([1, 0, 1, 0, 0, 1, 1, 0], bool)
    p = np.array([0.9, 0.8, 0.1, 0.8, 0.5, 0.9, 0.8, 0.1])
    truth = np.column_stack([x, x, ~x])
    probs = np.column_stack([p, np.where(x, 0.9, 0.2), np.where(x, 0.2, 0.9)])
    # x: its F1 is the same at 0.9, 0.8 and 0.1, all above 0.5's: the nearest to 0.5 is 0.8
    # y and z are separated at 0.5, and 0.8 and 0.9 (z: 0.9 alone) separate them as well
    choice = task_for(XY).choose_threshold("auto", truth, probs, "x_f1", 1)
    assert choice.threshold == {"x": 0.8, "y": 0.5, "z": 0.5}
    choice = task_for(XY).choose_threshold("auto", truth, probs, "micro_f1", 1)
    assert choice.threshold["y"] == 0.5 and choice.threshold["z"] == 0.5


def test_the_ascent_ends_at_a_local_optimum_on_random_sets() -> None:
    """No single label's move among its candidates raises scikit-learn's objective at the
    end: the sweeps go on while any label moves."""

    def objective_value(objective: str, truth: np.ndarray, predicted: np.ndarray) -> float:
        if objective == "accuracy":  # the whole set right
            return float((truth == predicted).all(axis=1).mean())
        tp, wrong = (truth & predicted).sum(), (truth != predicted).sum()
        return 2 * tp / max(2 * tp + wrong, 1)  # micro F1 (test_report_matches_scikit_learn)

    rng = np.random.default_rng(12)
    for _ in range(25):
        n, labels = int(rng.integers(15, 60)), int(rng.integers(2, 5))
        names = Classes(tuple(f"l{i}" for i in range(labels)), None, label_format="multi")
        truth = rng.random((n, labels)) < rng.uniform(0.2, 0.6, labels)
        probs = np.round(np.clip(0.3 * truth + 0.7 * rng.random((n, labels)), 0, 1), 2)
        for objective in ("micro_f1", "accuracy"):
            choice = task_for(names).choose_threshold("auto", truth, probs, objective, 1)
            chosen = task_for(names).thresholds(choice.threshold)
            reached = objective_value(objective, truth, probs >= chosen)
            for i in range(labels):
                for t in np.unique(probs[:, i]):
                    moved = chosen.copy()
                    moved[i] = t
                    assert objective_value(objective, truth, probs >= moved) <= reached + 1e-12


def test_reports_of_no_message_one_message_and_integer_matrices() -> None:
    empty = task_for(CLASSES).report(np.zeros((0, 3)), np.zeros((0, 3)), None)
    assert (empty["accuracy"], empty["samples_f1"], empty["hamming_loss"]) == (0.0, 0.0, 0.0)
    one = Classes(("only",), None, label_format="multi")
    rep = task_for(one).report(np.array([[1.0]]), np.array([[0.2]]), None)
    assert (rep["hamming_loss"], rep["accuracy"], rep["micro_f1"]) == (1.0, 0.0, 0.0)
    rep = task_for(one).report(np.array([[1.0]]), np.array([[0.7]]), None)
    assert (rep["hamming_loss"], rep["accuracy"], rep["micro_f1"]) == (0.0, 1.0, 1.0)
    targets, probs = sample(n=30, seed=5)
    rep = task_for(CLASSES).report(targets, probs, None)
    assert json.dumps(rep["confusion_matrix"]) == json.dumps(
        task_for(CLASSES).confusion(targets > 0.5, probs >= 0.5).astype(int).tolist()
    )
    assert all(type(v) is int for row in rep["confusion_matrix"] for v in row)
    single = task_for(SMS).report(np.array([1]), two(np.array([0.9])), 0.5)
    assert single["accuracy"] == 1.0 and single["macro_f1"] == 0.5  # ham: no message, F1 0
    assert task_for(CLASSES).thresholds(0.7).tolist() == [0.7, 0.7, 0.7]
    assert task_for(CLASSES).thresholds({"urgent": 0.2}).tolist() == [0.5, 0.5, 0.2]
    figure = task_for(SMS).report_figures(single, "val")["evaluation/val_confusion_matrix.png"]
    assert [ax.get_title() for ax in figure.axes] == ["val (counts)", "val (row-normalised)"]


def test_the_threshold_objective_of_each_select_metric() -> None:
    """The set figures by name, a label's F1 by its name (a label may be called "macro"),
    anything else macro F1."""
    named = task_for(Classes(("macro", "micro", "accuracy_x"), None, label_format="multi"))
    for figure in ("micro_f1", "macro_f1", "accuracy"):
        assert named.threshold_objective(figure) == figure
    assert named.threshold_objective("accuracy_x_f1") == "accuracy_x"
    for other in ("auto", "val_loss", "other_f1", "macro", "accuracy_x", "_f1"):
        assert named.threshold_objective(other) == "macro_f1", other


def test_a_move_must_gain_more_than_the_tolerance_and_ties_are_within_it(monkeypatch) -> None:
    """_GAIN (1e-12, rounding) at 0.25 shows its edges on exact binary fractions: a move
    raising the label's F1 by exactly the tolerance is not taken, and a candidate within it
    of the best is a tie (the nearest to the present threshold wins)."""
    from spamgpt.tasks import classification

    monkeypatch.setattr(classification, "_GAIN", 0.25)
    every = np.ones(5, bool)
    truth = np.column_stack([every, every, ~every])
    others = np.column_stack([np.full(5, 0.9), np.full(5, 0.2)])
    # x's F1: 0.75 at 0.5 (3 of 5 on), 1.0 at 0.3: exactly 0.25 more
    probs = np.column_stack([[0.7, 0.4, 0.3, 0.6, 0.9], others])
    assert task_for(XY).choose_threshold("auto", truth, probs, "x_f1", 1).threshold["x"] == 0.5
    monkeypatch.setattr(classification, "_GAIN", 0.1)  # less: taken (0.4's 8/9 is no tie)
    assert task_for(XY).choose_threshold("auto", truth, probs, "x_f1", 1).threshold["x"] == 0.3
    monkeypatch.setattr(classification, "_GAIN", 0.25)
    # 4/7 at 0.5; 1.0 at 0.2, and 0.75 (exactly 0.25 less) at 0.3, nearer 0.5: taken
    probs = np.column_stack([[0.7, 0.3, 0.2, 0.2, 0.7], others])
    assert task_for(XY).choose_threshold("auto", truth, probs, "x_f1", 1).threshold["x"] == 0.3


def test_a_policy_met_at_half_starts_there() -> None:
    """The ascent starts at 0.5 where the policy holds at 0.5 itself (a probability of
    exactly 0.5 is on): x's F1 is 2/3 at 0.5 and at 0.2, so where it starts, it stays."""
    x = np.array([True, True, False, False])
    truth = np.column_stack([x, x, ~x])
    probs = np.column_stack([[0.5, 0.2, 0.2, 0.2], np.where(x, 0.9, 0.1), np.where(x, 0.1, 0.9)])
    choice = task_for(XY).choose_threshold({"min_precision": 0.5}, truth, probs, "x_f1", 1)
    assert choice.threshold == {"x": 0.5, "y": 0.5, "z": 0.5}
    assert choice.reached["x"] == {"precision": 1.0, "recall": 0.5, "fpr": 0.0}


def test_best_f1_thresholds_are_each_labels_and_half_without_positives() -> None:
    """val/best_threshold_<label>: scikit-learn's F1 optimum per label, whatever the setting;
    0.5 for a label no validation message carries."""
    targets, probs = sample(n=60, seed=6)
    targets[:, 2] = 0  # urgent on no message
    for setting in (0.7, "auto"):
        best = task_for(CLASSES).choose_threshold(setting, targets, probs).best_f1
        assert best["urgent"] == 0.5
        for i, name in enumerate(CLASSES.names[:2]):
            f1 = {t: skm.f1_score(targets[:, i], probs[:, i] >= t) for t in np.unique(probs[:, i])}
            assert f1[best[name]] == max(f1.values())


def test_booleans_or_unsigned_integers_as_probabilities_choose_as_floats() -> None:
    """0/1 decisions (a hard classifier's) in any numeric type: the same thresholds as the
    same values as floats (a bool or uint8 cannot be negated to sort them)."""
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]], bool)
    decided = np.array([[1, 0], [0, 1], [0, 1], [1, 0], [1, 1]])
    names = Classes(("a", "b"), None, label_format="multi")
    expected = task_for(names).choose_threshold("auto", truth, decided.astype(float), "auto", 1)
    for dtype in (bool, np.uint8):
        choice = task_for(names).choose_threshold("auto", truth, decided.astype(dtype), "auto", 1)
        assert choice == expected, dtype


def test_the_f1_of_nothing_counted_is_zero_not_whatever_memory_held() -> None:
    """_f1's 0/0 entries are written 0 (numpy leaves them as the memory was, and warns)."""
    import warnings

    from spamgpt.tasks.classification import _f1

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(20):
            freed = [np.full(3, 0.75) for _ in range(12)]  # memory the result may be given
            del freed
            counts = np.array([0.0, 1.0, 0.0]), np.array([0.0, 2.0, 0.0]), np.zeros(3)
            assert _f1(*counts).tolist() == [0.0, 0.5, 0.0]


def test_a_policy_rules_out_each_candidate_that_misses_it_exactly_at_its_bound() -> None:
    """_Search's policy: a candidate (and the present threshold) keeps its objective where it
    has a true positive and its precision reaches min_precision (x at 0.8: exactly 0.5) or its
    false-positive rate is within max_fpr (x at 0.8: exactly 1/4; y has one negative), else
    -inf; no 0/0 on the way (z: nothing on at 0.95)."""
    import warnings

    from spamgpt.tasks.classification import _Search

    truth = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 0], [0, 1, 1], [0, 1, 0], [0, 0, 1]], bool)
    probs = np.array(
        [[0.9, 0.5, 0.1], [0.8, 0.4, 0.5], [0.6, 0.3, 0.3], [0.4, 0.2, 0.7], [0.3, 0.1, 0.2],
         [0.2, 0.9, 0.9]]
    )  # fmt: skip
    search = _Search(truth, probs, np.array([0.5, 0.5, 0.95]))
    policies = ({"min_precision": 0.5}, {"max_fpr": 0.25}, {"max_fpr": 0.5}, {"max_fpr": 1.0})
    kept = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for policy in policies:
            ((rule, bound),) = policy.items()
            for i in range(3):
                candidates, values, now = search.objective_by_threshold(i, "micro_f1", 3, policy)
                _, free, free_now = search.objective_by_threshold(i, "micro_f1", 3, None)
                at = zip(
                    [*candidates, search.thresholds[i]], [*values, now], [*free, free_now],
                    strict=True,
                )  # fmt: skip
                for threshold, value, unbound in at:
                    on = probs[:, i] >= threshold
                    tp, fp = int((on & truth[:, i]).sum()), int((on & ~truth[:, i]).sum())
                    if rule == "min_precision":
                        meets = tp > 0 and tp / (tp + fp) >= bound
                    else:
                        meets = tp > 0 and fp / int((~truth[:, i]).sum()) <= bound
                    assert value == (unbound if meets else -np.inf), (policy, i, threshold)
                    kept += meets
    assert kept == 52  # of the 4 x 20 scored (each label's candidates and its present)


def test_accuracy_of_one_message_is_zero_or_one() -> None:
    from spamgpt.tasks.classification import _Search

    search = _Search(np.array([[True, False]]), np.array([[0.7, 0.2]]), np.full(2, 0.5))
    candidates, values, now = search.objective_by_threshold(0, "accuracy", 2, None)
    assert (candidates.tolist(), values.tolist(), now) == ([0.7], [1.0], 1.0)
    search.move(1, 0.2)  # y claimed wrongly: the set is wrong whatever x's threshold
    _, values, now = search.objective_by_threshold(0, "accuracy", 2, None)
    assert (values.tolist(), now) == ([0.0], 0.0)


def test_the_default_min_support_is_ten_positives() -> None:
    rng = np.random.default_rng(8)
    names = Classes(("ten", "nine"), None, label_format="multi")
    truth = np.zeros((40, 2), bool)
    truth[:10, 0] = truth[:9, 1] = True
    probs = np.round(np.clip(0.3 * truth + 0.7 * rng.random((40, 2)), 0, 1), 2)
    assert task_for(names).choose_threshold("auto", truth, probs).kept_default == ["nine"]
