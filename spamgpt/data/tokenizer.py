"""GPT-2's byte-level BPE as a tiktoken Encoding, built offline from vocab.json + merges.txt.

tiktoken merges the adjacent pair whose concatenation has the lowest rank, while GPT-2's
reference BPE merges the pair that comes first in merges.txt. The two agree when the vocab
ids of the merge results increase in merge order (true of the real GPT-2 files: merge i
makes token 256 + i), so load() checks that before trusting the ids as ranks.
"""

import json
import os
from functools import cache
from pathlib import Path

import tiktoken

from spamgpt.errors import SpamGPTError

# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, each optionally with
# one leading space; runs of whitespace stay apart from the word that follows them.
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: vocab.json spells every byte as one char.

    Printable Latin-1 bytes stand for themselves; the other 68 (control, space, ...) are moved
    to U+0100 and up, in byte order. Insertion order is GPT-2's order of the 256 byte tokens.
    """
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    rest = [b for b in range(256) if b not in bs]
    chars = [chr(b) for b in bs] + [chr(256 + i) for i in range(len(rest))]
    return dict(zip(bs + rest, chars, strict=True))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpamGPTError(f"cannot read tokenizer file {path}: {e}") from None


def load(model_dir: str | os.PathLike) -> tiktoken.Encoding:
    """The tokenizer of the GPT-2 checkpoint in `model_dir`; needs no network."""
    model_dir = Path(model_dir)
    vocab_path, merges_path = model_dir / "vocab.json", model_dir / "merges.txt"
    try:
        vocab = json.loads(_read(vocab_path))
    except json.JSONDecodeError as e:
        raise SpamGPTError(f"{vocab_path} is not valid JSON: {e}") from None
    if not isinstance(vocab, dict) or EOT not in vocab:
        raise SpamGPTError(f"{vocab_path} is not a GPT-2 vocab: no {EOT} entry")

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for token, rank in vocab.items():
        if token == EOT:
            continue
        if not isinstance(rank, int) or not all(c in byte_of for c in token):
            raise SpamGPTError(f"{vocab_path}: entry {token!r}: {rank!r} is not byte-level BPE")
        ranks[bytes(byte_of[c] for c in token)] = rank
    if len(set(vocab.values())) != len(vocab):
        raise SpamGPTError(f"{vocab_path}: two tokens share an id")
    if missing := [b for b in range(256) if bytes([b]) not in ranks]:
        raise SpamGPTError(f"{vocab_path}: byte {missing[0]} has no token")

    # Line 1 is "#version: 0.2"; then one "left right" merge per line, highest priority first.
    lines = _read(merges_path).splitlines()
    if lines[:1] != ["#version: 0.2"]:
        raise SpamGPTError(f"{merges_path}: first line is not '#version: 0.2'")
    merges = [line for line in lines[1:] if line]
    previous = -1
    for n, line in enumerate(merges, start=2):
        parts = line.split(" ")
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab:
            raise SpamGPTError(f"{merges_path}: line {n} {line!r} does not join two vocab tokens")
        rank = vocab.get(parts[0] + parts[1])
        if rank is None or rank <= previous:
            raise SpamGPTError(
                f"{merges_path}: line {n} {line!r} makes a token that is not in vocab.json "
                "after the tokens of the earlier merges"
            )
        previous = rank
    if len(ranks) != 256 + len(merges):
        raise SpamGPTError(
            f"{merges_path}: {len(merges)} merges do not make the "
            f"{len(ranks) - 256} multi-byte tokens of vocab.json"
        )

    return tiktoken.Encoding(
        name="gpt2-local", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={EOT: vocab[EOT]}
    )
