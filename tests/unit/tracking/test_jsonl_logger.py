"""metrics.jsonl: the same close(status=...) as every tracker, and nothing but step records."""

import pytest

from taalm_dist.tracking import RUN_STATUSES, JsonlLogger, read_jsonl


@pytest.mark.parametrize("status", RUN_STATUSES)
def test_close_takes_a_status_and_the_file_keeps_only_records(tmp_path, status):
    log = JsonlLogger(tmp_path / "metrics.jsonl")
    log.log_metrics({"train/loss": 0.5}, step=1)
    log.close(status=status)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]


def test_an_unknown_status_is_refused(tmp_path):
    log = JsonlLogger(tmp_path / "metrics.jsonl")
    with pytest.raises(ValueError, match="use one of FINISHED, FAILED, KILLED"):
        log.close(status="finished")
    log.close()
