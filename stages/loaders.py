"""loaders: GPT-2 BPE token ids of every message, per split, cut to model.max_length as
model.truncation says."""

from spamgpt import atomic, contracts, paths, stage
from spamgpt.data import readers, tokenized, tokenizer
from spamgpt.model.gpt2 import GPTConfig
from spamgpt.params import Params


def main(params: Params) -> None:
    model_dir = paths.pretrained_dir(params.model.repo_id)
    enc = tokenizer.load(model_dir)
    n_ctx = GPTConfig.from_json(model_dir / "config.json").n_ctx
    frames = {name: readers.read_split(paths.split_file(name)) for name in paths.SPLITS}
    ids = {
        name: tokenized.encode_packed(enc, frame["text"].tolist()) for name, frame in frames.items()
    }
    train_lengths = ids["train"].lengths
    max_length = tokenized.resolve_max_length(params.model.max_length, train_lengths, n_ctx)
    classes, stats = contracts.read_classes(), {}
    truncation = params.model.truncation_rule()
    # The metrics file written in the block: should it fail, the old token files stay.
    with atomic.replaced_dir(paths.TOKENS_DIR) as folder:
        for name in paths.SPLITS:
            split = tokenized.pack(ids[name], frames[name], max_length, classes, truncation)
            tokenized.save(split, paths.tokens_file(name, folder))
            stats[name] = tokenized.stats(split)
        contracts.write_tokenization(contracts.Tokenization(max_length, enc.eot_token), stats)


if __name__ == "__main__":
    stage.run(main)
