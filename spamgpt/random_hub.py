"""A GPT-2 hub folder with random weights, made from nothing but code: for offline runs,
benchmarks and tests, where the real hub cannot be reached.

make_hub() writes `<root>/<repo_id>/resolve/<revision>/` with the files and formats of the
real openai-community/gpt2 repository: config.json, vocab.json and merges.txt, and a float32
model.safetensors with the real tensor names and layout (Conv1D weights as (in, out),
h.N.attn.bias causal-mask buffers included). The tokenizer is a small byte-level BPE learnt on
the text below, or the vocab.json and merges.txt of a folder given (a real GPT-2 download), so
that messages split into the real number of tokens. Serve `root` with
`python -m http.server --bind 127.0.0.1 --directory ROOT PORT` and set `model.hub_url` to it.

    python -m spamgpt.random_hub ROOT [--layers 12 --dim 768 --heads 12 --n-ctx 1024]
                                 [--repo-id ID --revision REV --tokenizer DIR]
"""

import argparse
import itertools
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import regex
import torch
from safetensors.torch import save_file

from spamgpt.data.tokenizer import EOT, PATTERN, bytes_to_unicode

REVISION = "607a30d783dfa663caf39e06633721c8d4cfcd7e"

TEXT = """\
Go until jurong point, crazy.. Available only in bugis n great world la e buffet... Cine there
got amore wat... Ok lar... Joking wif u oni... Free entry in 2 a wkly comp to win FA Cup final
tkts 21st May 2005. Text FA to 87121 to receive entry question(std txt rate)T&C's apply.
U dun say so early hor... U c already then say... Nah I don't think he goes to usf, he lives
around here though. FreeMsg Hey there darling it's been 3 week's now and no word back! I'd like
some fun you up for it still? WINNER!! As a valued network customer you have been selected to
receive a £900 prize reward! To claim call 09061701461. Claim code KL341. Valid 12 hours only.
Had your mobile 11 months or more? U R entitled to Update to the latest colour mobiles with
camera for Free! Call The Mobile Update Co FREE on 08002986030. I'm gonna be home soon and i
don't want to talk about this stuff anymore tonight, k? I've cried enough today. SIX chances
to win CASH! From 100 to 20,000 pounds txt> CSH11 and send to 87575. URGENT! You have won a 1
week FREE membership in our £100,000 Prize Jackpot! Txt the word: CLAIM to No: 81010.
The quick brown fox jumps over the lazy dog. We will be there in ten minutes, see you soon.
Thanks for the lovely evening, we should do that again when you are back in town next week.
Please call me back when you get this message, it is about the meeting on Thursday morning.
"""


def train_bpe(text: str, num_merges: int) -> list[tuple[str, str]]:
    """Learn byte-level BPE merges the way GPT-2's were learnt: most frequent pair first."""
    b2u = bytes_to_unicode()
    words = Counter(tuple(b2u[b] for b in chunk.encode()) for chunk in regex.findall(PATTERN, text))
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        # Ties go to the smallest pair so the vocab is the same on every run.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def gpt2_tensors(
    n_layer: int, n_embd: int, n_ctx: int, vocab_size: int, seed: int
) -> dict[str, torch.Tensor]:
    """Random tensors named and shaped like openai-community/gpt2's model.safetensors.

    Every value is random (LayerNorm gains around 1, biases too) so that a loader which swaps
    ln_1 and ln_2 or forgets a bias or a transpose gives different logits.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, mean: float = 0.0) -> torch.Tensor:
        return mean + 0.1 * torch.randn(*shape, generator=g)

    d = n_embd
    mask = torch.tril(torch.ones(n_ctx, n_ctx)).view(1, 1, n_ctx, n_ctx)
    t = {"wte.weight": rnd(vocab_size, d), "wpe.weight": rnd(n_ctx, d)}
    for i in range(n_layer):
        p = f"h.{i}."
        t |= {
            p + "ln_1.weight": rnd(d, mean=1.0), p + "ln_1.bias": rnd(d),
            p + "attn.bias": mask.clone(),
            p + "attn.c_attn.weight": rnd(d, 3 * d), p + "attn.c_attn.bias": rnd(3 * d),
            p + "attn.c_proj.weight": rnd(d, d), p + "attn.c_proj.bias": rnd(d),
            p + "ln_2.weight": rnd(d, mean=1.0), p + "ln_2.bias": rnd(d),
            p + "mlp.c_fc.weight": rnd(d, 4 * d), p + "mlp.c_fc.bias": rnd(4 * d),
            p + "mlp.c_proj.weight": rnd(4 * d, d), p + "mlp.c_proj.bias": rnd(d),
        }  # fmt: skip
    return t | {"ln_f.weight": rnd(d, mean=1.0), "ln_f.bias": rnd(d)}


def hub_dir(
    root: str | os.PathLike, repo_id: str = "openai-community/gpt2", revision: str = REVISION
) -> Path:
    """Where make_hub() puts the files: the layout of the hub's /resolve/ URLs."""
    return Path(root) / repo_id / "resolve" / revision


def make_hub(
    root: str | os.PathLike,
    *,
    layers: int = 2,
    dim: int = 32,
    heads: int = 4,
    n_ctx: int = 64,
    repo_id: str = "openai-community/gpt2",
    revision: str = REVISION,
    seed: int = 0,
    num_merges: int = 300,
    tokenizer: str | os.PathLike | None = None,
) -> Path:
    """Write a GPT-2 repository with random weights under `root` and return its folder.

    The defaults are a tiny model (2 blocks of width 32) for tests; GPT-2 124M's shapes are
    layers=12, dim=768, heads=12, n_ctx=1024. `tokenizer`: a folder whose vocab.json and
    merges.txt are copied instead of learning `num_merges` merges on TEXT.
    """
    out = hub_dir(root, repo_id, revision)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        # Ids as in GPT-2: the 256 bytes in bytes_to_unicode order, the merges, then EOT.
        merges = train_bpe(TEXT, num_merges)
        tokens = [*bytes_to_unicode().values(), *(a + b for a, b in merges), EOT]
        vocab = {token: i for i, token in enumerate(tokens)}
        (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
        (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(Path(tokenizer) / name, out / name)
        vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))

    eot = vocab[EOT]
    config = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": eot,
        "embd_pdrop": 0.1,
        "eos_token_id": eot,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": n_ctx,
        "n_embd": dim,
        "n_head": heads,
        "n_layer": layers,
        "n_positions": n_ctx,
        "resid_pdrop": 0.1,
        "vocab_size": len(vocab),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tensors = gpt2_tensors(layers, dim, n_ctx, len(vocab), seed)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m spamgpt.random_hub",
        description="Write a GPT-2 hub folder with random weights in the real layout.",
    )
    ap.add_argument("root", help="the folder to serve; files go to ROOT/REPO_ID/resolve/REV/")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--repo-id", default="openai-community/gpt2")
    ap.add_argument("--revision", default="random-weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--merges", type=int, default=300, help="BPE merges learnt (no --tokenizer)")
    ap.add_argument("--tokenizer", help="a folder with GPT-2's vocab.json and merges.txt to use")
    a = ap.parse_args(argv)
    out = make_hub(
        a.root, layers=a.layers, dim=a.dim, heads=a.heads, n_ctx=a.n_ctx, repo_id=a.repo_id,
        revision=a.revision, seed=a.seed, num_merges=a.merges, tokenizer=a.tokenizer,
    )  # fmt: skip
    print(out)


if __name__ == "__main__":
    main()
