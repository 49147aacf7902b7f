"""The controller's watch of the arms' refusals (pure core)."""

import numpy as np

from robot_stack.control.refusals import RefusalWatch

CHUNK = np.tile(np.r_[0.5, 0.0, 0.3, 0, 0, 0, 1, 1.0], (8, 1))
S = 1_000_000_000


def test_a_refusal_counts_only_after_the_chunk_went_out_and_only_its_own():
    w = RefusalWatch()
    assert not w.arm_state("arm", 3, 100)  # 3 refusals before anything was sent: the baseline
    w.sent(CHUNK, 1_000)
    assert not w.arm_state("arm", 4, 900)  # a state stamped before the send says nothing about it
    assert not w.arm_state("arm", 3, 1_100)
    assert w.arm_state("arm", 4, 1_200) and w.refusals == 1 and w.retry_at_ns == 1_200 + S // 2
    assert not w.arm_state("arm", 4, 1_300)  # the same refusal is counted once
    assert w.repeats(CHUNK + 1e-6, 2_000) and w.refused_repeats == 1  # within the wait: held back
    assert not w.repeats(CHUNK + np.r_[0.0, 0.01, 0, 0, 0, 0, 0, 0], 3_000)  # a different chunk goes out
    assert not w.repeats(CHUNK, 4_000) and w.retry_at_ns == 0  # ... and ended the wait


def test_the_wait_doubles_per_refusal_of_the_same_chunk_and_ends_with_another():
    w = RefusalWatch(backoff_s=(0.5, 2.0))
    w.arm_state("arm", 0, 0)
    waits, t = [], 0
    for k in range(1, 6):  # sent after each wait, refused each time
        w.sent(CHUNK, t)
        assert w.arm_state("arm", k, t + 10)
        waits.append((w.retry_at_ns - (t + 10)) / S)
        assert w.repeats(CHUNK, w.retry_at_ns - 1)  # during the wait: held back
        t = w.retry_at_ns
        assert not w.repeats(CHUNK, t)  # the wait is over: it may go out once more
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0]
    w.sent(CHUNK * 1.01, t)  # another chunk, refused: its first wait again
    w.arm_state("arm", 6, t + 10)
    assert (w.retry_at_ns - (t + 10)) / S == 0.5
    w.clear()  # an episode event or a hold: nothing held back
    assert not w.repeats(CHUNK * 1.01, t + 20)


def test_refusals_before_a_send_are_not_blamed_on_it():
    w = RefusalWatch()
    w.arm_state("arm", 0, 10)
    assert not w.arm_state("arm", 2, 20)  # a teleop schedule refused while the policy sent nothing
    w.sent(CHUNK, 30)
    assert not w.arm_state("arm", 2, 40) and w.refusals == 0
