"""RateLoop timing logic, pinned with a fake clock (no wall-clock thresholds)."""

import pytest

import robot_stack.runtime.clock as clock
from robot_stack.runtime.clock import RateLoop


class FakeTime:
    """Deterministic monotonic clock; sleep advances it by the requested time plus a fixed lag."""

    def __init__(self, t0=1_000_000_000, sleep_lag_ns=50_000):
        self.t = t0
        self.lag = sleep_lag_ns
        self.sleeps = []

    def now(self):
        self.t += 1_000  # every clock read costs 1 us (the spin loop terminates)
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += int(s * 1e9) + self.lag


@pytest.fixture
def fake(monkeypatch):
    ft = FakeTime()
    monkeypatch.setattr(clock, "now_ns", ft.now)
    monkeypatch.setattr(clock.time, "sleep", ft.sleep)
    return ft


def test_wakes_on_absolute_grid_without_drift(fake):
    loop = RateLoop(500.0)  # 2 ms period
    wakes = []
    for i in range(1000):
        fake.t += 300_000 + (i % 7) * 100_000  # body takes 0.3 .. 0.9 ms
        wakes.append(loop.sleep())
    start = loop.start_ns
    for k, w in enumerate(wakes, start=1):
        deadline = start + k * 2_000_000
        assert w >= deadline
        assert w - deadline < 5_000  # only the spin read granularity of the fake clock
    assert loop.overruns == 0
    # after 1000 periods the phase error is the same as after one: no accumulation
    assert (wakes[-1] - start) - 1000 * 2_000_000 == pytest.approx(wakes[0] - start - 2_000_000, abs=2_000)


def test_sleep_stops_before_deadline_and_spins_the_rest(fake):
    loop = RateLoop(100.0, spin_s=0.0002)
    fake.t += 1_000_000
    loop.sleep()
    # slept period - body - spin (minus the clock-read cost), never past the deadline
    assert fake.sleeps[0] == pytest.approx(0.010 - 0.001 - 0.0002, abs=5e-6)


def test_overrun_is_counted_and_skips_to_grid_without_burst(fake):
    loop = RateLoop(100.0)  # 10 ms
    loop.sleep()
    fake.t += 35_000_000  # body overran 3.5 periods
    w = loop.sleep()
    assert loop.overruns == 1
    # the next wake is on the original grid, the one after 'now'
    w2 = loop.sleep()
    assert (w2 - loop.start_ns) % 10_000_000 < 5_000
    assert w2 - w < 10_000_000  # no catch-up: only the remainder of the current period
    assert loop.overruns == 1


def test_jitter_stats_exact(fake):
    fake.lag = 0
    loop = RateLoop(1000.0)
    loop.sleep()
    for body in (100_000, 100_000, 1_500_000):  # last one overruns by 0.5 ms
        fake.t += body
        loop.sleep()
    st = loop.stats()
    assert st.periods == 3
    assert st.overruns == 1
    assert st.period_max_s == pytest.approx(0.0015, abs=2e-6)  # woke at once, 0.5 ms late
    assert st.jitter_max_s == pytest.approx(0.0005, abs=2e-6)
    assert st.period_p50_s == pytest.approx(0.001, abs=2e-6)


def test_bad_rate_rejected():
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rate_hz"):
            RateLoop(bad)
