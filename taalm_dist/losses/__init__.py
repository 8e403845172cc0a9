"""Token-weighted losses. `token_weighted_ce` is the eager fp32 spec every fast path is tested against."""

from taalm_dist.losses.token_weighted_ce import (
    WEIGHT_SUM_EPS,
    PerTokenLossFn,
    TokenWeightedLoss,
    eager_per_token_nll,
    next_token_valid_mask,
    per_token_nll,
    token_weighted_ce,
    token_weighted_mean,
)

__all__ = [
    "WEIGHT_SUM_EPS",
    "PerTokenLossFn",
    "TokenWeightedLoss",
    "eager_per_token_nll",
    "next_token_valid_mask",
    "per_token_nll",
    "token_weighted_ce",
    "token_weighted_mean",
]
