"""Why a text got its label: each token's attribution to the decided class, by integrated
gradients over the token embeddings (Sundararajan et al., 2017).

The input to GPT-2's blocks is token embedding + position embedding. The baseline keeps the
positions and sets every token embedding to zero; the path scales the token embeddings from 0
to 1. A token's attribution is its embedding times the gradient averaged along the path
(midpoint rule, `steps` points, run as batches of the path's points), summed over the
embedding's dimensions. What is explained is the decided class's log-odds: logit minus the
log-sum-exp of the other classes' logits (two classes: the difference of the two logits), or a
multi-label label's own logit (the most probable label). Completeness: the attributions sum to
the log-odds at the text minus that at the baseline, up to the path integral's error, which
`delta` reports.
"""

import codecs
import json
from dataclasses import dataclass

import pandas as pd
import tiktoken
import torch

from spamgpt.data import tokenized
from spamgpt.labels import Classes
from spamgpt.model.gpt2 import GPT2Classifier
from spamgpt.tasks.registry import TASKS, task_for
from spamgpt.texts import Truncation

STEPS = 32  # points on the path from the baseline to the text
PATH_TOKENS = 8192  # tokens of path points run at once (a batch is points x message length)
MARKED = 3  # tokens `spamgpt classify --explain` marks
OPEN, CLOSE = "[[", "]]"


@dataclass
class Explanation:
    """One text's tokens (as text pieces that join into the text read), their attributions to
    `label`, and the completeness gap `delta` (sum of attributions minus the log-odds change
    from the baseline; near 0 when the path is fine enough)."""

    label: str
    pieces: list[str]
    attributions: list[float]
    delta: float

    def strongest(self, k: int) -> list[int]:
        """The positions of the k tokens that most support the label (attribution > 0)."""
        order = sorted(range(len(self.pieces)), key=lambda i: -self.attributions[i])
        return [i for i in order[:k] if self.attributions[i] > 0]

    def marked(self, k: int = MARKED) -> str:
        """The text read, its k strongest tokens in [[ ]] (a leading space stays outside)."""
        strong, out = set(self.strongest(k)), []
        for i, piece in enumerate(self.pieces):
            if i in strong and piece.strip():
                core = piece.lstrip()
                piece = f"{piece[: len(piece) - len(core)]}{OPEN}{core}{CLOSE}"
            out.append(piece)
        return "".join(out)

    def top(self, k: int) -> list[dict]:
        """The k strongest tokens as {token, attribution}, strongest first."""
        return [
            {"token": self.pieces[i], "attribution": round(self.attributions[i], 6)}
            for i in self.strongest(k)
        ]

    def to_dict(self, k: int = MARKED) -> dict:
        return {
            "label": self.label,
            "tokens": self.pieces,
            "attributions": [round(a, 6) for a in self.attributions],
            "delta": round(self.delta, 6),
            "marked": self.marked(k),
        }


def integrated_gradients(
    model: GPT2Classifier, ids: torch.Tensor, target: int, steps: int = STEPS
) -> tuple[torch.Tensor, float]:
    """(T,) attributions of one message's token ids (T,) to class `target`, and the
    completeness gap: their sum minus (log-odds at the text - at the zero baseline)."""
    gpt, device = model.gpt, next(model.parameters()).device
    ids = ids.to(device)
    with torch.no_grad():
        tokens = gpt.wte(ids)  # (T, d)
        positions = gpt.wpe(torch.arange(len(ids), device=device))
    log_odds = TASKS[model.label_format].log_odds
    alphas = (torch.arange(steps, device=device, dtype=tokens.dtype) + 0.5) / steps
    grads = torch.zeros_like(tokens)
    per_batch = max(1, PATH_TOKENS // len(ids))
    with torch.enable_grad():
        for first in range(0, steps, per_batch):
            a = alphas[first : first + per_batch, None, None]
            scaled = (a * tokens).requires_grad_(True)  # (B, T, d)
            lengths = torch.full((len(a),), len(ids), device=device)
            f = log_odds(model(scaled + positions, lengths, 0), target)
            grads += torch.autograd.grad(f.sum(), scaled)[0].sum(0)
    attributions = (tokens * grads / steps).sum(-1)
    with torch.no_grad():
        ends = torch.stack([torch.zeros_like(tokens), tokens]) + positions
        lengths = torch.full((2,), len(ids), device=device)
        at_baseline, at_text = log_odds(model(ends, lengths, 0), target)
    delta = float(attributions.sum() - (at_text - at_baseline))
    return attributions.detach().cpu(), delta


def pieces(enc: tiktoken.Encoding, ids: list[int]) -> list[str]:
    """Each token as text; a character split across tokens appears with its last token, so
    the pieces join into the decoded text."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = [decoder.decode(enc.decode_single_token_bytes(i)) for i in ids]
    out[-1] += decoder.decode(b"", final=True)
    return out


def explain_texts(
    model: GPT2Classifier,
    enc: tiktoken.Encoding,
    texts: list[str],
    targets: list[int],
    classes: Classes,
    max_length: int,
    truncation: Truncation,
    steps: int = STEPS,
) -> list[Explanation]:
    """Each text's explanation for its class index in `targets`, over the tokens the model
    reads (cut to max_length as it was trained)."""
    model.eval()
    out = []
    for ids, target in zip(tokenized.encode(enc, texts), targets, strict=True):
        kept = truncation.keep(ids, max_length)
        attributions, delta = integrated_gradients(model, torch.tensor(kept), target, steps)
        out.append(
            Explanation(classes.names[target], pieces(enc, kept), attributions.tolist(), delta)
        )
    return out


def explain_answers(
    model: GPT2Classifier,
    enc: tiktoken.Encoding,
    texts: list[str],
    answers: list[dict],
    classes: Classes,
    meta: dict,
) -> list[Explanation]:
    """`spamgpt classify --explain`: each text's explanation for the class its answer
    (classifier.answers) decided, with the model folder's max_length and truncation."""
    targets = [task_for(classes).explained(a) for a in answers]
    truncation = Truncation.from_dict(meta)
    return explain_texts(model, enc, texts, targets, classes, meta["max_length"], truncation)


def top_tokens(
    model: GPT2Classifier,
    enc: tiktoken.Encoding,
    texts: list[str],
    scored: pd.DataFrame,
    classes: Classes,
    meta: dict,
    k: int,
) -> list[str]:
    """`spamgpt predict --explain-top K`: each row's K strongest tokens for its decided class
    (classifier.prediction_frame's `label`, or the most probable label), as a JSON list of
    {token, attribution}."""
    probabilities = scored[[f"p_{name}" for name in classes.names]].to_numpy()
    labels = scored["label"] if "label" in scored else [None] * len(scored)
    answers = [
        {"probabilities": dict(zip(classes.names, row, strict=True)), "label": label}
        for row, label in zip(probabilities, labels, strict=True)
    ]
    explained = explain_answers(model, enc, texts, answers, classes, meta)
    return [json.dumps(e.top(k), ensure_ascii=False) for e in explained]
