"""taalm_dist: meta-learn per-token training weights (Train-Attention, TAALM) at cluster scale."""

__version__ = "0.1.0"
