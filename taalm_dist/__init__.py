"""taalm_dist: meta-learn per-token training weights (Train-Attention, TAALM) at cluster scale.

``from taalm_dist import TokenWeigher``: a trained φ's weights for any text (:mod:`taalm_dist.weigh`).
"""

__version__ = "0.1.0"

__all__ = ["TokenWeigher", "WeightedTokens"]


def __getattr__(name: str):  # lazy: `import taalm_dist` stays light (no torch/transformers import)
    if name in __all__:
        from taalm_dist import weigh

        return getattr(weigh, name)
    raise AttributeError(f"module 'taalm_dist' has no attribute {name!r}")
