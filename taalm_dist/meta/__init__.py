"""The meta-gradient of the token weights: closed form (jvp / fd) and the double-backward reference."""

from taalm_dist.meta.hypergradient import METHODS, MetaGradient, hypergradient, meta_gradient, updated_objective
from taalm_dist.meta.inner import InnerStep
from taalm_dist.meta.objectives import OBJECTIVES

__all__ = ["METHODS", "OBJECTIVES", "InnerStep", "MetaGradient", "hypergradient", "meta_gradient", "updated_objective"]
