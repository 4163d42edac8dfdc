"""trunk: run the frozen embeddings + first blocks once over every message and cache the
hidden states, so finetune's epochs (and evaluate) only run the trainable tail. With
train.devices > 1, that many processes under torchrun, each computing its share."""

from spamgpt import contracts, distributed, paths, runtime, stage
from spamgpt.data import tokenized
from spamgpt.model import classifier, trunk
from spamgpt.model.gpt2 import GPTConfig
from spamgpt.params import Params


def main(params: Params) -> None:
    m, t = params.model, params.train
    model_dir = paths.pretrained_dir(m.repo_id)
    n_layer = GPTConfig.from_json(model_dir / "config.json").n_layer
    frozen = classifier.frozen_blocks(n_layer, m.trainable_blocks, m.finetune)
    compute = runtime.setup(t.device, t.precision, t.devices)
    distributed.relaunch(t.devices)  # train.devices > 1: this script again, under torchrun
    compute = compute.on(distributed.setup(compute.device))
    with distributed.replaced_dir(paths.TRUNK_DIR) as folder:
        if frozen is not None:  # else everything trains: the tail is the whole model
            stage.phase("load")
            gpt = classifier.base_model(m, model_dir).to(compute.device)
            stage.phase("compute")
            for split in paths.SPLITS:
                tokens = tokenized.load(paths.tokens_file(split)).tokens
                path = paths.trunk_file(split, folder)
                trunk.write(path, gpt, tokens, frozen, compute, desc=f"trunk {split}")
        if distributed.is_main():
            contracts.write_trunk_info(frozen, compute.device.type, compute.precision, folder)


if __name__ == "__main__":
    try:
        stage.run(main)
    finally:
        distributed.teardown()
