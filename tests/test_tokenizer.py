import json
import locale
import os
import shutil
from pathlib import Path

import pytest

from spamgpt.data import tokenizer
from spamgpt.errors import SpamGPTError
from spamgpt.random_hub import TEXT, make_hub

# A folder with the real GPT-2 vocab.json and merges.txt (models/pretrained/openai-community/gpt2
# after a `dvc repro` with the real weights), where the environment names one.
REAL = os.environ.get("SPAMGPT_GPT2_TOKENIZER", "")

SAMPLES = [
    "Hello, world!",
    "WINNER!! You have won a £900 prize. Call 09061701461 now, claim code KL341.",
    "Ok lar... Joking wif u oni... I'm gonna be home soon, don't wait up; we'll see.",
    "  spaces   inside\tand\n\nnewlines \n",
    "émoji 😀👍🏽 and Ünïcödé, 中文,日本語, Ελληνικά, العربية",
    "txt STOP to 87121 :-) <3 ;) xoxo!!!???",
    "",
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hub(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def enc(hub: Path):
    return tokenizer.load(hub)


@pytest.mark.parametrize("text", [*SAMPLES, TEXT])
def test_round_trip(enc, text: str) -> None:
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_merges_shorten_the_training_text(enc) -> None:
    assert len(enc.encode_ordinary(TEXT)) < len(TEXT.encode()) / 2


def test_endoftext_is_the_last_id(hub: Path, enc) -> None:
    vocab = json.loads((hub / "vocab.json").read_text())
    assert enc.eot_token == vocab["<|endoftext|>"] == len(vocab) - 1 == enc.n_vocab - 1
    assert enc.encode("hi<|endoftext|>", allowed_special="all")[-1] == enc.eot_token


def test_bytes_to_unicode_is_gpt2s() -> None:
    table = tokenizer.bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert list(table)[:3] == [33, 34, 35]  # GPT-2's ids 0, 1, 2 are "!", '"', "#"
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā"


def test_equals_transformers(hub: Path, enc) -> None:
    from transformers import GPT2TokenizerFast

    # transformers 5 ignores vocab_file=/merges_file= (empty vocab); from_pretrained reads them.
    ref = GPT2TokenizerFast.from_pretrained(str(hub))
    for text in [*SAMPLES, TEXT]:
        assert enc.encode_ordinary(text) == ref(text)["input_ids"], text


@pytest.fixture
def copy(hub: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(hub, tmp_path / "gpt2"))


def rewrite_merges(folder: Path, edit) -> None:
    path = folder / "merges.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "line 3 'Ġ t' makes a token"),
        (lambda ls: [*ls, "Ġt he"], "line 302 'Ġt he' makes a token"),
        (lambda ls: [*ls, "q z"], "line 302 'q z' makes a token that is not in vocab.json"),
        (lambda ls: [*ls, "zz"], "line 302 'zz' does not join two vocab tokens"),
        (lambda ls: ls[:-1], "299 merges do not make the 300 multi-byte tokens"),
        (lambda ls: ls[1:], "first line is not '#version: 0.2'"),
        (lambda ls: [ls[0], ls[1], *ls[1:]], "line 3 'Ġ t' makes a token"),  # a merge again
        (lambda ls: [*ls, "Ġt  he"], "line 302 'Ġt  he' does not join two vocab tokens"),
        (lambda ls: [*ls, "t qq"], "line 302 't qq' does not join two vocab tokens"),
        (lambda ls: [*ls, "qq t"], "line 302 'qq t' does not join two vocab tokens"),
    ],
)
def test_inconsistent_merges(copy: Path, edit, message: str) -> None:
    rewrite_merges(copy, edit)
    with pytest.raises(SpamGPTError, match=r"merges\.txt: ") as e:
        tokenizer.load(copy)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda v: v | {"Ġ": 0}, "two tokens share an id"),
        (lambda v: {k: i for k, i in v.items() if k != "Ā"}, "byte 0 has no token"),
        (lambda v: v | {"€": 557}, "entry '€': 557 is not byte-level BPE"),
        (lambda v: {k: i for k, i in v.items() if k != "<|endoftext|>"}, "no <|endoftext|>"),
    ],
)
def test_bad_vocab(copy: Path, edit, message: str) -> None:
    path = copy / "vocab.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(SpamGPTError, match=r"vocab\.json") as e:
        tokenizer.load(copy)
    assert message in str(e.value)


