"""`spamgpt classify`: label your own messages with the fine-tuned model; `spamgpt predict`:
score every row of a file (spamgpt.serve.predict).

spamgpt classify "WIN a free prize now" "see you at 7"
spamgpt classify --file messages.txt --json      # one message per line; - for stdin
spamgpt classify '{"subject": "WIN", "body": "a prize"}'  # a model of several text fields
spamgpt predict tickets.parquet --output scored.csv --keep id
spamgpt export --to transformers exported/      # or --to onnx model.onnx (spamgpt.serve.export)
spamgpt serve --model runs:/<run_id>/model -p 5001  # batching across requests (serve_batched)
"""

import argparse
import json
import sys
from pathlib import Path

from spamgpt import paths
from spamgpt.errors import SpamGPTError
from spamgpt.texts import TextFields, Truncation

# The choices of predict's --format and export's --to and --quantize, and --max-drop's default
# (spamgpt.serve.predict.FORMATS, spamgpt.serve.export's FORMATS, QUANTIZATIONS, MAX_DROP:
# tests/test_cli.py keeps them equal), here so that `--help` and a refused argument import
# neither torch nor numpy: each command imports what it runs.
SCORED_FORMATS = ("csv", "tsv", "jsonl", "parquet")
EXPORT_FORMATS = ("transformers", "onnx")
EXPORT_QUANTIZATIONS = ("int8",)
EXPORT_MAX_DROP = 0.005
# classify's, predict's and serve's --threshold (Task.check_threshold_flag refuses it where
# it does not)
THRESHOLD_HELP = (
    "on the positive class's probability of two classes, or each label's of a multi-label "
    "model; a model of other classes takes none (default: the model's, evaluate's)"
)

# Plain output is one tab-separated line per message: a tab or line break inside a message is
# printed as \t, \n or \r (and a backslash as \\), so that every line still splits in three.
ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def read_messages(args: argparse.Namespace) -> list[str]:
    """Messages from the arguments, or one per line from --file (- for stdin). Bytes that are
    not UTF-8 are replaced (U+FFFD), so any input gets an answer instead of a crash."""
    if args.file is None:
        return args.messages
    if args.messages:
        raise SpamGPTError("give messages as arguments or with --file, not both")
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as e:
        raise SpamGPTError(f"cannot read {args.file}: {e.strerror}") from None
    return raw.decode("utf-8", errors="replace").splitlines()


def classify(args: argparse.Namespace) -> None:
    from spamgpt import labels, runtime
    from spamgpt.model import classifier
    from spamgpt.serve import loader
    from spamgpt.tasks import registry

    messages = read_messages(args)
    if not messages:
        raise SpamGPTError(
            "no messages to classify: pass text arguments or --file PATH (- for stdin)"
        )
    labels.check_threshold_values(args.threshold, "--threshold")
    compute = runtime.setup(
        args.device, args.precision, max_tokens=args.max_tokens, settings=runtime.FLAGS
    )
    loaded = loader.load_model(args.model, args.pretrained)
    classes = classifier.classes_of(loaded.meta)
    task = registry.task_for(classes)
    task.check_threshold_flag(args.threshold, "--threshold")
    threshold = loaded.threshold if args.threshold is None else args.threshold
    model, meta = loaded.model.to(compute.device), loaded.meta
    texts = joined_fields(messages, TextFields.from_dict(meta))
    probs, truncated = classifier.classify_texts(
        model, loaded.enc, texts, meta["max_length"], compute, Truncation.from_dict(meta)
    )
    answers = task.answers(probs.numpy(), threshold)
    explained = [None] * len(answers)
    if args.explain:  # integrated gradients: a forward and backward pass per path point
        from spamgpt.evaluate import explain

        explained = explain.explain_answers(model, loaded.enc, texts, answers, classes, meta)
    for text, answer, cut, why in zip(messages, answers, truncated, explained, strict=True):
        if why is not None and not args.json:  # the text read, its strongest tokens marked
            text = why.marked()
        if args.json:
            record = {**_rounded(answer), "truncated": cut, "text": text}
            if why is not None:
                record["explanation"] = why.to_dict()
            print(json.dumps(record, ensure_ascii=False))
        else:  # the task's columns (Task.plain_answer), then the text
            note = f" [truncated to {meta['max_length']} tokens]" if cut else ""
            print(f"{task.plain_answer(answer)}\t{text.translate(ESCAPES)}{note}")


