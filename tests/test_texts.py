"""A message's text from its fields, and the tokens kept of a long one: the same rule in the
loaders' packed cut and the classify path's per-message cut; head_tail learns a class decided
by the ending where head cannot."""

import dataclasses
import random

import pytest
import torch
from conftest import REPO

from spamgpt import params
from spamgpt.data import tokenized
from spamgpt.data.batching import ModelInputs
from spamgpt.errors import ParamsError
from spamgpt.finetune import checkpoint
from spamgpt.finetune.train import Trainer
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier, GPTConfig
from spamgpt.model.trunk import Split
from spamgpt.runtime import Compute
from spamgpt.texts import TextFields, Truncation


def test_fields_join_by_a_blank_line_or_the_template() -> None:
    row = {"subject": "WIN", "body": "a {prize}", "id": "7"}
    assert TextFields(("subject", "body")).join(row) == "WIN\n\na {prize}"
    assert TextFields(("body",)).join(row) == "a {prize}"
    template = TextFields(("subject", "body"), "Subject: {subject}\n{body!r}")
    assert template.join(row) == "Subject: WIN\n'a {prize}'"
    renamed = template.renamed(("title", "text"), "--text-column")
    assert renamed.join({"title": "WIN", "text": "a {prize}"}) == template.join(row)


@pytest.mark.parametrize(
    ("columns", "template", "message"),
    [
        (("subject", "body"), "{subject} {sender}", "data.text_template: names field {sender}"),
        (("body",), "{} {body}", "data.text_template: {} is positional"),
        (("body",), "{body", "data.text_template: not a valid template"),
        (("a", "a"), None, "data.text_column: must name one column or a list of different"),
    ],
)
def test_a_template_naming_a_missing_field_is_refused(columns, template, message) -> None:
    with pytest.raises(ParamsError, match="^" + message.replace("{", r"\{").replace("(", r"\(")):
        TextFields(columns, template)


def test_columns_from_a_flag_are_refused_naming_the_flag() -> None:
    """spamgpt predict --text-column a a: the error names the flag, not data.text_column."""
    for fields in (TextFields(("subject", "body")), TextFields(("a", "b"), "{a}: {b}")):
        with pytest.raises(ParamsError, match=r"^--text-column: must name one column or a list"):
            fields.renamed(("x", "x"), "--text-column")


def test_truncation_keeps_head_tail_or_both() -> None:
    ids = list(range(10))
    assert Truncation("head").keep(ids, 4) == [0, 1, 2, 3]
    assert Truncation("tail").keep(ids, 4) == [6, 7, 8, 9]
    assert Truncation("head_tail").keep(ids, 8) == [0, 1, 4, 5, 6, 7, 8, 9]
    assert Truncation("head_tail", 0.5).keep(ids, 4) == [0, 1, 8, 9]
    assert Truncation("head_tail").keep(ids[:3], 4) == [0, 1, 2]


@pytest.mark.parametrize("side", ["head", "tail", "head_tail"])
def test_the_packed_cut_keeps_the_same_tokens_as_the_per_message_one(side: str) -> None:
    rng = random.Random(0)
    rows = [[rng.randrange(1000) for _ in range(rng.randrange(1, 30))] for _ in range(50)]
    whole = tokenized.pack_ids(rows, 10_000)  # the loaders' input: every message's whole ids
    rule = Truncation(side, 0.3)
    cut = tokenized.cut(whole, 9, rule)
    per_message = tokenized.pack_ids(rows, 9, rule)
    assert torch.equal(cut.rows, per_message.rows) and torch.equal(cut.lengths, per_message.lengths)


def ending_decided(n: int, seed: int) -> tuple[list[list[int]], torch.Tensor]:
    """Token ids of n long messages: 40 random tokens, then the token that decides the class."""
    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    rows = [[rng.randrange(2, 60) for _ in range(40)] + [label] for label in labels]
    return rows, torch.tensor(labels)


