"""The CKL methods as objects: how θ weighs each document's tokens (a :class:`Rule`) and what else it changes about
θ, its loss or its data (a :class:`Change`), looked up by name (:func:`method`).

========================  ==========================  =============================================================
name                      rule                        change
========================  ==========================  =============================================================
finetune                  uniform                     —
oracle                    the object's tokens only    —
taalm                     φ's weights                 —
rho1                      RHO-1's excess loss         —
mix_review                uniform                     replays old-knowledge documents each epoch
recadam                   uniform                     an annealed pull toward θ₀ in the loss
kadapter                  uniform                     θ frozen; bottleneck adapters after each layer train
taalm+X                   φ's weights                 X's change
========================  ==========================  =============================================================

Every program that teaches θ documents with a method (``ckl run``, ``twiki run``, ``learn``:
:class:`~taalm_dist.programs.document_training.DocumentTrainer`) asks its :class:`Method` and never its name; a new
method is one ``METHODS.register`` call (``ckl.method`` / ``twiki.method`` are checked against :data:`METHODS`
when a run starts). The pieces the rules and changes use: :mod:`taalm_dist.weight_rules`,
:mod:`taalm_dist.ckl.methods` (RecAdam's annealing), :mod:`taalm_dist.models.kadapter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from taalm_dist import weight_rules
from taalm_dist.ckl.methods import quadratic_pull, recadam_lambda
from taalm_dist.errors import ConfigError
from taalm_dist.registry import Registry


class Trainer(Protocol):
    """What a rule or change reads of the program (a :class:`~taalm_dist.programs.document_training.DocumentTrainer`)."""

    c: object
    """The run's section (lr, method settings such as ``rho1_keep``, ``kadapter_size``, ``recadam_*``)."""
    SECTION: str
    theta: torch.nn.Module
    params: list[torch.Tensor]
    step: int

    def phi_weights(self) -> Callable:
        """φ's weight rule (the program's φ, tokenizer check and familiarity record)."""


# ------------------------------------------------------------------------------------------------------- rules
class Rule(Protocol):
    """How θ weighs a document batch's tokens: ``build(trainer)`` returns ``rule(doc_batch) -> [B, L]``."""

    name: str
    uses_phi: bool
    needs_object_mask: bool
    """It reads which tokens are the answer (data that marks them: LAMA-CKL's rows, not raw text)."""

    def build(self, trainer: Trainer) -> Callable: ...

    def check_distributed(self, trainer: Trainer) -> None:
        """Refuse, before θ is sharded, what this rule cannot do under ZeRO-3."""


@dataclass(frozen=True)
class Uniform:
    name: str = "uniform"
    uses_phi: bool = False
    needs_object_mask: bool = False

    def build(self, trainer: Trainer) -> Callable:
        return weight_rules.uniform_weights

    def check_distributed(self, trainer: Trainer) -> None:
        pass


@dataclass(frozen=True)
class Oracle(Uniform):
    name: str = "oracle"
    needs_object_mask: bool = True

    def build(self, trainer: Trainer) -> Callable:
        return weight_rules.oracle_weights


@dataclass(frozen=True)
class Phi(Uniform):
    name: str = "taalm"
    uses_phi: bool = True

    def build(self, trainer: Trainer) -> Callable:
        return trainer.phi_weights()


@dataclass(frozen=True)
class Rho1(Uniform):
    name: str = "rho1"

    def build(self, trainer: Trainer) -> Callable:
        return weight_rules.Rho1Weights(trainer.theta, trainer.c.rho1_keep)

    def check_distributed(self, trainer: Trainer) -> None:
        if not hasattr(trainer.theta, "disable_adapter"):
            raise ConfigError(f"{trainer.SECTION}.method={trainer.c.method} needs a reference copy of θ's full "
                              "tensors on every rank, which ZeRO-3 partitions: run it with theta.trainable=lora (the "
                              "reference is θ with its adapters off) or on one process")


# ----------------------------------------------------------------------------------------------------- changes
@dataclass(frozen=True)
class Change:
    """What a method changes besides the weights; this base changes nothing (fine-tuning's θ, loss and data)."""

    name: str | None = None
    replays: bool = False
    """Each epoch also learns replayed old-knowledge documents (the program says which)."""
    kadapter: bool = False
    """θ is frozen and learns through K-Adapters (``kadapter_size`` of the run's section)."""

    def prepare(self, trainer: Trainer) -> None:
        """After θ is built (and before it is sharded)."""

    def check_distributed(self, trainer: Trainer) -> None:
        """Refuse, before θ is sharded, what this change cannot do under ZeRO-3."""

    def adjust_loss(self, trainer: Trainer, loss: torch.Tensor) -> torch.Tensor:
        """The loss θ minimises given the batch's token-weighted loss."""
        return loss


@dataclass(frozen=True)
class MixReview(Change):
    name: str = "mix_review"
    replays: bool = True


@dataclass(frozen=True)
class KAdapter(Change):
    name: str = "kadapter"
    kadapter: bool = True


@dataclass(frozen=True)
class RecAdam(Change):
    """RecAdam: ``λ(t) · loss + (1 − λ(t)) · (γ/2)·‖θ − θ₀‖²`` (:func:`~taalm_dist.ckl.methods.recadam_lambda`)."""

    name: str = "recadam"

    def prepare(self, trainer) -> None:
        trainer.start = [p.detach().clone() for p in trainer.params]  # θ₀ for the pull term

    def check_distributed(self, trainer: Trainer) -> None:
        raise ConfigError(f"{trainer.SECTION}.method={trainer.c.method} needs θ₀'s full tensors on every rank for its "
                          "pull term, which ZeRO-3 partitions: run it on one process")

    def adjust_loss(self, trainer, loss: torch.Tensor) -> torch.Tensor:
        c = trainer.c
        lam = recadam_lambda(trainer.step, c.recadam_k, c.recadam_t0)
        return lam * loss + (1 - lam) * 0.5 * c.recadam_gamma * quadratic_pull(trainer.params, trainer.start)


# ------------------------------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Method:
    """A named pair of a :class:`Rule` and a :class:`Change`."""

    name: str
    rule: Rule
    change: Change = Change()

    @property
    def uses_phi(self) -> bool:
        """θ learns with φ's weights (the run needs ``phi_path``)."""
        return self.rule.uses_phi

    def check_distributed(self, trainer: Trainer) -> None:
        self.rule.check_distributed(trainer)
        self.change.check_distributed(trainer)


METHODS: Registry[Method] = Registry("method", lambda name, known: ConfigError(f"method {name!r} is not one of {known}"))
"""Every registered method by name: ``METHODS.register(m.name, m)`` adds one, ``METHODS.lookup(name)`` finds one (a
ConfigError listing them when there is none)."""


for _m in (Method("finetune", Uniform()), Method("oracle", Oracle()), Method("taalm", Phi()), Method("rho1", Rho1()),
           Method("mix_review", Uniform(), MixReview()), Method("recadam", Uniform(), RecAdam()),
           Method("kadapter", Uniform(), KAdapter()), Method("taalm+mix_review", Phi(), MixReview()),
           Method("taalm+recadam", Phi(), RecAdam()), Method("taalm+kadapter", Phi(), KAdapter())):
    METHODS.register(_m.name, _m)
