import pytest

from taalm_dist.ckl.metrics import summarise


def test_summary_from_a_known_series():
    tl = {0: 0.05, 1: 0.10, 2: 0.30, 3: 0.30, 4: 0.20}
    nf = {0: 0.95, 1: 0.93, 2: 0.90, 3: 0.85, 4: 0.80}
    s = summarise(tl, nf)
    assert (s.top_acc, s.epoch, s.nf_acc) == (0.30, 2, 0.90)
    assert s.total_knowledge == pytest.approx(1.20)
    with pytest.raises(ValueError, match="no trained epoch"):
        summarise({0: 0.1}, {0: 0.9})
