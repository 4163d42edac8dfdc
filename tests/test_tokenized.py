"""spamgpt.data.tokenized: token ids of each message, max_length, packing and the tokens files,
with the BPE tokenizer of a tiny generated GPT-2 (nothing downloaded)."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from spamgpt.data import tokenized, tokenizer
from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.labels import SMS
from spamgpt.random_hub import make_hub

EOT_TEXT = "<|endoftext|>"


@pytest.fixture(scope="module")
def enc(tmp_path_factory: pytest.TempPathFactory):
    return tokenizer.load(make_hub(tmp_path_factory.mktemp("hub"), num_merges=100))


def frame(labels: list[str], lines: list[int] | None = None) -> pd.DataFrame:
    lines = lines or list(range(1, len(labels) + 1))
    return pd.DataFrame({"line": lines, "label": labels, "text": ["x"] * len(labels)})


# --- encode ---


def test_encode_gives_the_tokenizers_ids(enc) -> None:
    texts = ["Free entry in 2 a wkly comp", "Ok lar... Joking wif u oni", "£900 prize 😀"]
    ids = tokenized.encode(enc, texts)
    assert ids == [enc.encode_ordinary(t) for t in texts]
    assert [enc.decode(row) for row in ids] == texts
    assert all(0 <= t < enc.eot_token for row in ids for t in row)


def test_encode_in_slices_on_threads_keeps_every_text_in_its_place(enc) -> None:
    texts = [f"message {i} " * (i % 7) for i in range(3 * tokenized.SLICE_TEXTS + 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # three slices, the last one shorter, whatever the cores
    try:
        ids = tokenized.encode(enc, texts)
    finally:
        torch.set_num_threads(threads)
    assert ids == [enc.encode_ordinary(t) or [enc.eot_token] for t in texts]


def test_empty_text_is_one_end_of_text_token(enc) -> None:
    eot = enc.eot_token
    assert tokenized.encode(enc, ["", "hi", ""]) == [[eot], enc.encode_ordinary("hi"), [eot]]


@pytest.mark.parametrize(
    "text", [EOT_TEXT, f"win {EOT_TEXT} now", f"{EOT_TEXT}{EOT_TEXT}", "<|endoftext"]
)
def test_special_token_text_is_plain_text(enc, text: str) -> None:
    [row] = tokenized.encode(enc, [text])
    assert enc.eot_token not in row
    assert len(row) > 1
    assert enc.decode(row) == text


# --- max_length ---


def test_max_length_null_is_the_longest_training_message(enc) -> None:
    train = torch.tensor([5, 9, 3])
    assert tokenized.resolve_max_length(None, train, 64) == 9
    assert tokenized.resolve_max_length(None, torch.tensor([100, 1]), 64) == 64  # capped at n_ctx
    assert tokenized.resolve_max_length(None, torch.tensor([64]), 64) == 64


def test_max_length_set() -> None:
    train = torch.tensor([5, 9])
    assert tokenized.resolve_max_length(4, train, 64) == 4  # shorter than the data: allowed
    assert tokenized.resolve_max_length(64, train, 64) == 64
    with pytest.raises(ParamsError) as info:
        tokenized.resolve_max_length(65, train, 64)
    assert str(info.value).startswith("model.max_length:") and "64" in str(info.value)
    assert info.value.exit_code == 2


# --- pack ---

IDS_LISTS = [[1, 2, 3, 4, 5], [6], [7, 8, 9], [10, 11, 12, 13]]
IDS = tokenized.pack_ids(IDS_LISTS, 5)  # every message whole, as encode_packed gives them


def test_encode_packed_is_encode_packed_end_to_end(enc, monkeypatch) -> None:
    texts = ["Free entry in 2 a wkly comp", "", "£900 prize 😀", "ok", "see you at 7"]
    monkeypatch.setattr(tokenized, "ENCODE_CHUNK", 2)  # chunks of 2, 2 and 1 texts
    packed = tokenized.encode_packed(enc, texts)
    assert packed.rows.dtype == torch.int32
    rows = tokenized.encode(enc, texts)
    assert packed.lengths.tolist() == [len(row) for row in rows]
    assert packed.rows.tolist() == [t for row in rows for t in row]
    assert len(tokenized.encode_packed(enc, [])) == 0


def test_pack_truncates_and_counts() -> None:
    split = tokenized.pack(
        IDS, frame(["ham", "spam", "ham", "spam"], [10, 3, 7, 42]), 3, classes=SMS
    )
    assert split.tokens.rows.tolist() == [1, 2, 3, 6, 7, 8, 9, 10, 11, 12]
    assert split.tokens.lengths.tolist() == [3, 1, 3, 3]
    assert split.truncated == 2  # exactly max_length is not truncated
    assert split.labels.tolist() == [0, 1, 0, 1]
    assert split.lines.tolist() == [10, 3, 7, 42]
    assert len(split) == 4
    assert split.tokens.rows.dtype == split.labels.dtype == split.lines.dtype == torch.int64


def test_pack_without_truncation() -> None:
    split = tokenized.pack(IDS, frame(["ham"] * 4), 5, classes=SMS)
    assert split.truncated == 0
    assert split.tokens.lengths.tolist() == [5, 1, 3, 4]
    rows, _ = split.tokens.batch(torch.tensor([3]), pad_value=0)
    assert rows.tolist() == [[10, 11, 12, 13, 0]]  # padded to the longest message, 5


def test_pack_rejects_an_unknown_label() -> None:
    with pytest.raises(ValueError):
        tokenized.pack(tokenized.pack_ids(IDS_LISTS[:1], 5), frame(["eggs"]), 3, classes=SMS)


def test_stats() -> None:
    split = tokenized.pack(IDS, frame(["ham"] * 4), 3, classes=SMS)  # lengths 3, 1, 3, 3
    assert tokenized.stats(split) == {
        "samples": 4,
        "mean_tokens": 2.5,
        "max_tokens": 3,
        "truncated": 2,
    }
    split = tokenized.pack(
        tokenized.pack_ids(IDS_LISTS[:3], 5), frame(["ham"] * 3), 3, classes=SMS
    )  # lengths 3, 1, 3: mean 2.333...
    assert tokenized.stats(split)["mean_tokens"] == 2.33


# --- the tokens file ---


def test_save_load_round_trip(tmp_path: Path, enc) -> None:
    texts = ["WINNER!! claim your £900 prize", "", f"ok {EOT_TEXT}", "see you soon 😀"]
    labels = ["spam", "ham", "ham", "spam"]
    ids = tokenized.encode_packed(enc, texts)
    split = tokenized.pack(ids, frame(labels, [5, 17, 18, 5574]), 8, classes=SMS)
    path = tmp_path / "tokens" / "train.safetensors"
    tokenized.save(split, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.safetensors"]  # no temp
    assert load_file(str(path))["ids"].dtype == torch.int32  # half the bytes of int64
    back = tokenized.load(path)
    assert back.tokens.rows.dtype == torch.int64
    assert torch.equal(back.tokens.rows[:], split.tokens.rows)
    assert torch.equal(back.tokens.lengths, split.tokens.lengths)
    assert torch.equal(back.labels, split.labels)
    assert torch.equal(back.lines, split.lines)
    rows, lengths = back.tokens.batch(torch.arange(4), pad_value=enc.eot_token)
    expected = [row[:8] for row in tokenized.encode(enc, texts)]
    assert [row[:n].tolist() for row, n in zip(rows, lengths, strict=True)] == expected
    assert back.tokens.lengths.tolist() == [min(8, len(row)) for row in expected]


def test_save_replaces_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "val.safetensors"
    tokenized.save(tokenized.pack(IDS, frame(["ham"] * 4), 5, classes=SMS), path)
    tokenized.save(
        tokenized.pack(tokenized.pack_ids(IDS_LISTS[:2], 5), frame(["spam"] * 2), 5, classes=SMS),
        path,
    )
    back = tokenized.load(path)
    assert back.labels.tolist() == [1, 1] and back.tokens.rows[:].tolist() == [1, 2, 3, 4, 5, 6]


def corruptions(good: bytes) -> dict[str, bytes]:
    return {
        "truncated-half": good[: len(good) // 2],
        "truncated-end": good[:-4],
        "header-only": good[:8],
        "empty": b"",
        "garbage": b"not a safetensors file at all " * 10,
    }


@pytest.mark.parametrize(
    "kind", ["truncated-half", "truncated-end", "header-only", "empty", "garbage", "missing"]
)
def test_corrupt_tokens_file_is_a_user_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "test.safetensors"
    tokenized.save(tokenized.pack(IDS, frame(["ham"] * 4), 5, classes=SMS), path)
    if kind == "missing":
        path.unlink()
    else:
        path.write_bytes(corruptions(path.read_bytes())[kind])
    with pytest.raises(SpamGPTError) as info:
        tokenized.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "re-run the loaders stage" in message
    assert "\n" not in message


# --- pinned by mutation testing (tools/mutate.py tokenized) ---

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spamgpt.texts import Truncation  # noqa: E402


def keep_by_hand(row: list[int], max_length: int, side: str, head_ratio: float) -> list[int]:
    if len(row) <= max_length:
        return row
    head = {"head": max_length, "tail": 0}.get(
        side, min(max_length, round(max_length * head_ratio))
    )
    return row[:head] + row[len(row) - (max_length - head) :]


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(0, 50_000), min_size=1, max_size=30), max_size=10),
    max_length=st.integers(1, 25),
    side=st.sampled_from(["head", "tail", "head_tail"]),
    head_ratio=st.floats(0, 1),
)
@example(rows=[list(range(10)), [5] * 4], max_length=4, side="head_tail", head_ratio=0.5)
def test_the_packed_cut_keeps_each_messages_head_tail_or_both(
    rows: list[list[int]], max_length: int, side: str, head_ratio: float
) -> None:
    whole = tokenized.pack_ids(rows, 10_000)
    whole = tokenized.PackedSequences(whole.rows.to(torch.int32), whole.lengths)  # as stored
    kept = tokenized.cut(whole, max_length, Truncation(side, head_ratio))
    expected = [keep_by_hand(row, max_length, side, head_ratio) for row in rows]
    assert kept.rows.dtype == torch.int64
    assert kept.rows.tolist() == [t for row in expected for t in row]
    assert kept.lengths.tolist() == [len(row) for row in expected]


def test_pack_cuts_as_its_truncation_says() -> None:
    labels = frame(["ham"] * 4)
    labels["line"] = labels["line"].astype("int32")
    split = tokenized.pack(IDS, labels, 3, SMS, truncation=Truncation("tail"))
    assert split.tokens.rows.tolist() == [3, 4, 5, 6, 7, 8, 9, 11, 12, 13]
    assert split.lines.dtype == torch.int64


def test_no_messages_encode_and_pack_as_int64(enc) -> None:
    assert tokenized.encode(enc, []) == []
    empty = tokenized.pack_ids([], 5)
    assert empty.rows.dtype == empty.lengths.dtype == torch.int64 and len(empty) == 0


def test_encode_in_slices_of_uneven_size(enc) -> None:
    texts = [f"text {i}" for i in range(tokenized.SLICE_TEXTS * 3 // 2)]  # 1.5 slices' worth
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert tokenized.encode(enc, texts) == [enc.encode_ordinary(t) for t in texts]
    finally:
        torch.set_num_threads(threads)
