"""φ's side of a meta-step behind one small interface: plain PyTorch or a DeepSpeed ZeRO-3 engine.

Both run φ without dropout (``meta.functional.eval_mode``) so the weights used for the meta-gradient and
the ones differentiated afterwards are the same numbers ([skip agreement note] in taalm_dist.programs.meta_train).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from taalm_dist.engine import checkpoint as ckpt
from taalm_dist.engine import distributed as D
from taalm_dist.meta.functional import eval_mode
from taalm_dist.models.train_attention import TrainAttention, phi_state


class LocalPhi:
    """φ on one process with torch AdamW; gradients accumulate over the micro-steps of one update."""

    def __init__(self, phi: TrainAttention, lr: float, weight_decay: float, grad_clip: float | None):
        self.module = phi
        self.params = [p for p in phi.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.grad_clip = grad_clip

    def weights(self, doc: dict, grad: bool) -> torch.Tensor:
        """``[B, L]`` token weights of the documents (a graph to φ when ``grad``)."""
        with eval_mode(self.module), torch.set_grad_enabled(grad):
            return self.module(doc["input_ids"], doc["attention_mask"])

    def surrogate_scale(self, micro_steps: int) -> float:
        """Factor that makes the accumulated gradient the mean over the update's micro-steps."""
        return 1.0 / micro_steps

    def micro_step(self, loss: torch.Tensor) -> None:
        loss.backward()

    def finish_step(self) -> float:
        """Clip, step, zero; returns the gradient norm before clipping."""
        clip = self.grad_clip if self.grad_clip is not None else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return norm

    def export_state(self) -> dict[str, torch.Tensor]:
        return phi_state(self.module)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file(phi_state(self.module), str(directory / "phi_trainable.safetensors"))
        torch.save(self.opt.state_dict(), directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        self.module.load_state_dict(load_file(str(directory / "phi_trainable.safetensors")), strict=False)
        self.opt.load_state_dict(ckpt.weights_only_load(directory / "optimizer.pt"))


class DeepSpeedPhi:
    """φ as a ZeRO-3 engine: ``engine.backward`` averages over ranks and micro-steps, and the engine
    steps (with clipping from its config) at the accumulation boundary."""

    def __init__(self, engine):
        self.engine = engine
        self.module = engine.module

    def weights(self, doc: dict, grad: bool) -> torch.Tensor:
        with eval_mode(self.engine.module), torch.set_grad_enabled(grad):
            return self.engine(doc["input_ids"], doc["attention_mask"])

    def surrogate_scale(self, micro_steps: int) -> float:
        """Factor that makes the accumulated gradient the mean over the update's ``micro_steps`` inner steps.

        The engine divides by its ``gradient_accumulation_steps`` (one backward per pass of θ) and averages over
        ranks. The ranks' dL/dw of one pass sum to the derivative of the pass's inner steps' objectives (a shared
        θ' over the global batch, or each document's own), so: × passes × world / micro_steps (= world when every
        pass is one inner step)."""
        return float(self.engine.gradient_accumulation_steps() * D.world_size()) / micro_steps

    def micro_step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def finish_step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def export_state(self) -> dict[str, torch.Tensor]:
        from taalm_dist.engine.zero3 import gathered_phi_state

        return gathered_phi_state(self.engine)

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag="phi", save_latest=False)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag="phi", load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load φ from {directory}")