def val_accuracy(side: str, tmp_path) -> float:
    train_ids, train_labels = ending_decided(48, 0)
    val_ids, val_labels = ending_decided(32, 1)
    rule = Truncation(side)
    split = {
        name: Split(ModelInputs(tokenized.pack_ids(ids, 16, rule), None), labels)
        for name, ids, labels in (
            ("train", train_ids, train_labels),
            ("val", val_ids, val_labels),
        )
    }
    config = GPTConfig(vocab_size=64, n_ctx=64, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    model = GPT2Classifier(GPT2.init_random(config), 2)
    t = dataclasses.replace(
        params.load(REPO / "params.yaml").train,
        epochs=3, batch_size=16, lr=1e-2, patience=3, device="cpu", precision="fp32",
    )  # fmt: skip
    classes = Classes(("a", "b"))
    trained = classifier.freeze(model, 0)  # the head alone: the last token's state decides
    cpu = torch.device("cpu")
    trainer = Trainer(
        model, trained, split["train"], split["val"], classes, t, Compute(cpu, "fp32")
    )
    state = trainer.fit(checkpoint.CheckpointSaver(tmp_path / f"{side}.pt", "test"))
    return max(entry["val/accuracy"] for entry in state.history)


def test_head_tail_learns_a_class_decided_by_the_ending_where_head_cannot(tmp_path) -> None:
    assert val_accuracy("head_tail", tmp_path) == 1.0
    assert val_accuracy("head", tmp_path) <= 0.75


# --- pinned by mutation testing (tools/mutate.py texts) ---

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spamgpt.texts import HEAD, ONE_TEXT, template_fields  # noqa: E402


def test_template_fields_are_the_base_names_past_escaped_braces() -> None:
    assert template_fields("{{literal}} {a.real} then {b[0]}{c!r:>9}") == ["a", "b", "c"]
    assert template_fields("{x.y[1]} {{") == ["x"]
    assert template_fields("no fields") == []


def test_text_fields_of_one_column_or_a_list() -> None:
    assert TextFields.of("body") == TextFields(("body",))
    assert TextFields.of(["subject", "body"], "{subject}: {body}") == TextFields(
        ("subject", "body"), "{subject}: {body}"
    )
    assert TextFields.of(("a", "b")).columns == ("a", "b")


def test_a_missing_field_error_names_the_columns() -> None:
    with pytest.raises(ParamsError, match=r"\(subject, body\); allowed: those fields$"):
        TextFields(("subject", "body"), "{sender}")


def test_renamed_keeps_literal_braces_conversions_specs_and_attributes() -> None:
    fields = TextFields(("a", "b"), "{{lit}} {a!r:>6}|{b[0]}|{a.__class__.__name__}|{b:_<3}")
    renamed = fields.renamed(("x", "y"), "--text-column")
    assert renamed == TextFields(("x", "y"), fields.template, names=("a", "b"))
    assert renamed.columns == ("x", "y") and renamed.setting == "--text-column"
    assert renamed.join({"x": "WIN", "y": "bo", "z": "other"}) == "{lit}  'WIN'|b|str|bo_"
    again = renamed.renamed(("p", "q"), "--text-column")  # the template's names stay
    assert again.join({"p": "P", "q": "Q"}) == "{lit}    'P'|Q|str|Q__"
    assert TextFields(("a", "b")).renamed(("x", "y"), "--text-column") == TextFields(("x", "y"))
    with pytest.raises(ValueError, match=r"^2 fields, 1 columns$"):  # one new name per field
        fields.renamed(("x",), "--text-column")


@pytest.mark.parametrize("columns", [("subject.line", "0"), ("a{b", "c}"), ("", "x[1]")])
def test_renamed_reads_columns_no_template_could_name(columns: tuple[str, str]) -> None:
    """`spamgpt predict --text-column` names the file's columns, whatever they are called:
    the model's template keeps its own names for them."""
    fields = TextFields(("subject", "body"), "Subject: {subject}\n{body}")
    renamed = fields.renamed(columns, "--text-column")
    assert renamed.join(dict(zip(columns, ["WIN", "a prize"], strict=True))) == (
        "Subject: WIN\na prize"
    )


field_values = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
template_parts = st.lists(
    st.one_of(
        st.sampled_from(["{a}", "{b}", "{a!r}", "{b:>7}", "{a[0]}", "{{", "}}", "\n"]),
        st.text(alphabet="xyz :-", max_size=5),
    ),
    max_size=8,
)


@settings(max_examples=80, deadline=None)
@given(parts=template_parts, a=field_values.filter(bool), b=field_values)
def test_a_renamed_template_reads_the_same_text_from_the_new_columns(
    parts: list[str], a: str, b: str
) -> None:
    fields = TextFields(("a", "b"), "".join(parts))
    renamed = fields.renamed(("title", "body"), "--text-column")
    assert renamed.join({"title": a, "body": b}) == fields.join({"a": a, "b": b})


def test_truncation_is_refused_by_name() -> None:
    with pytest.raises(ParamsError, match=r"^model\.truncation: must be one of head, tail, "):
        Truncation("middle")
    with pytest.raises(ParamsError, match=r"head_tail, got 'middle'$"):
        Truncation("middle")


def test_fields_and_truncation_round_trip_through_classifier_json() -> None:
    fields = TextFields(("s", "b"), "{s}: {b}")
    assert fields.to_dict() == {"text_columns": ["s", "b"], "text_template": "{s}: {b}"}
    assert TextFields.from_dict(fields.to_dict()) == fields
    assert TextFields.from_dict({}) == ONE_TEXT == TextFields(("text",), None)
    rule = Truncation("head_tail", 0.4)
    assert rule.to_dict() == {"truncation": "head_tail", "head_ratio": 0.4}
    assert Truncation.from_dict(rule.to_dict()) == rule
    assert Truncation.from_dict({}) == HEAD == Truncation("head", 0.25)
