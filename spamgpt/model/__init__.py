"""The network: GPT-2 (nanoGPT style), low-rank adapters, the classifier and its folder, the
frozen trunk's cache."""
