"""Reading the data: downloads and the hub, readers of every format, splits, tokens, and how
tokens are batched and stored."""
