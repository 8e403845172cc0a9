"""Prove that every batch reaching θ or φ went through the runtime's placement function."""

from __future__ import annotations

import torch


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


class PlacementRecorder:
    """Wraps ``rt.to_device`` to remember the storage of every tensor it returns, and hooks ``modules`` (name →
    module) to record each call's tensor inputs: :attr:`unplaced` lists inputs that did not come from
    ``to_device`` or are not on ``rt.device``; :attr:`calls` counts forwards per module (so a check cannot pass
    vacuously)."""

    def __init__(self, rt, modules: dict[str, torch.nn.Module]):
        self.rt, self.placed, self.unplaced = rt, set(), []
        self.calls = {name: 0 for name in modules}
        original = rt.to_device

        def to_device(batch):
            out = original(batch)
            self.placed.update(t.untyped_storage().data_ptr() for t in _tensors(out))
            return out

        rt.to_device = to_device
        for name, module in modules.items():
            module.register_forward_pre_hook(self._hook(name), with_kwargs=True)

    def _hook(self, name):
        def check(module, args, kwargs):
            self.calls[name] += 1
            for t in _tensors([args, kwargs]):
                if t.device != self.rt.device or t.untyped_storage().data_ptr() not in self.placed:
                    self.unplaced.append((name, tuple(t.shape), str(t.device)))

        return check