def joined_fields(messages: list[str], fields: TextFields) -> list[str]:
    """The texts the model reads: each message as it is (one text field), or, for a model of
    several fields, each a JSON object of them, joined by the model's template."""
    if len(fields.columns) == 1:
        return [fields.join({fields.columns[0]: m}) for m in messages]
    texts = []
    for number, message in enumerate(messages, start=1):
        try:
            record = json.loads(message)
        except json.JSONDecodeError:
            record = None
        values = record if isinstance(record, dict) else {}
        missing = [c for c in fields.columns if not isinstance(values.get(c), str)]
        if missing:
            raise SpamGPTError(
                f"message {number}: the model reads the fields {', '.join(fields.columns)}: "
                f"give each message as a JSON object of them (field {missing[0]!r} is "
                f"missing or not text)"
            )
        texts.append(fields.join(values))
    return texts


def predict(args: argparse.Namespace) -> None:
    from spamgpt import labels, runtime
    from spamgpt.serve import predict as predicting  # pandas' writers: only for this command
    from spamgpt.tasks.registry import task_for

    in_format = predicting.format_of(args.input, args.format, "--format")
    out_format = predicting.format_of(args.output, args.output_format, "--output-format")
    labels.check_threshold_values(args.threshold, "--threshold")
    threshold = "auto" if args.threshold is None else args.threshold
    compute = runtime.setup(
        args.device, args.precision, max_tokens=args.max_tokens, settings=runtime.FLAGS
    )
    scorer = predicting.load_scorer(args.model, args.pretrained, compute, threshold)
    task_for(scorer.classes).check_threshold_flag(args.threshold, "--threshold")
    rows, skipped = predicting.predict_file(
        args.input, args.output, scorer, in_format, out_format, args.text_column, args.keep,
        args.bad_lines, explain_top=args.explain_top,
    )  # fmt: skip
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(skipped.items()))
    note = f"; {sum(skipped.values())} bad rows skipped ({kinds})" if skipped else ""
    print(f"{args.output}: {rows} rows{note}", file=sys.stderr)