def test_missing_file(copy: Path) -> None:
    (copy / "merges.txt").unlink()
    with pytest.raises(SpamGPTError, match=r"cannot read tokenizer file .*merges\.txt"):
        tokenizer.load(copy)


@pytest.mark.skipif(
    not REAL or not all((Path(REAL) / name).is_file() for name in ("vocab.json", "merges.txt")),
    reason="SPAMGPT_GPT2_TOKENIZER names no folder with GPT-2's vocab.json and merges.txt "
    f"({REAL or 'unset'})",
)
def test_real_gpt2_files() -> None:
    enc = tokenizer.load(Path(REAL))
    assert enc.encode_ordinary("Hello, world!") == [15496, 11, 995, 0]
    assert enc.eot_token == 50256 and enc.n_vocab == 50257


def test_a_merge_out_of_order_is_named_with_what_it_breaks(copy: Path) -> None:
    rewrite_merges(copy, lambda ls: [ls[0], ls[2], ls[1], *ls[3:]])
    with pytest.raises(SpamGPTError) as e:
        tokenizer.load(copy)
    assert str(e.value) == (
        f"{copy / 'merges.txt'}: line 3 'Ġ t' makes a token that is not in vocab.json after the "
        "tokens of the earlier merges"
    )


def test_a_vocab_that_is_not_json_is_named_with_why(copy: Path) -> None:
    (copy / "vocab.json").write_text('{"a": 1,}')
    with pytest.raises(SpamGPTError) as e:
        tokenizer.load(copy)
    assert str(e.value) == (
        f"{copy / 'vocab.json'} is not valid JSON: Expecting property name enclosed in double "
        "quotes: line 1 column 9 (char 8)"
    )


def test_the_files_are_utf8_whatever_the_locale(hub: Path, enc) -> None:
    """merges.txt spells the byte tokens in non-ASCII characters (Ġ): read as UTF-8 under an
    ASCII locale too."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        assert locale.getpreferredencoding(False) != "UTF-8"  # the test means something
        again = tokenizer.load(hub)
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert again.encode_ordinary(TEXT) == enc.encode_ordinary(TEXT)
    assert again.name == "gpt2-local"


def tiny_vocabulary(folder: Path, merges: list[tuple[str, str]], ids: list[int]) -> Path:
    """The 256 byte tokens, the tokens `merges` make (ids: theirs), <|endoftext|> last."""
    folder.mkdir()
    made = {a + b: i for (a, b), i in zip(merges, ids, strict=True)}
    taken = set(ids)
    free = (i for i in range(1000) if i not in taken)
    vocab = {c: next(free) for c in tokenizer.bytes_to_unicode().values()} | made
    vocab["<|endoftext|>"] = max(vocab.values()) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    lines = "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")
    return folder


def test_a_tiny_vocabulary_whose_first_merge_is_id_0_equals_transformers(tmp_path: Path) -> None:
    from transformers import GPT2TokenizerFast

    merges = [("a", "b"), ("ab", "c"), ("Ġ", "ab")]
    folder = tiny_vocabulary(tmp_path / "tiny", merges, [0, 257, 258])
    enc, ref = tokenizer.load(folder), GPT2TokenizerFast.from_pretrained(str(folder))
    for text in ["abab cab abc", "ab ab abc abcab", "x", ""]:
        assert enc.encode_ordinary(text) == ref(text)["input_ids"], text
    assert enc.encode_ordinary("abab abc") == [0, 0, 221, 257]  # "Ġ" is byte 32's token, 221
    assert enc.eot_token == 259


def test_a_merge_id_below_the_first_is_refused(tmp_path: Path) -> None:
    folder = tiny_vocabulary(tmp_path / "tiny", [("a", "b"), ("ab", "c")], [-1, 300])
    with pytest.raises(SpamGPTError, match=r"line 2 'a b' makes a token that is not in vocab"):
        tokenizer.load(folder)
