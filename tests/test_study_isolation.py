"""Studies: one worker process isolates its runs like many do (a run that kills it is
retried, then recorded as failed, and the study goes on); workers=0 runs in this process;
every session of a study (the first and each resume) is recorded with its provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from skiplab.cli import app
from skiplab.study import parse_spec, run_study
from skiplab.study.store import Store

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

SPEC = {
    "name": "two",
    "seeds": [0],
    "recipe": {"preset": "quick", "epochs": 1, "batch_size": 64},
    "groups": [
        {
            "name": "g",
            "data": "digits",
            "subset": {"n_train": 64, "n_test": 32},
            "models": ["plain-8", "resnet-8"],
        }
    ],
}
VICTIM = "g/plain-8/digits/s0"

# The study process runs run_study(workers=1) with the study's own job function, except that
# VICTIM's job kills the process it runs in with SIGKILL (as the out-of-memory killer does).
# In the study process itself, that would end the study (and this script) at once.
DRIVER = """
import json, sys
from pool_jobs import KillsRun
import skiplab.study.runner as runner
from skiplab.study import parse_spec, run_study

class Kills(runner.LocalExecutor):
    def map(self, jobs, fn, on_start, on_done):
        super().map(jobs, KillsRun(fn, sys.argv[3], None), on_start, on_done)

runner.LocalExecutor = Kills
run_study(parse_spec(json.loads(sys.argv[1])), sys.argv[2], workers=1, device="cpu",
          report=False).close()
