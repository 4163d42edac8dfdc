"""loaders: GPT-2 BPE token ids of every message, per split, cut to model.max_length."""

from spamgpt import atomic, data, loaders, paths, stage, tokenizer
from spamgpt.model import GPTConfig
from spamgpt.params import Params


def main(params: Params) -> None:
    model_dir = paths.pretrained_dir(params.model.repo_id)
    enc = tokenizer.load(model_dir)
    n_ctx = GPTConfig.from_json(model_dir / "config.json").n_ctx
    frames = {name: data.read_split(paths.split_file(name)) for name in paths.SPLITS}
    ids = {name: loaders.encode(enc, frame["text"].tolist()) for name, frame in frames.items()}
    max_length = loaders.resolve_max_length(params.model.max_length, ids["train"], n_ctx)
    report = {"max_length": max_length, "pad_id": enc.eot_token}
    for name in paths.SPLITS:
        split = loaders.pack(ids[name], frames[name], max_length)
        loaders.save(split, paths.tokens_file(name))
        report[name] = loaders.stats(split)
    atomic.write_json(paths.METRICS_DIR / "loaders.json", report)


if __name__ == "__main__":
    stage.run(main)