def _rounded(answer: dict) -> dict:
    """Probabilities to 6 decimals, for JSON lines people read."""
    return {
        k: round(v, 6)
        if isinstance(v, float)
        else {c: round(p, 6) for c, p in v.items()}
        if isinstance(v, dict)
        else v
        for k, v in answer.items()
    }


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model and --pretrained of the commands that load a model (classify, predict, export):
    whatever loader.load_model takes."""
    p.add_argument(
        "--model",
        default=str(paths.FINETUNED_DIR),
        help="a fine-tuned model folder, an MLflow model folder, or a logged MLflow model "
        "(runs:/<run_id>/model, models:/<name>/<version>)",
    )
    p.add_argument(
        "--pretrained", type=Path, default=paths.PRETRAINED_DIR, help="base models folder"
    )


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """--device and --precision of the commands that run the model (classify, predict)."""
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where the model runs (auto: CUDA, then MPS, then the CPU)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="the arithmetic it runs in (auto: bf16 where the device computes it natively, "
        "else fp16 on CUDA, else fp32)",
    )


def add_predict_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "predict", help="score every row of a CSV, TSV, JSON Lines or Parquet file"
    )
    p.add_argument("input", help="the file to score (.csv, .tsv, .jsonl, .parquet)")
    p.add_argument("--output", "-o", required=True, help="the file to write (same formats)")
    p.add_argument(
        "--format", choices=SCORED_FORMATS, help="the input's format (default: extension)"
    )
    p.add_argument(
        "--output-format", choices=SCORED_FORMATS, help="the output's (default: extension)"
    )
    p.add_argument(
        "--text-column", nargs="+", help="the text column(s) (default: the model's fields)"
    )
    p.add_argument("--keep", nargs="+", default=[], help="columns copied to the output")
    p.add_argument(
        "--bad-lines",
        choices=["error", "skip"],
        default="error",
        help="a row that does not parse: stop there (error) or leave it out and count it (skip)",
    )
    add_model_arguments(p)
    p.add_argument("--threshold", type=float, help=THRESHOLD_HELP)
    add_runtime_arguments(p)
    p.add_argument("--max-tokens", type=positive_int, help="padded tokens per batch")
    p.add_argument(
        "--explain-top",
        type=positive_int,
        metavar="K",
        help="add `top_tokens`: each row's K tokens most for its label (integrated gradients; "
        "slow: docs/explain.md)",
    )
    p.set_defaults(run=predict)


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    e = commands.add_parser(
        "export", help="write the fine-tuned model for transformers or ONNX Runtime"
    )
    e.add_argument("dest", type=Path, help="the folder (transformers) or the .onnx file to write")
    e.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="what to write")
    e.add_argument(
        "--quantize",
        choices=EXPORT_QUANTIZATIONS,
        help="onnx: int8 weights (ONNX Runtime), written only if the test figure holds",
    )
    e.add_argument(
        "--max-drop",
        type=float,
        default=EXPORT_MAX_DROP,
        help="--quantize: the most the selected test metric may drop (default: %(default)s)",
    )
    add_model_arguments(e)
    e.set_defaults(run=export_command)


def export_command(args: argparse.Namespace) -> None:
    from spamgpt.serve import export

    export.command(args)


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    s = commands.add_parser(
        "serve", help="serve the model over HTTP, batching across requests (LitServe)"
    )
    add_model_arguments(s)
    s.add_argument("--port", "-p", type=int, default=5001, help="the port to listen on")
    s.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    s.add_argument("--max-batch-size", type=positive_int, default=16, help="requests a batch")
    s.add_argument(
        "--workers", type=positive_int, default=1,
        help="worker processes, each scoring its own batches on its share of the cores",
    )  # fmt: skip
    s.add_argument(
        "--batch-timeout", type=float, default=0.01, help="seconds a batch waits to fill"
    )
    s.add_argument(
        "--onnx",
        type=Path,
        metavar="FILE",
        help="score with onnxruntime on this ONNX export of --model (spamgpt export --to onnx "
        "[--quantize int8]; int8: the fast path on a CPU) instead of PyTorch; --device, "
        "--precision and --max-tokens are PyTorch's",
    )
    s.add_argument("--threshold", type=float, help=THRESHOLD_HELP)
    add_runtime_arguments(s)
    s.add_argument("--max-tokens", type=positive_int, help="padded tokens per batch")
    s.set_defaults(run=serve)


def serve(args: argparse.Namespace) -> None:
    from spamgpt.serve import serve_batched  # LitServe: only for this command

    serve_batched.command(args)


def build_parser() -> argparse.ArgumentParser:
    """The `spamgpt` command line: classify, predict, export, serve."""
    parser = argparse.ArgumentParser(
        prog="spamgpt", description="GPT-2 fine-tuned as a text classifier"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("classify", help="label messages with the fine-tuned classes")
    c.add_argument("messages", nargs="*", help="messages to classify")
    c.add_argument("--file", help="read one message per line from this file (- for stdin)")
    c.add_argument("--json", action="store_true", help="print one JSON object per message")
    c.add_argument(
        "--explain",
        action="store_true",
        help="each token's attribution to the label (integrated gradients): the text with its "
        "strongest tokens [[marked]]; with --json, every token's (docs/explain.md)",
    )
    add_model_arguments(c)
    c.add_argument("--threshold", type=float, help=THRESHOLD_HELP)
    add_runtime_arguments(c)
    c.add_argument(
        "--max-tokens",
        type=positive_int,
        help="padded tokens per batch (memory vs speed; default: 1024 on a CPU, 32768 on a GPU)",
    )
    add_predict_parser(commands)
    add_export_parser(commands)
    add_serve_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        getattr(args, "run", classify)(args)
    except SpamGPTError as e:
        print(f"spamgpt: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except BrokenPipeError:  # `spamgpt classify ... | head`
        sys.exit(0)
