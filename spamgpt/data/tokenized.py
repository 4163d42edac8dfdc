"""Tokenized splits: GPT-2 BPE ids of each message, packed, with labels (the loaders stage:
DVC's name for the stage that prepares what the training loader reads).

A split is stored as one safetensors file: `ids` (all tokens end to end, int32), `lengths`,
`labels` (class indices: ham 0, spam 1 for SMS; multi-label, a row of 0/1 per message) and
`lines` (the message's line in the raw file, to trace it back). The ids are read a batch at
a time (spamgpt.data.tensorfile), the rest whole: a few numbers per message.
"""

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import tiktoken
import torch
from safetensors.torch import save_file

from spamgpt import atomic
from spamgpt.data import tensorfile
from spamgpt.data.batching import PackedSequences
from spamgpt.errors import ParamsError, SpamGPTError
from spamgpt.labels import Classes
from spamgpt.texts import HEAD, Truncation

ENCODE_CHUNK = 10_000  # texts encoded into Python lists before they are packed as int32
SLICE_TEXTS = 1000  # fewest texts worth a thread of their own


@dataclass
class TokenizedSplit:
    tokens: PackedSequences  # rows: (total tokens,) int64 ids
    labels: torch.Tensor  # (N,) int64; multi-label (N, labels) float32 indicators
    lines: torch.Tensor  # (N,) int64
    truncated: int = 0  # messages cut to max_length

    def __len__(self) -> int:
        return len(self.labels)


def encode(enc: tiktoken.Encoding, texts: list[str]) -> list[list[int]]:
    """Token ids of each text. Special-token text inside a message (someone typing
    '<|endoftext|>') is encoded as plain text, never as the special token; an empty text
    becomes the single end-of-text token, so every message has a last real token.
    One contiguous slice of texts per thread torch computes with: tiktoken releases the GIL
    while it encodes, but its own batch call hands its threads one text at a time, and for
    short texts (an SMS) handing them out costs several times the encoding."""
    workers = max(1, min(torch.get_num_threads(), len(texts) // SLICE_TEXTS))
    if workers == 1:
        rows = [enc.encode_ordinary(text) for text in texts]
    else:
        step = -(-len(texts) // workers)
        slices = [texts[start : start + step] for start in range(0, len(texts), step)]
        with ThreadPoolExecutor(workers) as pool:
            parts = pool.map(lambda part: [enc.encode_ordinary(text) for text in part], slices)
            rows = list(itertools.chain.from_iterable(parts))
    return [row or [enc.eot_token] for row in rows]


def encode_packed(enc: tiktoken.Encoding, texts: list[str]) -> PackedSequences:
    """`encode` of every text, packed end to end as int32 (GPT-2 ids < 2**31), a chunk of
    texts at a time: a token costs 4 bytes here, not a Python int in a list (about 40)."""
    ids, lengths = [np.empty(0, np.int32)], [np.empty(0, np.int64)]
    for start in range(0, len(texts), ENCODE_CHUNK):
        rows = encode(enc, texts[start : start + ENCODE_CHUNK])
        lengths.append(np.fromiter(map(len, rows), np.int64, len(rows)))
        chunk = np.fromiter(itertools.chain.from_iterable(rows), np.int32, lengths[-1].sum())
        ids.append(chunk)
    return PackedSequences(
        torch.from_numpy(np.concatenate(ids)), torch.from_numpy(np.concatenate(lengths))
    )


def resolve_max_length(requested: int | None, train_lengths: torch.Tensor, n_ctx: int) -> int:
    """model.max_length, or (null) the longest training message, capped at the context length."""
    if requested is None:
        return min(int(train_lengths.max()), n_ctx)
    if requested > n_ctx:
        raise ParamsError(
            f"model.max_length: must be <= the model's context length {n_ctx}, got {requested}"
        )
    return requested


def pack_ids(
    ids: list[list[int]], max_length: int, truncation: Truncation = HEAD
) -> PackedSequences:
    """Each message cut to `max_length` tokens (which ones: `truncation`), packed end to end."""
    cut = [truncation.keep(row, max_length) for row in ids]
    return PackedSequences(
        torch.tensor([t for row in cut for t in row], dtype=torch.int64),
        torch.tensor([len(row) for row in cut], dtype=torch.int64),
    )


def cut(ids: PackedSequences, max_length: int, truncation: Truncation = HEAD) -> PackedSequences:
    """Each message cut to `max_length` tokens (which ones: `truncation`), as int64."""
    positions = torch.arange(len(ids.rows)) - torch.repeat_interleave(ids.starts, ids.lengths)
    head = truncation.head(max_length)
    kept = positions < head
    if head < max_length:  # and the last max_length - head tokens of the long ones
        lengths = torch.repeat_interleave(ids.lengths, ids.lengths)  # each token's message's
        kept |= (lengths <= max_length) | (positions >= lengths - (max_length - head))
    return PackedSequences(ids.rows[kept].to(torch.int64), ids.lengths.clamp(max=max_length))


def pack(
    ids: PackedSequences,
    frame: pd.DataFrame,
    max_length: int,
    classes: Classes,
    truncation: Truncation = HEAD,
) -> TokenizedSplit:
    """A split's messages (their whole ids, from encode_packed), cut to `max_length` tokens
    as `truncation` says, with class indices."""
    return TokenizedSplit(
        tokens=cut(ids, max_length, truncation),
        labels=torch.from_numpy(classes.targets(frame["label"])),
        lines=torch.tensor(frame["line"].to_numpy(), dtype=torch.int64),
        truncated=int((ids.lengths > max_length).sum()),
    )


def save(split: TokenizedSplit, path: str | os.PathLike) -> None:
    tensors = {
        "ids": split.tokens.rows.to(torch.int32),  # GPT-2 ids < 2**31: half the bytes of int64
        "lengths": split.tokens.lengths,
        "labels": split.labels,
        "lines": split.lines,
    }
    with atomic.atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load(path: str | os.PathLike) -> TokenizedSplit:
    """A split's tokens, its ids left in the file and read a batch at a time (as int64)."""
    try:
        f = tensorfile.TensorFile(path)
        return TokenizedSplit(
            tokens=PackedSequences(f.rows("ids", torch.int64), f.read("lengths")),
            labels=f.read("labels"),
            lines=f.read("lines"),
        )
    except (OSError, tensorfile.FormatError, KeyError, ValueError) as e:
        raise SpamGPTError(
            f"{path}: unreadable tokenized split ({e}); re-run the loaders stage"
        ) from None


def stats(split: TokenizedSplit) -> dict:
    lengths = split.tokens.lengths.float()
    return {
        "samples": len(split),
        "mean_tokens": round(float(lengths.mean()), 2),
        "max_tokens": int(lengths.max()),
        "truncated": split.truncated,
    }
