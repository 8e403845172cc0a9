import pytest
import torch

from taalm_dist.meta.objectives import objective_value, restrict_value


def _task():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    label = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]])
    return {"input_ids": ids, "attention_mask": mask, "label_mask": label}


def test_task_nll_is_mean_over_object_tokens_then_sequences():
    nll = torch.tensor([[0.0, 1.0, 2.0, 4.0], [0.0, 3.0, 5.0, 9.0]])
    assert objective_value("task_nll", nll, _task()).item() == pytest.approx(((2 + 4) / 2 + 5) / 2)


def test_task_is_mean_over_all_predicted_tokens():
    nll = torch.tensor([[0.0, 1.0, 2.0, 4.0], [0.0, 3.0, 5.0, 9.0]])
    assert objective_value("task", nll, _task()).item() == pytest.approx(((1 + 2 + 4) / 3 + (3 + 5) / 2) / 2)


def test_change_objectives_are_signed_powers():
    before = torch.tensor([[0.0, 1.0, 2.0, 4.0], [0.0, 3.0, 5.0, 9.0]])
    after = before + torch.tensor([[0.0, 0.0, -2.0, 1.0], [0.0, 0.0, -1.0, 0.0]])
    assert objective_value("change2", after, _task(), before).item() == pytest.approx(((-4 + 1) / 2 + -1) / 2)
    assert objective_value("change3", after, _task(), before).item() == pytest.approx(((-8 + 1) / 2 + -1) / 2)


def test_sequence_without_object_contributes_zero_and_errors_are_clear():
    task = _task()
    task["label_mask"][1] = 0
    nll = torch.ones(2, 4)
    assert objective_value("task_nll", nll, task).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs the per-token NLL before"):
        objective_value("change3", nll, task)
    with pytest.raises(ValueError, match="not one of"):
        objective_value("accuracy", nll, task)


def test_restrict_is_absolute_change_of_mean_nll():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    before = torch.zeros(2, 3)
    after = torch.tensor([[0.0, 1.0, -3.0], [0.0, 2.0, 7.0]])
    assert restrict_value(after, before, mask).item() == pytest.approx((1.0 + 2.0) / 2)
