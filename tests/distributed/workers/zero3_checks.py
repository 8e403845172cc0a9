"""2-rank ZeRO-3 checks, launched by tests/distributed/test_zero3.py through torchrun.

Writes (rank 0) a JSON file with: per-rank local/total numel of θ and φ, φ's full gradient for the
micro-step of documents [0, 1], the hypergradient of each rank's document with and without the
partition-cache flush.
"""

import json
import sys

import torch

from taalm_dist.config import load_config
from taalm_dist.engine import distributed as D
from taalm_dist.engine.meta_trainer import MetaTrainer
from taalm_dist.engine.zero3 import local_numel


def main(out_path: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    trainer = MetaTrainer(load_config(None, overrides))
    trainer.setup()
    from deepspeed.utils import safe_get_full_grad

    result = {"world": D.world_size(), "numel": {
        "theta": local_numel(trainer.view.engine), "phi": local_numel(trainer.phi.engine)}}
    doc, w, mg = trainer.micro_step_meta_gradient([0, 1])
    w = trainer.phi.weights(doc, grad=True)
    trainer.phi.engine.backward((w * mg.grad).sum() * trainer.phi.surrogate_scale(1))
    grads = {n: safe_get_full_grad(p).tolist() for n, p in trainer.phi.module.named_parameters() if p.requires_grad}
    dldw = [None] * D.world_size()
    torch.distributed.all_gather_object(dldw, mg.grad[0].tolist())
    # the trap: without empty_partition_cache() later forwards ignore the edited partitions
    trainer.view.sync = lambda: None
    _, _, stale = trainer.micro_step_meta_gradient([0, 1])
    stale_all = [None] * D.world_size()
    torch.distributed.all_gather_object(stale_all, stale.grad[0].tolist())
    if D.is_main():
        result.update({"phi_grad": grads, "dldw": dldw, "dldw_without_cache_flush": stale_all})
        with open(out_path, "w") as f:
            json.dump(result, f)
    trainer.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
