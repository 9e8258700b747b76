"""Studies on Ray: a local Ray instance on the CPU runs a study; a lost worker is retried
and its run recorded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from skiplab.study import parse_spec, run_study  # noqa: E402
from skiplab.study.ray_executor import RayExecutor  # noqa: E402
from skiplab.study.runner import Job  # noqa: E402

SPEC = {
    "name": "ray-tiny",
    "seeds": [0, 1],
    "recipe": {"preset": "quick", "epochs": 1, "batch_size": 64},
    "groups": [
        {
            "name": "g",
            "data": "digits",
            "subset": {"n_train": 128, "n_test": 32},
            "models": ["resnet-8"],
            "analyses": {"trained": ["nlc"]},
        }
    ],  # fmt: skip
    "experiments": [{"kind": "paths", "models": ["resnet-8"]}],
}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_study_runs_on_ray(tmp_path: Path, local_ray) -> None:
    store = run_study(
        parse_spec(SPEC), tmp_path / "s", executor=RayExecutor(workers=2, device="cpu")
    )
    runs = store.runs()
    assert len(runs) == 3 and all(r["status"] == "finished" for r in runs), [
        r["error"] for r in runs
    ]
    assert all(r["attempts"] == 1 for r in runs)
    assert {x["kind"] for x in store.results()} == {"nlc", "paths"}
    assert (
        tmp_path / "s" / "runs" / "g" / "resnet-8" / "digits" / "s1" / "model.safetensors"
    ).exists()


def _dies_once(marker: str):
    def fn(job: Job) -> dict:
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process is lost midway
        return {"status": "finished", "metrics": {"job": job.job_id}, "results": []}

    return fn


def test_lost_worker_is_retried_and_recorded_once(tmp_path: Path, local_ray) -> None:
    marker = str(tmp_path / "died-once")
    recorded: list[tuple[str, dict]] = []
    ex = RayExecutor(workers=1, device="cpu", max_retries=2)
    ex.map([Job("a", "run", {})], _dies_once(marker), on_start=lambda j: None,
           on_done=lambda j, out: recorded.append((j.job_id, out)))  # fmt: skip
    assert os.path.exists(marker)  # the first attempt died
    assert recorded == [("a", {"status": "finished", "metrics": {"job": "a"}, "results": []})]


def test_retries_exhausted_is_a_failed_run_not_a_crash(tmp_path: Path, local_ray) -> None:
    def always_dies(job: Job) -> dict:
        os._exit(1)

    recorded = []
    RayExecutor(workers=1, device="cpu", max_retries=0).map(
        [Job("b", "run", {})],
        always_dies,
        on_start=lambda j: None,
        on_done=lambda j, out: recorded.append(out),
    )
    assert len(recorded) == 1 and recorded[0]["status"] == "failed"
