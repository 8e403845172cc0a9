"""The callbacks after a step: when each is due, their order, and a callback added to the meta-trainer's list runs
after every φ update with the metrics of that update."""

from taalm_dist.engine.callbacks import CheckpointCadence, Every, StepEnd, run_callbacks
from taalm_dist.programs.meta_train import MetaTrainer
from toy_meta import toy_config


def test_every_is_due_on_its_steps_the_last_and_the_baselines():
    every = Every(3)
    assert [s for s in range(1, 10) if every.due(StepEnd(s))] == [3, 6, 9]
    assert every.due(StepEnd(4, final=True)) and every.due(StepEnd(0, baselines=True))
    assert not Every(0).due(StepEnd(3, final=True))  # 0: never
    cadence = CheckpointCadence(every=2)
    assert [s for s in range(1, 6) if cadence.due(s)] == [2, 4] and cadence.due(5, time_due=True)
    assert not CheckpointCadence().due(4)


def test_callbacks_run_in_order_and_extend_the_metrics():
    seen = []

    class Add:
        def __init__(self, key):
            self.key = key

        def on_step_end(self, trainer, end):
            seen.append((self.key, dict(end.metrics)))
            end.metrics[self.key] = end.step

    out = run_callbacks([Add("a"), Add("b")], None, StepEnd(5, metrics={"x": 1}))
    assert out == {"x": 1, "a": 5, "b": 5} and seen == [("a", {"x": 1}), ("b", {"x": 1, "a": 5})]


def test_a_callback_added_to_the_meta_trainer_runs_after_every_update(tmp_path):
    calls = []

    class Record:
        def on_step_end(self, trainer, end):
            calls.append((end.step, end.final, end.baselines, "val/objective" in end.metrics))

    trainer = MetaTrainer(toy_config(tmp_path, "train.max_steps=3", "train.val_every=2"))
    trainer.callbacks.append(Record())
    trainer.setup()
    try:
        trainer.train()
    finally:
        trainer.cleanup()
    # the first validation (with baselines), then each update; validation ran at step 2 and the last
    assert calls == [(0, False, True, True), (1, False, False, False), (2, False, False, True), (3, True, False, True)]
