"""The simulator: hand-checkable cases, the seed's published figures, and sanity laws."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest

from dlaas.errors import ConfigError
from dlaas.scaling.sim.engine import simulate, simulate_mode
from dlaas.scaling.sim.params import SimParams, local_preset, seed_preset
from dlaas.scaling.sim.report import SEED_MINUTES
from dlaas.scaling.simulate import main

TINY = SimParams(
    images=1,
    boot_s=10.0,
    per_batch_s=0.0,
    per_image_s=5.0,
    batch_size=1,
    max_workers=4,
    downscale_delay_s=0.0,
    idle_timeout_s=100.0,
    scale_interval_s=1.0,
    cores=None,
)


def test_one_image_by_hand() -> None:
    # elastic: launched at 0, up at 10, done at 15, drained at the 15 s round
    elastic = simulate_mode(TINY, "elastic")
    assert (elastic.wall_s, elastic.worker_s, elastic.peak_workers) == (15.0, 15.0, 1)
    assert elastic.to_zero_s == 0.0
    # fixed and warm: the worker is already up, stays up, and is counted until the result
    fixed = simulate_mode(TINY, "fixed")
    assert (fixed.wall_s, fixed.worker_s, fixed.peak_workers, fixed.to_zero_s) == (
        5.0, 5.0, 1, None,
    )  # fmt: skip


def test_the_downscale_delay_and_idle_exit_set_the_tail() -> None:
    delayed = simulate_mode(replace(TINY, downscale_delay_s=7.0), "elastic")
    assert delayed.to_zero_s == 7.0
    assert delayed.worker_s == 22.0
    # with a long downscale delay, the worker's own idle exit comes first
    idle_first = simulate_mode(replace(TINY, downscale_delay_s=60.0, idle_timeout_s=4.0), "elastic")
    assert idle_first.to_zero_s == 4.0


def test_batches_and_processor_sharing() -> None:
    # 64 images, batches of 16 at 1 + 0.25/image = 5 s, two warm-ish workers on one core
    params = replace(
        TINY, images=64, batch_size=16, per_batch_s=1.0, per_image_s=0.25, boot_s=0.0,
        target_backlog_per_worker=32, max_workers=2, downscale_delay_s=0.0,
    )  # fmt: skip
    assert simulate_mode(params, "elastic").wall_s == pytest.approx(10.0)  # 2 rounds of 2
    shared = simulate_mode(replace(params, cores=1.0), "elastic")
    assert shared.wall_s == pytest.approx(20.0)  # same work, half the speed each
    assert simulate_mode(replace(params, cores=1.0), "fixed").wall_s == pytest.approx(20.0)


def test_arrivals_at_a_rate_are_all_served() -> None:
    params = replace(local_preset(), images=200, arrival_rate=20.0, max_workers=2, cores=2)
    report = simulate(params)
    for mode in (report.fixed, report.elastic):
        assert mode.results == 200
        assert mode.wall_s >= 199 / 20.0  # the last image arrives at 9.95 s
    assert report.elastic.to_zero_s is not None
    assert report.elastic.timeline[-1]["desired"] == 0


@pytest.mark.parametrize(
    ("images", "mode"), [(10, "fixed"), (10, "elastic"), (30, "fixed"), (30, "elastic")]
)
def test_seed_preset_reproduces_the_published_figures(images: int, mode: str) -> None:
    report = simulate_mode(replace(seed_preset(), images=images), mode)
    published_s = SEED_MINUTES[images][mode] * 60
    assert report.wall_s == pytest.approx(published_s, rel=0.30)


def test_seed_elastic_uses_one_instance_per_image_up_to_19() -> None:
    assert simulate_mode(replace(seed_preset(), images=10), "elastic").peak_workers == 10
    assert simulate_mode(replace(seed_preset(), images=30), "elastic").peak_workers == 19


@pytest.mark.parametrize("preset", [local_preset, seed_preset])
@pytest.mark.parametrize("images", [10, 100, 1000])
def test_more_workers_are_never_slower(preset: object, images: int) -> None:
    base = replace(preset(), images=images)  # type: ignore[operator]
    walls = [simulate_mode(replace(base, max_workers=n), "elastic").wall_s for n in (1, 2, 4, 8)]
    # Past the cores they share, more workers finish no sooner: equal up to float rounding.
    assert all(later <= earlier + 1e-9 for earlier, later in itertools.pairwise(walls)), walls


def test_local_preset_elastic_beats_fixed_on_big_jobs_and_ends_at_zero() -> None:
    report = simulate(replace(local_preset(), images=1000, max_workers=2, cores=2))
    assert report.speedup > 1.6
    assert report.elastic.peak_workers == 2
    assert report.elastic.to_zero_s is not None
    assert (
        report.elastic.to_zero_s
        <= report.params.downscale_delay_s + 2 * report.params.scale_interval_s
    )


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ConfigError, match="batch size must be at least 1"):
        SimParams(batch_size=0)
    with pytest.raises(ConfigError, match="no image would ever be served"):
        simulate(replace(TINY, max_workers=0))


def test_cli_prints_the_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--preset", "seed", "--images", "10", "30"]) == 0
    out = capsys.readouterr().out
    assert "preset seed:" in out and "seed min" in out
    assert len([line for line in out.splitlines() if " elastic " in line]) == 2

    assert main(["--images", "50", "--cores", "none", "--fixed", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["mode"] for r in rows] == ["fixed", "elastic"]
    assert rows[0]["params"]["cores"] is None and rows[0]["peak_workers"] == 2
    assert all(r["results"] == 50 and math.isfinite(r["wall_s"]) for r in rows)

    assert main(["--batch-size", "0"]) == 2
    assert "batch size must be at least 1" in capsys.readouterr().err
