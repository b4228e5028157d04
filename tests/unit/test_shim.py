"""The shim's wait for GPU memory release before a restart: pure logic with a scripted NVML."""

from __future__ import annotations

from h2ostack.shim import Shim, nvml_holders, wait_released
from tests.unit.test_executor_health import FakeClock


class Clock(FakeClock):
    def __call__(self) -> float:
        return self.t


def scripted(*answers: set[int]):
    seen = list(answers)

    def holders() -> set[int]:
        return seen.pop(0) if len(seen) > 1 else seen[0]

    return holders


def test_waits_until_no_old_pid_holds_gpu_memory() -> None:
    clock = Clock()
    # the old server (100) and its worker (101) linger in NVML a while after they are gone; 7 is a stranger
    holders = scripted({100, 101, 7}, {101, 7}, {101, 7}, {7})
    assert wait_released({100, 101}, holders, 120, lambda: False, clock.sleep, clock) == set()
    assert clock.t == 1.5  # three polls half a second apart: the stranger is never waited for


def test_gives_up_after_the_timeout_and_says_who_holds_it() -> None:
    clock = Clock()
    assert wait_released({100}, scripted({100, 7}), 10, lambda: False, clock.sleep, clock) == {100}
    assert 10 <= clock.t <= 10.5


def test_stops_at_once_when_told_and_survives_nvml_going_away() -> None:
    clock = Clock()
    assert wait_released({100}, scripted({100}), 120, lambda: True, clock.sleep, clock) == {100}
    assert clock.t == 0

    def broken() -> set[int]:
        raise RuntimeError("NVML_ERROR_GPU_IS_LOST")

    assert wait_released({100}, broken, 120, lambda: False, clock.sleep, clock) == set()


def test_gpu_ids_from_the_environment() -> None:
    assert Shim("/tmp/x.exit", ["true"], {"H2OSTACK_GPU_IDS": "0,3"}).gpus == [0, 3]
    assert Shim("/tmp/x.exit", ["true"], {}).gpus == []


def test_wait_gpu_release_on_this_machine(capsys) -> None:
    """Without NVML (no driver) the restart goes on at once and says so; with NVML, a pid that
    holds nothing is not waited for."""
    shim = Shim("/tmp/x.exit", ["true"], {"H2OSTACK_GPU_IDS": "0"})
    shim.wait_gpu_release({2**22 + 1})
    err = capsys.readouterr().err
    if nvml_holders([0], None) is None:
        assert "NVML cannot be read: restarting without waiting for GPU memory" in err
    else:
        assert err == ""


def test_release_wait_waits_for_the_old_pids_and_the_memory_on_a_fake_clock() -> None:
    from h2ostack.shim import release_wait

    clock = Clock()
    seen = iter([{100, 7}, {100, 7}, {7}, {7}, {7}])
    free = iter([1.0, 4.0, 9.0])
    got = release_wait({100}, [0], None, 60, lambda: False, need_gib=8.0, sleep=clock.sleep, clock=clock,
                       view=(lambda: next(seen), lambda: next(free)))
    assert got.outcome == "released" and got.left == set() and 0 < got.seconds < 60
    assert str(got).startswith("GPU memory released in")
    stuck = release_wait({100}, [0], None, 5, lambda: False, sleep=clock.sleep, clock=clock,
                         view=(lambda: {100}, lambda: 0.0))
    assert stuck.outcome == "timed out" and stuck.left == {100} and "still held by [100]" in str(stuck)
    low = release_wait({100}, [0], None, 5, lambda: False, need_gib=8.0, sleep=clock.sleep, clock=clock,
                       view=(set, lambda: 2.0))
    assert low.outcome == "timed out" and low.left == set()
