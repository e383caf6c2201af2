"""The policy as tables of numbers: (visible, in_flight, running, starting) -> desired."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from dlaas.errors import ConfigError
from dlaas.scaling.policy import PolicyConfig, PolicyState, Snapshot, core_rule, decide
from dlaas.settings import load_settings

NO_DELAYS = PolicyConfig(
    target_backlog_per_worker=64, min_workers=0, max_workers=8, downscale_delay_s=0.0
)


def snap(
    visible: int,
    in_flight: int = 0,
    running: int = 0,
    starting: int = 0,
    now_s: float = 0.0,
    oldest_age_s: float = 0.0,
) -> Snapshot:
    return Snapshot(now_s, visible, in_flight, oldest_age_s, running, starting)


def replay(
    config: PolicyConfig, loads: Iterable[tuple[float, int, int]], workers: int
) -> list[int]:
    """Feed (time, visible, in_flight) snapshots as the controller would; the fleet follows
    each decision at once. Returns the worker count after each step."""
    state = PolicyState()
    counts = []
    for now_s, visible, in_flight in loads:
        workers, state = decide(snap(visible, in_flight, workers, now_s=now_s), config, state)
        counts.append(workers)
    return counts


@pytest.mark.parametrize(
    ("visible", "in_flight", "running", "expected"),
    [
        (0, 0, 0, 0),
        (1, 0, 0, 1),
        (64, 0, 0, 1),
        (65, 0, 0, 2),
        (128, 0, 1, 2),
        (129, 0, 2, 3),
        (0, 64, 1, 1),  # in-flight only: the busy worker is needed, not spare
        (0, 128, 2, 2),
        (10, 120, 2, 3),  # visible + in-flight together
        (1000, 0, 0, 8),  # max
        (10_000, 500, 8, 8),
        (0, 0, 5, 0),  # no delay configured: straight down
    ],
)
def test_core_rule_table(visible: int, in_flight: int, running: int, expected: int) -> None:
    desired, state = decide(snap(visible, in_flight, running), NO_DELAYS, PolicyState())
    assert desired == expected
    assert state == PolicyState()


@pytest.mark.parametrize(
    ("min_workers", "max_workers", "visible", "expected"),
    [
        (2, 8, 0, 2),
        (2, 8, 64, 2),
        (2, 8, 200, 4),
        (0, 3, 1000, 3),
        (1, 1, 0, 1),
        (1, 1, 5000, 1),
        (0, 0, 5000, 0),
    ],
)
def test_min_and_max_are_respected(
    min_workers: int, max_workers: int, visible: int, expected: int
) -> None:
    config = PolicyConfig(64, min_workers, max_workers, downscale_delay_s=0.0)
    assert core_rule(snap(visible), config) == expected
    assert decide(snap(visible, running=expected), config, PolicyState())[0] == expected


@pytest.mark.parametrize(
    ("visible", "in_flight", "expected"),
    [(1, 0, 1), (300, 0, 5), (0, 3, 1), (5000, 0, 8)],
)
def test_cold_start_scales_up_at_once_despite_an_upscale_delay(
    visible: int, in_flight: int, expected: int
) -> None:
    config = PolicyConfig(64, 0, 8, upscale_delay_s=60.0, downscale_delay_s=30.0)
    desired, state = decide(snap(visible, in_flight), config, PolicyState())
    assert desired == expected
    assert state.direction is None


def test_upscale_waits_out_its_delay_and_takes_the_smallest_recent_proposal() -> None:
    # given one running worker, an upscale delay of 3 s and a backlog that grows
    config = PolicyConfig(64, 0, 8, upscale_delay_s=3.0, downscale_delay_s=30.0)
    loads = [(0.0, 200, 0), (1.0, 300, 0), (2.0, 400, 0), (3.0, 400, 0), (4.0, 400, 0)]
    # then nothing moves until the delay has passed, and the first step is the
    # smallest proposal seen in the window (200 -> 4), the rest follows as it ages out
    assert replay(config, loads, workers=1) == [1, 1, 1, 4, 5]


def test_a_one_tick_spike_does_not_scale_up() -> None:
    config = PolicyConfig(64, 0, 8, upscale_delay_s=2.0, downscale_delay_s=30.0)
    loads = [(0.0, 600, 0), (1.0, 60, 0), (2.0, 600, 0), (3.0, 60, 0), (4.0, 60, 0)]
    assert replay(config, loads, workers=1) == [1, 1, 1, 1, 1]


def test_no_flapping_under_a_steady_noisy_load() -> None:
    # given 3 workers and a load that wobbles between needing 2 and 3 workers each second
    config = PolicyConfig(64, 0, 8, upscale_delay_s=0.0, downscale_delay_s=15.0)
    loads = [(float(t), 100 if t % 2 else 150, 40) for t in range(120)]
    # then the count never changes: the largest proposal in every 15 s window is 3
    assert set(replay(config, loads, workers=3)) == {3}


def test_a_quiet_second_does_not_shrink_the_fleet() -> None:
    config = PolicyConfig(64, 0, 8, downscale_delay_s=15.0)
    loads = [(float(t), 0 if t == 20 else 250, 0) for t in range(60)]
    assert set(replay(config, loads, workers=4)) == {4}


def test_scale_to_zero_only_after_the_downscale_delay() -> None:
    config = PolicyConfig(64, 0, 8, downscale_delay_s=15.0)
    loads = [(float(t), 0, 0) for t in range(20)]
    counts = replay(config, loads, workers=2)
    assert counts[:15] == [2] * 15  # t = 0 .. 14 s
    assert counts[15:] == [0] * 5  # t = 15 s on


def test_scale_down_follows_the_window_without_a_fresh_delay_per_step() -> None:
    # given 4 workers; the backlog needs 1 worker for 5 s, then none
    config = PolicyConfig(64, 0, 8, downscale_delay_s=10.0)
    loads = [(float(t), 50 if t <= 5 else 0, 0) for t in range(20)]
    counts = replay(config, loads, workers=4)
    # then at 10 s the largest proposal of the last 10 s (1) applies, and at 16 s,
    # once the last 1 has aged out, 0 follows with no new 10 s wait
    assert counts[:10] == [4] * 10
    assert counts[10:16] == [1] * 6
    assert counts[16:] == [0] * 4


def test_a_change_of_direction_restarts_the_window() -> None:
    config = PolicyConfig(64, 0, 8, upscale_delay_s=5.0, downscale_delay_s=5.0)
    loads = [(0.0, 0, 0), (3.0, 0, 0), (4.0, 500, 0), (8.0, 500, 0), (9.0, 500, 0)]
    assert replay(config, loads, workers=2) == [2, 2, 2, 2, 8]


def test_pending_scale_down_never_turns_into_a_scale_up() -> None:
    # given a pending scale-down to 2 from 4, and then two workers crash
    config = PolicyConfig(64, 0, 8, downscale_delay_s=5.0)
    state = PolicyState()
    _, state = decide(snap(128, running=4, now_s=0.0), config, state)
    desired, state = decide(snap(0, running=1, now_s=5.0), config, state)
    # then the policy does not scale up to the window's 2: it stays at the 1 left
    assert desired == 1


@pytest.mark.parametrize(
    ("visible", "oldest_age_s", "running", "starting", "expected"),
    [
        (5, 12.0, 1, 0, 2),  # too old, nothing on its way: one more worker
        (5, 8.0, 1, 0, 1),  # young enough
        (5, 12.0, 1, 1, 2),  # a worker is already starting: no second one
        (0, 12.0, 1, 0, 1),  # the old message is in flight, being served
        (5, 12.0, 8, 0, 8),  # already at max
    ],
)
def test_max_message_age_forces_a_scale_up(
    visible: int, oldest_age_s: float, running: int, starting: int, expected: int
) -> None:
    config = PolicyConfig(64, 0, 8, upscale_delay_s=60.0, max_message_age_s=10.0)
    snapshot = snap(visible, 0, running, starting, oldest_age_s=oldest_age_s)
    desired, _ = decide(snapshot, config, PolicyState())
    assert desired == expected


def test_the_seed_controller_is_a_config() -> None:
    # min(queue_length, 19) with no cooldown
    seed = PolicyConfig(1, 0, 19, upscale_delay_s=0.0, downscale_delay_s=0.0)
    for backlog, expected in [(0, 0), (1, 1), (10, 10), (19, 19), (30, 19)]:
        assert decide(snap(backlog, running=5), seed, PolicyState())[0] == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_backlog_per_worker": 0}, "target_backlog_per_worker must be at least 1"),
        ({"min_workers": 3, "max_workers": 2}, "max_workers (2) is below min_workers (3)"),
        ({"min_workers": -1}, "min_workers must be 0 or more"),
        ({"downscale_delay_s": -1.0}, "must be 0 or more"),
        ({"max_message_age_s": 0.0}, "max_message_age_s must be above 0"),
    ],
)
def test_invalid_configs_say_what_is_wrong(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid scaling policy") as info:
        PolicyConfig(**{"max_workers": 4, **kwargs})  # type: ignore[arg-type]
    assert message in str(info.value)


def test_defaults_come_from_settings() -> None:
    settings = load_settings(batch_size=8, max_workers=3, downscale_delay_s=20.0)
    config = PolicyConfig.from_settings(settings)
    assert config.target_backlog_per_worker == 2  # one in hand, one next
    assert (config.min_workers, config.max_workers) == (0, 3)
    assert config.downscale_delay_s == 20.0
    assert PolicyConfig().target_backlog_per_worker == 2


@pytest.mark.parametrize(
    ("clients", "expected"),
    [(1, 1), (2, 1), (3, 2), (4, 2), (16, 2), (64, 2)],
)
def test_default_target_keeps_every_core_busy_under_one_image_clients(
    clients: int, expected: int
) -> None:
    """N clients each waiting on one image hold N messages: 3 or more fill two cores."""
    config = PolicyConfig(max_workers=2)  # the defaults of `dlaas serve` on 2 CPUs
    half = clients // 2
    desired, _ = decide(snap(clients - half, half, running=1), config, PolicyState())
    assert desired == expected
