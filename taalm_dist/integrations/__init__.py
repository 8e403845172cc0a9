"""Integrations of a trained φ into other training stacks (``integrations.hf``: a transformers Trainer)."""
