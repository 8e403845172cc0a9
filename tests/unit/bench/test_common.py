"""bench/common's timers: the fastest call is reported, the warm-up call is not timed, calls alternate."""

import time

from taalm_dist.bench.common import best_time, interleaved_best_times


def _sleeper(durations, log, name):
    """A function whose k-th call sleeps durations[k] seconds and records its name."""
    it = iter(durations)

    def fn():
        log.append(name)
        time.sleep(next(it))
    return fn


def test_best_time_skips_the_warm_up_call_and_keeps_the_fastest():
    log = []
    fn = _sleeper([0.2, 0.03, 0.01, 0.05], log, "a")  # the 0.2 s first call is the warm-up
    t = best_time(fn, repeats=3, cuda=False)
    assert len(log) == 4
    assert 0.01 <= t < 0.03


def test_interleaved_best_times_alternate_the_calls():
    log = []
    fns = {"a": _sleeper([0.02, 0.01], log, "a"), "b": _sleeper([0.0, 0.03], log, "b")}
    times = interleaved_best_times(fns, repeats=2, cuda=False)
    assert log == ["a", "b", "a", "b"]
    assert 0.01 <= times["a"] < 0.02 and times["b"] < 0.01
