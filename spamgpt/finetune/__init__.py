"""Fine-tuning: the training loop and its resume checkpoints."""
