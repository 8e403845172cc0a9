"""LAMA-CKL: tailoring the benchmark to a model, object-token accuracy, the per-epoch summary."""
