"""trunk: run the frozen embeddings + first blocks once over every message and cache the
hidden states, so finetune's epochs (and evaluate) only run the trainable tail."""

from spamgpt import atomic, classifier, loaders, paths, runtime, stage, trunk
from spamgpt.model import GPTConfig
from spamgpt.params import Params


def main(params: Params) -> None:
    model_dir = paths.pretrained_dir(params.model.repo_id)
    config = GPTConfig.from_json(model_dir / "config.json")
    m = params.model
    n_frozen = trunk.frozen_blocks(config.n_layer, m.trainable_blocks, m.finetune)
    device = runtime.resolve_device(params.train.device)
    precision = runtime.resolve_precision(params.train.precision, device)
    runtime.use_all_cores()
    paths.TRUNK_DIR.mkdir(parents=True, exist_ok=True)
    if n_frozen is not None:  # else everything trains: the tail is the whole model
        gpt = classifier.base_model(params.model, model_dir).to(device)
        for split in paths.SPLITS:
            tokens = loaders.load(paths.tokens_file(split)).tokens
            hidden = trunk.compute(gpt, tokens, n_frozen, device, precision, desc=f"trunk {split}")
            trunk.save(paths.trunk_file(split), hidden)
    atomic.write_json(
        paths.TRUNK_INFO, {"frozen_blocks": n_frozen, "device": device.type, "precision": precision}
    )


if __name__ == "__main__":
    stage.run(main)
