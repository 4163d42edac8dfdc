"""spamgpt.evaluate.explain: integrated gradients' completeness on a tiny GPT-2, a planted trigger
token found on a model trained to key on it, and `classify --explain` / `predict --explain-top`."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from spamgpt.data import tokenizer
from spamgpt.evaluate import explain
from spamgpt.labels import Classes
from spamgpt.model import classifier
from spamgpt.model.gpt2 import GPT2, GPT2Classifier, GPTConfig
from spamgpt.random_hub import make_hub
from spamgpt.serve import cli
from spamgpt.texts import HEAD

TRIGGER = 7  # the token that decides the class in the trained fixture


def tiny(seed: int, pooling: str = "last", classes: int = 2, multi: bool = False):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=64, n_ctx=32, n_embd=32, n_layer=2, n_head=4)
    label_format = "multi" if multi else "single"
    model = GPT2Classifier(GPT2.init_random(config), classes, pooling, label_format)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("pooling", "classes", "multi"), [("last", 2, False), ("mean", 3, False), ("last", 3, True)]
)
def test_attributions_sum_to_the_log_odds_change(pooling: str, classes: int, multi: bool) -> None:
    """Completeness: sum of attributions = log-odds at the text - at the zero baseline."""
    model = tiny(0, pooling, classes, multi)
    gen = torch.Generator().manual_seed(1)
    for target in range(classes):
        ids = torch.randint(0, 64, (9,), generator=gen)
        attributions, delta = explain.integrated_gradients(model, ids, target, steps=32)
        tokens = model.gpt.wte(ids).detach()
        positions = model.gpt.wpe(torch.arange(9)).detach()
        with torch.no_grad():
            ends = torch.stack([torch.zeros_like(tokens), tokens]) + positions
            logits = model(ends, torch.tensor([9, 9]), 0)
        if multi:
            change = float(logits[1, target] - logits[0, target])
        else:  # two classes: the difference of the logits; more: against their log-sum-exp
            others = [c for c in range(classes) if c != target]
            odds = logits[:, target] - torch.logsumexp(logits[:, others], dim=1)
            change = float(odds[1] - odds[0])
        assert abs(change) > 0.01  # the test means something
        assert float(attributions.sum()) == pytest.approx(change, rel=0.02, abs=1e-3)
        assert delta == pytest.approx(float(attributions.sum()) - change, abs=1e-4)
    # the model's own logits at the text agree with its ordinary forward pass
    ids = torch.randint(0, 64, (5,), generator=gen)
    direct = model(ids[None], torch.tensor([5]))
    via = model((model.gpt.wte(ids) + model.gpt.wpe(torch.arange(5)))[None], torch.tensor([5]), 0)
    torch.testing.assert_close(direct, via)


def trigger_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n messages of 6 to 12 tokens from 8..63; half hold TRIGGER at a random place (class 1)."""
    lengths = torch.randint(6, 13, (n,), generator=gen)
    ids = torch.randint(8, 64, (n, 12), generator=gen)
    labels = torch.arange(n) % 2
    where = (torch.rand(n, generator=gen) * lengths).long()
    ids[labels == 1, where[labels == 1]] = TRIGGER
    return ids, lengths, labels


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster than handing each op to several (and far faster on
    a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_planted_trigger_token_gets_the_largest_attribution(one_thread) -> None:
    model = tiny(2).train()
    gen = torch.Generator().manual_seed(3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        ids, lengths, labels = trigger_data(64, gen)
        loss = torch.nn.functional.cross_entropy(model(ids, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    ids, lengths, labels = trigger_data(60, gen)
    with torch.no_grad():
        assert (model(ids, lengths).argmax(1) == labels).float().mean() >= 0.95  # it learnt
    hits = []
    for row, n in zip(ids[labels == 1], lengths[labels == 1], strict=True):
        attributions, _ = explain.integrated_gradients(model, row[:n], 1)
        hits.append(int(row[attributions.argmax()]) == TRIGGER)
    assert sum(hits) / len(hits) >= 0.9, hits


def test_pieces_join_into_the_text_and_the_strongest_are_marked(tmp_path: Path) -> None:
    enc = tokenizer.load(make_hub(tmp_path))
    text = "WIN £900 now, call"
    ids = enc.encode_ordinary(text)
    pieces = explain.pieces(enc, ids)
    assert "".join(pieces) == text and len(pieces) == len(ids)
    attributions = [0.0] * len(ids)
    attributions[0], attributions[-1] = 2.0, 1.0
    e = explain.Explanation("spam", pieces, attributions, 0.0)
    first, middle, last = pieces[0], "".join(pieces[1:-1]), pieces[-1]
    assert e.marked(1) == f"[[{first}]]{middle}{last}"
    core = last.lstrip()  # a token's leading space stays outside the mark
    assert e.marked(2) == f"[[{first}]]{middle}{last[: len(last) - len(core)]}[[{core}]]"
    assert [t["token"] for t in e.top(5)] == [pieces[0], pieces[-1]]  # positive ones only


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    hub = make_hub(tmp_path_factory.mktemp("hub"))
    model = GPT2Classifier(GPT2.from_pretrained(hub))
    torch.nn.init.normal_(model.head.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    classes = Classes(("ham", "spam"), "spam")
    meta = {"repo_id": "openai-community/gpt2", **classes.to_dict(), "pooling": "last"}
    meta |= {"max_length": 16, "pad_id": tokenizer.load(hub).eot_token, "trained": []}
    folder = tmp_path_factory.mktemp("model") / "finetuned"
    classifier.save(model, folder, meta, hub, full=True)
    return folder


def run_cli(capsys, *args: str) -> str:
    cli.main([*args])
    return capsys.readouterr().out


def test_classify_explain_marks_and_json_gives_every_token(model_dir: Path, capsys) -> None:
    texts = ["WIN a prize now", "see you at 7"]
    common = ["--model", str(model_dir), "--device", "cpu", "--precision", "fp32", "--explain"]
    lines = [
        json.loads(x) for x in run_cli(capsys, "classify", *common, "--json", *texts).splitlines()
    ]
    model, meta = classifier.load(model_dir)
    enc = tokenizer.load(model_dir)
    classes = classifier.classes_of(meta)
    for line, text in zip(lines, texts, strict=True):
        why = line["explanation"]
        assert why["label"] == line["label"] and "".join(why["tokens"]) == text
        target = classes.index(line["label"])
        ids = torch.tensor(enc.encode_ordinary(text))
        attributions, _ = explain.integrated_gradients(model, ids, target)
        assert why["attributions"] == pytest.approx(attributions.tolist(), abs=1e-5)
    plain = run_cli(capsys, "classify", *common, *texts).splitlines()
    for out, line in zip(plain, lines, strict=True):
        assert out.split("\t")[2] == line["explanation"]["marked"] and "[[" in out


def test_predict_explain_top_adds_the_strongest_tokens(model_dir: Path, tmp_path, capsys) -> None:
    source = tmp_path / "in.csv"
    pd.DataFrame({"id": [1, 2], "text": ["WIN a prize now", "see you at 7"]}).to_csv(source)
    out = tmp_path / "out.csv"
    cli.main(["predict", str(source), "-o", str(out), "--keep", "id", "--model", str(model_dir),
              "--device", "cpu", "--precision", "fp32", "--explain-top", "2"])  # fmt: skip
    scored = pd.read_csv(out)
    model, meta = classifier.load(model_dir)
    enc = tokenizer.load(model_dir)
    classes = classifier.classes_of(meta)
    for text, label, top in zip(["WIN a prize now", "see you at 7"], scored["label"],
                                scored["top_tokens"], strict=True):  # fmt: skip
        (e,) = explain.explain_texts(model, enc, [text], [classes.index(label)], classes, 16, HEAD)
        assert json.loads(top) == e.top(2) and 1 <= len(e.top(2)) <= 2


# Unit tests of the module's functions in this process (the two above start the CLI, which sets
# torch's threads: mutmut's forked children then hang in OpenMP, so its run leaves them out).


def midpoint_attributions(model: GPT2Classifier, ids: torch.Tensor, target: int) -> torch.Tensor:
    """Integrated gradients by hand: one point of the 32 at a time, (k + 0.5) / 32 of the way."""
    tokens = model.gpt.wte(ids).detach()
    positions = model.gpt.wpe(torch.arange(len(ids))).detach()
    total = torch.zeros_like(tokens)
    for k in range(32):
        scaled = ((k + 0.5) / 32 * tokens).requires_grad_(True)
        logits = model((scaled + positions)[None], torch.tensor([len(ids)]), 0)
        odds = logits[0, target] - torch.logsumexp(logits[0, 1 - target : 2 - target], 0)
        (grad,) = torch.autograd.grad(odds, scaled)
        total += grad
    return (tokens * total / 32).sum(-1)


def test_integrated_gradients_is_the_midpoint_rule_in_batches_of_the_path(
    monkeypatch, one_thread
) -> None:
    """32 points by default, each (k + 0.5) / 32 of the way, as many per forward pass as
    PATH_TOKENS allows (then one pass for the text and the baseline), on the CPU."""
    model = tiny(4)
    ids = torch.tensor([5, 9, 2, 40, 17, 33, 8, 1, 60])
    expected = midpoint_attributions(model, ids, 1)
    batches = []
    hook = model.register_forward_hook(lambda m, inputs, out: batches.append(len(inputs[0])))
    attributions, delta = explain.integrated_gradients(model, ids, 1)
    assert batches == [32, 2]
    torch.testing.assert_close(attributions, expected, rtol=1e-4, atol=1e-6)
    assert attributions.device.type == "cpu" and not attributions.requires_grad
    monkeypatch.setattr(explain, "PATH_TOKENS", 40)  # 4 points of 9 tokens a pass
    batches.clear()
    again, again_delta = explain.integrated_gradients(model, ids, 1)
    assert batches == [4] * 8 + [2]
    torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-6)
    assert again_delta == pytest.approx(delta, abs=1e-5)
    monkeypatch.setattr(explain, "PATH_TOKENS", 5)  # fewer than the tokens: a point a pass
    batches.clear()
    explain.integrated_gradients(model, ids, 1, steps=3)
    assert batches == [1, 1, 1, 2]
    hook.remove()


def test_a_bfloat16_model_is_explained_in_its_own_dtype(one_thread) -> None:
    """The path's points are in the embeddings' dtype: a bfloat16 model's (float32 points
    would hand it float32 inputs, which its layers refuse)."""
    model = tiny(4)
    ids = torch.tensor([5, 9, 2, 40])
    expected, _ = explain.integrated_gradients(model, ids, 1, steps=8)
    attributions, _ = explain.integrated_gradients(model.to(torch.bfloat16), ids, 1, steps=8)
    assert attributions.dtype == torch.bfloat16
    torch.testing.assert_close(attributions.float(), expected, rtol=0.1, atol=0.05)


def test_a_character_cut_by_truncation_reads_as_a_replacement(tmp_path: Path) -> None:
    """The pieces of tokens that end inside a character (max_length cut it): U+FFFD for the
    incomplete bytes, never an error."""
    enc = tokenizer.load(make_hub(tmp_path))
    ids = enc.encode_ordinary("a€b")
    assert len(ids) == 5  # a, the euro sign's three bytes, b
    assert explain.pieces(enc, ids) == ["a", "", "", "€", "b"]
    assert explain.pieces(enc, ids[:3]) == ["a", "", "\ufffd"]


def test_an_explanation_as_a_dict_rounds_to_six_places() -> None:
    e = explain.Explanation(
        "spam", ["a", " b", " c", " d"], [0.1234567, -0.5, 0.25, 0.0], 0.2500004
    )
    assert e.strongest(4) == [2, 0]  # positive ones, strongest first
    assert e.to_dict() == {
        "label": "spam", "tokens": ["a", " b", " c", " d"],
        "attributions": [0.123457, -0.5, 0.25, 0.0], "delta": 0.25,
        "marked": "[[a]] b [[c]] d",
    }  # fmt: skip
    assert e.to_dict(1)["marked"] == "a b [[c]] d"
    assert e.marked() == e.to_dict()["marked"]
    assert e.top(1) == [{"token": " c", "attribution": 0.25}]
    assert explain.Explanation("x", ["a"], [0.12345678], 0.0).top(1)[0]["attribution"] == 0.123457
    assert explain.MARKED == 3 and explain.STEPS == 32


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hub(tmp_path_factory.mktemp("unit-hub"))


def test_explain_answers_explain_the_decided_class_of_the_tokens_read(hub: Path) -> None:
    """Each text explained for its answer's label, over the tokens max_length and the model
    folder's truncation keep (here the last 3)."""
    model = tiny_from(hub, 0, "single")
    enc = tokenizer.load(hub)
    classes = Classes(("ham", "spam"), "spam")
    texts = ["WIN a prize now", "see you at 7"]
    answers = [{"label": "ham", "probabilities": {"ham": 0.1, "spam": 0.9}}, {"label": "spam"}]
    meta = {"max_length": 3, "truncation": "tail"}
    explained = explain.explain_answers(model, enc, texts, answers, classes, meta)
    for e, text, target in zip(explained, texts, (0, 1), strict=True):
        kept = enc.encode_ordinary(text)[-3:]
        attributions, delta = explain.integrated_gradients(model, torch.tensor(kept), target)
        assert e.label == classes.names[target] and e.pieces == explain.pieces(enc, kept)
        assert e.attributions == attributions.tolist() and e.delta == delta
    (head,) = explain.explain_answers(
        model, enc, texts[:1], answers[:1], classes, {"max_length": 2}
    )
    assert head.pieces == explain.pieces(enc, enc.encode_ordinary(texts[0])[:2])  # head: older
    (fewer,) = explain.explain_texts(model, enc, texts[:1], [1], classes, 3, HEAD, steps=4)
    kept = torch.tensor(enc.encode_ordinary(texts[0])[:3])
    assert fewer.attributions == explain.integrated_gradients(model, kept, 1, 4)[0].tolist()
    with pytest.raises(ValueError):  # a target for each text
        explain.explain_texts(model, enc, texts, [0], classes, 3, HEAD)


def tiny_from(hub: Path, seed: int, label_format: str, classes: int = 2) -> GPT2Classifier:
    model = GPT2Classifier(GPT2.from_pretrained(hub), classes, "last", label_format)
    torch.nn.init.normal_(model.head.weight, std=0.5, generator=torch.Generator().manual_seed(seed))
    return model.eval()


def test_top_tokens_are_each_rows_strongest_for_its_label(hub: Path) -> None:
    """A row's `label` decides (not its most probable class); multi-label rows have none: the
    most probable label's."""
    enc = tokenizer.load(hub)
    texts = ["WIN a prize now", "see you at 7"]
    classes = Classes(("ham", "spam"), "spam")
    model = tiny_from(hub, 1, "single")
    scored = pd.DataFrame({"label": ["ham", "spam"], "p_ham": [0.2, 0.9], "p_spam": [0.8, 0.1]})
    meta = {"max_length": 16}
    tops = explain.top_tokens(model, enc, texts, scored, classes, meta, 2)
    for top, text, target in zip(tops, texts, (0, 1), strict=True):
        (e,) = explain.explain_texts(model, enc, [text], [target], classes, 16, HEAD)
        assert json.loads(top) == e.top(2) and e.top(2)
    multi = Classes(("a", "b", "c"), None, label_format="multi")
    model = tiny_from(hub, 2, "multi", classes=3)
    scored = pd.DataFrame({"p_a": [0.2, 0.9], "p_b": [0.7, 0.1], "p_c": [0.1, 0.95]})
    tops = explain.top_tokens(model, enc, texts, scored, multi, meta, 3)
    for top, text, target in zip(tops, texts, (1, 2), strict=True):
        (e,) = explain.explain_texts(model, enc, [text], [target], multi, 16, HEAD)
        assert json.loads(top) == e.top(3) and e.top(3)
    (pounds,) = explain.top_tokens(model, enc, ["£ £ £"], scored[:1], multi, meta, 3)
    assert "£" in pounds and "\\u" not in pounds  # the tokens as text, not escaped
