"""The rate arithmetic and the table of ``bench/bench_scale.py`` (no processes started)."""

from __future__ import annotations

import math

from bench.bench_scale import NodeRun, WorkerRun, table


def test_worker_rates_count_from_first_send_and_between_deliveries() -> None:
    run = WorkerRun(workers=1, sent_at=100.0, delivered=(130.0, 110.0, 120.0))
    assert run.studies == 3
    assert run.wall_s == 30.0
    assert run.end_to_end_per_min == 6.0  # 3 studies in 30 s
    assert run.steady_per_min == 6.0  # 2 intervals in 20 s


def test_one_study_has_no_steady_rate() -> None:
    assert math.isnan(WorkerRun(workers=1, sent_at=0.0, delivered=(5.0,)).steady_per_min)


def test_table_scales_each_row_against_the_first_of_its_kind() -> None:
    workers = [
        WorkerRun(1, 0.0, (10.0, 20.0, 30.0)),  # steady 6/min
        WorkerRun(2, 0.0, (10.0, 15.0, 20.0)),  # steady 12/min
    ]
    nodes = [NodeRun(1, 100, 10.0), NodeRun(2, 100, 4.0)]
    rows = table(workers, nodes).splitlines()
    assert len(rows) == 6
    assert rows[2].startswith("| 1 node, 1 Celery worker |")
    assert rows[2].endswith("| 1.00x |")
    assert "12.0 studies/min | 2.00x |" in rows[3]
    assert "| 10.0 images/s |" in rows[4]
    assert rows[4].endswith("| 1.00x |")
    assert "| 25.0 images/s |" in rows[5]
    assert rows[5].endswith("| 2.50x |")