"""


def test_one_worker_killed_by_its_run_records_it_failed_and_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "s"
    env = {
        **ENV,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), ENV.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(SPEC), str(out), VICTIM],
                          env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, (
        f"the study process died ({proc.returncode}): {proc.stderr[-2000:]}"
    )
    runs = {r["id"]: r for r in Store.open_existing(out).runs()}
    assert runs["g/resnet-8/digits/s0"]["status"] == "finished"
    victim = runs[VICTIM]
    assert victim["status"] == "failed" and victim["attempts"] == 2
    assert "its worker process was killed by SIGKILL" in victim["error"], victim["error"]
    assert "2 attempts" in victim["error"]
    doc = json.loads((out / "results.json").read_text())
    assert {r["id"]: r["status"] for r in doc["runs"]} == {
        VICTIM: "failed",
        "g/resnet-8/digits/s0": "finished",
    }


def _pids(folder: Path) -> set[int]:
    return {int(p.read_text()) for p in folder.glob("*.pid")}


def test_cli_workers_1_runs_in_a_worker_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`skiplab study --workers 1` (the default on a GPU) used to run every job in the study
    process, where one crash ended the study."""
    import pool_jobs
    import skiplab.study.runner as runner

    monkeypatch.setattr(runner, "_JobFn", pool_jobs.RecordsPid)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "s"
    args = ["study", str(path), "--out", str(out), "--workers", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    pids = _pids(out)
    assert len(pids) == 1 and os.getpid() not in pids  # one worker process ran both runs


def test_workers_0_runs_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library's default: no process to start (tests and notebooks call it often)."""
    import pool_jobs
    import skiplab.study.runner as runner

    monkeypatch.setattr(runner, "_JobFn", pool_jobs.RecordsPid)
    store = run_study(parse_spec(SPEC), tmp_path / "s", device="cpu", report=False)
    assert [r["status"] for r in store.runs()] == ["finished", "finished"]
    assert _pids(tmp_path / "s") == {os.getpid()}


def test_negative_workers_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid workers=-1"):
        run_study(parse_spec(SPEC), tmp_path / "s", workers=-1)
    assert not (tmp_path / "s").exists()


def test_every_session_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study run, then resumed (its failed run retried) under another skiplab: two sessions,
    each with its provenance and the jobs it did; the study's ``provenance`` stays the first
    session's (it was overwritten on every resume, and only the last session's time kept)."""
    import skiplab.provenance

    spec = parse_spec({
        **SPEC,
        "groups": [{**SPEC["groups"][0], "models": ["resnet-8"]}],
        "experiments": [{"kind": "paths", "models": ["resnet-8"]}],
    })  # fmt: skip
    spec.groups[0]["data_options"] = {"test_size": 5.0}  # fails the run (refused on load)
    out = tmp_path / "s"
    store = run_study(spec, out, device="cpu", report=False)
    first = store.meta("provenance")
    store.close()
    real = skiplab.provenance.provenance
    monkeypatch.setattr(skiplab.provenance, "provenance",
                        lambda device=None: {**real(device), "skiplab": "9.9.9"})  # fmt: skip
    store = run_study(spec, out, device="cpu", report=False)
    sessions = store.sessions()
    assert [(s["todo"], s["jobs"], s["status"]) for s in sessions] == [
        (2, 2, "finished"),
        (1, 1, "finished"),  # the failed run, retried
    ]
    assert sessions[0]["provenance"] == first and sessions[1]["provenance"]["skiplab"] == "9.9.9"
    assert store.meta("provenance") == first
    # a failed run, too, says where it ran
    assert (
        sessions[0]["devices"][0].startswith("cpu (")
        and sessions[1]["devices"] == sessions[0]["devices"]
    )
    assert all(s["duration_s"] > 0 and s["started"] for s in sessions)
    assert store.meta("last_session_s") is not None  # still written, for older readers
    doc = json.loads((out / "results.json").read_text())
    assert doc["sessions"] == sessions and doc["provenance"] == first
    from skiplab.report.findings import load_study

    assert load_study(store).sessions == sessions  # what the report's sessions table reads


def test_report_lists_the_sessions(tmp_path: Path) -> None:
    from skiplab.report.findings import StudyData
    from skiplab.report.html import render_html, render_markdown

    prov = {"skiplab": "0.1.0", "git_commit": "0123456789abcdef", "device": "cpu"}
    sessions = [
        {"started": "2026-01-02T03:04:05+00:00", "duration_s": 30.0, "jobs": 3, "todo": 4,
         "status": "running", "provenance": prov, "devices": ["cpu (x86_64, 2 threads)"]},
        {"started": "2026-01-03T03:04:05+00:00", "duration_s": 300.0, "jobs": 1, "todo": 1,
         "status": "finished", "provenance": {**prov, "git_commit": "fedcba9876543210"},
         "devices": []},
    ]  # fmt: skip
    study = StudyData(spec={"name": "s"}, provenance=prov, source="", runs=[])
    context = {"study": study, "sections": [], "summary": [], "generated": "now"}
    assert "| session | started |" not in render_markdown(context)  # none recorded: no table
    study.sessions = sessions
    md = render_markdown(context)
    assert (
        "| 1 | 2026-01-02T03:04:05+00:00 | 30 s | 3 of 4 | running | 0.1.0 | 0123456789ab | cpu (x86_64, 2 threads) |"
        in md
    )
    assert (
        "| 2 | 2026-01-03T03:04:05+00:00 | 5.0 min | 1 of 1 | finished | 0.1.0 | fedcba987654 | cpu |"
        in md
    )
    html = render_html(context)
    assert "fedcba987654" in html and "5.0 min" in html


def test_devices_and_last_session_time_come_from_the_sessions(tmp_path: Path) -> None:
    """The sessions are the one record of where and how long a study ran; a study.db from
    before sessions were recorded keeps its own ``devices`` and ``last_session_s``."""
    store = Store(tmp_path / "old")
    store.set_meta("devices", ["cpu (old)"])
    store.set_meta("last_session_s", 12.0)
    assert store.devices() == ["cpu (old)"] and store.last_session_s() == 12.0
    store.add_session({"status": "running", "duration_s": 1.0})  # by a skiplab of that time
    assert store.devices() == ["cpu (old)"] and store.last_session_s() == 12.0
    store = Store(tmp_path / "new")
    for status, duration, devices in [("finished", 5.0, ["cpu (a)"]), ("finished", 7.0, ["gpu", "cpu (a)"]),
                                      ("interrupted", 1.0, ["cpu (b)"]), ("running", 2.0, [])]:  # fmt: skip
        store.add_session({"status": status, "duration_s": duration, "devices": devices})
    assert store.devices() == ["cpu (a)", "gpu", "cpu (b)"]  # first use first, once each
    assert store.last_session_s() == 7.0  # the last session that ran to its end


def test_an_experiment_on_a_missing_gpu_fails_like_a_run(tmp_path: Path) -> None:
    """Experiments resolve --device as training does: `cuda` without a GPU (a Ray worker
    without one) is an error recorded on the job, not a silent run on the CPU."""
    import torch

    from skiplab.study.runner import execute_experiment

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    record = {"name": "identity", "kind": "identity", "models": [], "input": None,
              "options": {"depths": [2], "steps": 1}}  # fmt: skip
    out = execute_experiment(record, "cuda")
    assert out["status"] == "failed" and "no CUDA GPU" in out["error"], out


def test_worker_lookup_without_the_pools_private_attribute() -> None:
    """The pool's processes are read from a private attribute: where a Python version lacks
    it or changes its shape, the study goes on with less detail, not an AttributeError."""
    from skiplab.study.runner import _death, _stop_workers, _workers

    class Pool:
        def __init__(self, procs: object) -> None:
            if procs is not None:
                self._processes = procs

        def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
            self.down = True

    for procs in (None, ["not a dict"], {1: "not a process"}):
        pool = Pool(procs)
        assert _workers(pool) == [] and _death(pool) == "ended"
        _stop_workers(pool)
        assert pool.down
