"""The controller's watch of the arms' refusals (pure core)."""

import numpy as np

from robot_stack.control.refusals import RefusalWatch

CHUNK = np.tile(np.r_[0.5, 0.0, 0.3, 0, 0, 0, 1, 1.0], (8, 1))


def test_a_refusal_counts_only_after_the_chunk_went_out_and_only_its_own():
    w = RefusalWatch()
    assert not w.arm_state("arm", 3, 100)  # 3 refusals before anything was sent: the baseline
    w.sent(CHUNK, 1_000)
    assert not w.arm_state("arm", 4, 900)  # a state stamped before the send says nothing about it
    assert not w.arm_state("arm", 3, 1_100)
    assert w.arm_state("arm", 4, 1_200) and w.refusals == 1
    assert not w.arm_state("arm", 4, 1_300)  # the same refusal is counted once
    assert w.repeats(CHUNK + 1e-6) and w.refused_repeats == 1
    assert not w.repeats(CHUNK + np.r_[0.0, 0.01, 0, 0, 0, 0, 0, 0])  # a different chunk goes out


def test_the_wait_doubles_per_repeat_in_a_row_up_to_its_longest():
    w = RefusalWatch(backoff_s=(0.5, 2.0))
    w.arm_state("arm", 0, 0)
    w.sent(CHUNK, 0)
    assert w.arm_state("arm", 1, 10)
    waits = []
    for _ in range(5):
        assert w.repeats(CHUNK)
        waits.append(w.backoff_until(0) / 1e9)
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0]
    w.clear()  # an episode event or a hold: the chunk may go out again
    assert not w.repeats(CHUNK)


def test_refusals_before_a_send_are_not_blamed_on_it():
    w = RefusalWatch()
    w.arm_state("arm", 0, 10)
    assert not w.arm_state("arm", 2, 20)  # a teleop schedule refused while the policy sent nothing
    w.sent(CHUNK, 30)
    assert not w.arm_state("arm", 2, 40) and w.refusals == 0
