"""2-rank ZeRO-3 checks, launched by tests/distributed/test_zero3.py through torchrun.

Writes (rank 0) a JSON file with: per-rank local/total numel of θ and φ, φ's full gradient for the
micro-step of documents [0, 1], the hypergradient of each rank's document with and without the
partition-cache flush, which trainable tensors ZeRO-3 keeps persistent, and whether every batch θ and φ were
called with came out of the runtime's placement function.
"""

import json
import sys

import torch

from taalm_dist.bench.placement import PlacementRecorder
from taalm_dist.cli import exit_process
from taalm_dist.config import load_config
from taalm_dist.engine import distributed as D
from taalm_dist.programs.meta_train import MetaTrainer
from taalm_dist.engine.zero3 import local_numel


def main(out_path: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    trainer = MetaTrainer(load_config(None, overrides))
    trainer.setup()
    from deepspeed.utils import safe_get_full_grad

    result = {"world": D.world_size(), "numel": {
        "theta": local_numel(trainer.view.engine), "phi": local_numel(trainer.phi.engine)}}
    trainable = [p for m in (trainer.view.model, trainer.phi.module) for p in m.parameters() if p.requires_grad]
    result["trainable"] = {"count": len(trainable), "persistent": sum(bool(getattr(p, "ds_persist", False)) for p in trainable),
                           "dtypes": sorted({str(p.dtype) for p in trainable})}
    result["frozen_dtypes"] = sorted({str(p.dtype) for p in trainer.view.model.parameters() if not p.requires_grad})
    rec = PlacementRecorder(trainer.rt, {"theta": trainer.view.model, "phi": trainer.phi.module})
    doc, w, mg = trainer.micro_step_meta_gradient([0, 1])
    w = trainer.phi.weights(doc, grad=True)
    trainer.phi.engine.backward((w * mg.grad).sum() * trainer.phi.surrogate_scale(1))
    grads = {n: safe_get_full_grad(p).tolist() for n, p in trainer.phi.module.named_parameters() if p.requires_grad}
    dldw = [None] * D.world_size()
    torch.distributed.all_gather_object(dldw, mg.grad[0].tolist())
    placement = [None] * D.world_size()
    torch.distributed.all_gather_object(placement, {"calls": rec.calls, "unplaced": rec.unplaced})
    # the trap: without empty_partition_cache() later forwards ignore the edited partitions
    trainer.view.sync = lambda: None
    _, _, stale = trainer.micro_step_meta_gradient([0, 1])
    stale_all = [None] * D.world_size()
    torch.distributed.all_gather_object(stale_all, stale.grad[0].tolist())
    if D.is_main():
        result.update({"phi_grad": grads, "dldw": dldw, "dldw_without_cache_flush": stale_all, "placement": placement})
        with open(out_path, "w") as f:
            json.dump(result, f)
    trainer.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
    # the way the taalm command ends a run that left its process group: the interpreter's teardown of gloo and
    # ZeRO-3 objects can abort a finished rank ("terminate called without an active exception"; seen in CI)
    exit_process(0)
