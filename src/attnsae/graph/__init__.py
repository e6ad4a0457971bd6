"""Attention circuit graphs: a whole prompt, every layer, from a target back to the tokens (docs/graphs.md)."""
