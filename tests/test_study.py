"""Studies: spec validation, a quick study end to end, resume after a real kill, locking."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pool_jobs import alive
from skiplab.cli import app
from skiplab.study import SpecError, list_builtin, load_spec, parse_spec, run_study
from skiplab.study.store import Store, study_lock

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

TINY = {
    "name": "tiny",
    "seeds": [0],
    "recipe": {"preset": "quick", "epochs": 1, "batch_size": 64},
    "groups": [
        {
            "name": "g",
            "data": "digits",
            "subset": {"n_train": 128, "n_test": 64},
            "models": [
                "plain-8",
                "resnet-8",
                {
                    "name": "resnet-8",
                    "label": "resnet-8 (B)",
                    "options": {"shortcut": "projection"},
                },
            ],
            "analyses": {"init": ["gradflow"], "trained": ["pathgrad", "lesion"]},
            "analysis_options": {"lesion": {"draws": 2}, "pathgrad": {"batch": 4}},
        }
    ],
    "experiments": [{"kind": "paths", "models": ["resnet-8", "preact-resnet-8"]}],
}


def write_spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"nmae": "x"}, "nmae: unknown field (did you mean 'name'?)"),
        ({"seeds": ["a"]}, "seeds: expected a non-empty list of integers"),
        ({"recipe": {"preset": "quick", "lr": -1}}, "recipe: invalid recipe.lr"),
        (
            {"groups": [{**TINY["groups"][0], "data": "imagenet"}]},
            "groups[0].data: unknown data set 'imagenet'",
        ),
        (
            {"groups": [{**TINY["groups"][0], "models": ["resnet-21"]}]},
            "groups[0].models[0]: resnet-21: invalid depth=21",
        ),
        (
            {
                "groups": [
                    {
                        **TINY["groups"][0],
                        "models": [{"name": "resnet-8", "options": {"plcement": "x"}}],
                    }
                ]
            },
            "did you mean 'placement'",
        ),
        (
            {"groups": [{**TINY["groups"][0], "analyses": {"trained": ["lesions"]}}]},
            "groups[0].analyses.trained[0]: unknown analysis 'lesions' (did you mean 'lesion'?)",
        ),
        (
            {"groups": [{**TINY["groups"][0], "analyses": {"init": ["gradflow", "gradflow"]}}]},
            "groups[0].analyses.init[1]: 'gradflow' is listed twice",
        ),
        ({"groups": [{**TINY["groups"][0], "grid": {"placement": "original"}}]}, "groups[0].grid"),
        (
            {"experiments": [{"kind": "spectra"}]},
            "experiments[0].kind: unknown experiment 'spectra'",
        ),
        ({"groups": [], "experiments": []}, "at least one group or experiment"),
        (
            {"groups": [{**TINY["groups"][0], "data": "random", "data_options": {"n_trian": 9}}]},
            "groups[0].data_options.n_trian: unknown option for data set 'random' "
            "(did you mean 'n_train'?)",
        ),
        ({"groups": [{**TINY["groups"][0], "data_options": [1]}]}, "groups[0].data_options"),
        # the same run twice would share one row of study.db and one run folder
        (
            {"groups": [{**TINY["groups"][0], "models": ["plain-8", "plain-8"]}]},
            "groups[0]: run g/plain-8/digits/s0 appears twice",
        ),
        ({"groups": [{**TINY["groups"][0], "seeds": [0, 0]}]}, "appears twice"),
        (
            {
                "groups": [
                    {
                        **TINY["groups"][0],
                        "models": [
                            {"name": "plain-8", "label": "a"},
                            {"name": "resnet-8", "label": "a"},
                        ],
                    }
                ]
            },
            "run g/a/digits/s0 appears twice",
        ),  # fmt: skip
        (
            {"experiments": [{"kind": "paths", "models": ["resnet-8", "resnet-8"]}]},
            "experiments[0].models: 'resnet-8' appears twice",
        ),
        (
            {"experiments": [{"kind": "identity"}, {"kind": "identity"}]},
            "experiments[1].name: duplicate experiment name 'identity'",
        ),
        ({"name": 5}, "name: not text (5); give the study a name (quote it"),
        ({"report": 5}, "report: expected a mapping with fields published"),
        (
            {"report": {"published": [{"label": "a", "value": "6%"}]}},
            "report.published[0].value: expected",
        ),
        ({"report": {"published": [{"lable": "a"}]}}, "report.published[0].lable: unknown field"),
        ({"quick": {"seeds": "x"}}, "quick.seeds: expected a non-empty list of integers"),
        (
            {"experiments": [{"kind": "paths", "models": ["resnet-8"], "input": [True, 8, 8]}]},
            "experiments[0].input: expected the input shape",
        ),
        # an experiment's name makes its id, experiment/NAME
        (
            {"experiments": [{"kind": "identity", "name": "a/../b"}]},
            "experiments[0].name: invalid 'a/../b'",
        ),
        (
            {"experiments": [{"kind": "identity", "name": None}]},
            "experiments[0].name: invalid None",
        ),
        (
            {
                "groups": [
                    {
                        **TINY["groups"][0],
                        "grid": {"width": list(range(1, 101)), "gate_bias": list(range(100))},
                    }
                ]
            },
            "groups[0].grid: the study expands to 30,000 runs",
        ),  # fmt: skip
        (
            {"groups": [{**TINY["groups"][0], "analysis_options": {"lesion": {"drawz": 2}}}]},
            "groups[0].analysis_options.lesion.drawz: unknown field (did you mean 'draws'?)",
        ),
        (
            {"groups": [{**TINY["groups"][0], "analysis_options": {"lesion": 2}}]},
            "groups[0].analysis_options.lesion: expected a mapping of options",
        ),
        (
            {
                "groups": [
                    {**TINY["groups"][0], "analysis_options": {"lesion": {"models": ["resnet-9"]}}}
                ]
            },
            "lesion.models[0]: 'resnet-9' is not a model of this group (did you mean 'resnet-8'?)",
        ),  # fmt: skip
        (
            {"groups": [{**TINY["groups"][0], "subset": {"n_train": "all"}}]},
            "groups[0].subset.n_train: expected a positive number of examples",
        ),
        (
            {"groups": [{**TINY["groups"][0], "recipe": 3}]},
            "groups[0].recipe: expected a preset name or a mapping",
        ),
        (
            {"experiments": [{"kind": "identity", "options": {"depht": [4]}}]},
            "experiments[0].options.depht: unknown field (did you mean 'depths'?)",
        ),
        (
            {"experiments": [{"kind": "paths", "models": ["resnet-8"], "options": {"x": 1}}]},
            "experiments[0].options: paths experiments take no options",
        ),
        # checked without --quick too: a typo there must not wait for the first --quick
        ({"quick": {"groups": {"h": {"seeds": [1]}}}}, "quick.groups.h: no group of that name"),
        ({"quick": {"groups": ["g"]}}, "quick.groups: expected a mapping of group name"),
        ({"quick": {"groups": {"g": 3}}}, "quick.groups.g: expected a mapping"),
        ({"quick": {"recipe": 3}}, "quick.recipe: expected a preset name or a mapping"),
    ],
)
def test_bad_spec_names_the_field(patch: dict, needle: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({**TINY, **patch})
    assert needle in str(err.value)


def test_bad_spec_in_cli_is_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {**TINY, "seeds": "zero"})
    out = tmp_path / "out"
    result = runner.invoke(app, ["study", str(spec), "--out", str(out)])
    assert result.exit_code == 2
    assert "seeds: expected a non-empty list" in result.stderr and "\n" not in result.stderr.strip()
    assert not out.exists()
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    result = runner.invoke(app, ["study", str(tmp_path / "broken.yaml"), "--out", str(out)])
    assert result.exit_code == 2 and "not valid YAML" in result.stderr
    result = runner.invoke(app, ["study", "no-such-study", "--out", str(out)])
    assert result.exit_code == 2 and "why-skip" in result.stderr


def test_grid_and_quick_expand() -> None:
    spec = parse_spec(
        {
            **TINY,
            "groups": [{**TINY["groups"][0], "grid": {"placement": ["original", "full-preact"]}}],
        }
    )
    runs = spec.runs()
    assert len(runs) == 6 and {r.model.options.get("placement") for r in runs} == {
        "original",
        "full-preact",
    }
    full, quick = load_spec("why-skip"), load_spec("why-skip", quick=True)
    assert len(quick.runs()) < len(full.runs()) and quick.seeds == [0]
    assert set(list_builtin()) >= {"why-skip", "he2015-degradation", "he2016-table1", "he2016-table2",
                                   "veit-lesion", "li2018-landscape", "unet-skips"}  # fmt: skip


def test_quick_study_end_to_end_and_rerun_redoes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "study"
    caplog.set_level(logging.INFO, logger="skiplab.study.runner")
    store = run_study(parse_spec(TINY), out)
    runs = store.runs()
    assert [r["status"] for r in runs] == ["finished"] * 4
    # A line per finished job, for logs where no progress bar shows.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert sorted(m.split()[0] for m in lines) == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert {m.split()[1] for m in lines} == {r["id"] for r in runs}
    assert all(" finished in " in m for m in lines)
    results = {(x["run_id"], x["phase"], x["kind"]): x for x in store.results()}
    plain_pathgrad = results[("g/plain-8/digits/s0", "trained", "pathgrad")]["result"]
    assert "skipped" in plain_pathgrad  # a plain net has no residual units: recorded, not failed
    assert "skipped" not in results[("g/resnet-8/digits/s0", "trained", "pathgrad")]["result"]
    doc = json.loads((out / "results.json").read_text())
    assert {r["id"] for r in doc["runs"]} == {r["id"] for r in runs}
    assert all("test_acc" in r["metrics"] for r in doc["runs"] if r["kind"] == "run")
    assert (out / "report.html").exists() and (out / "report.md").exists()
    # --device auto: the report names the device the jobs resolved it to
    devices = store.meta("devices")
    assert devices and all(d.startswith("cpu (") for d in devices)
    assert f"| device | {'; '.join(devices)} |" in (out / "report.md").read_text()
    finished = {r["id"]: r["finished"] for r in runs}
    store.close()
    store = run_study(parse_spec(TINY), out)  # nothing left to do
    assert {r["id"]: r["finished"] for r in store.runs()} == finished
    assert all(r["attempts"] == 1 for r in store.runs())


def test_failed_run_is_recorded_and_study_goes_on(tmp_path: Path) -> None:
    study = parse_spec({**TINY, "groups": [{**TINY["groups"][0], "models": ["resnet-8"]}]})
    # A bad value fails on load (test_study_validation.py); changed after it, the run fails.
    study.groups[0]["data_options"] = {"test_size": 5.0}
    store = run_study(study, tmp_path / "s")
    runs = {r["id"]: r for r in store.runs()}
    assert runs["experiment/paths"]["status"] == "finished"
    assert runs["g/resnet-8/digits/s0"]["status"] == "failed"
    assert "test_size" in runs["g/resnet-8/digits/s0"]["error"]
    assert "failed" in (tmp_path / "s" / "report.html").read_text()


def test_study_yaml_on_random_data(tmp_path: Path, one_thread: None) -> None:
    spec = {
        "name": "noise",
        "seeds": [0, 1],
        "recipe": {"preset": "he2015-cifar", "epochs": 1, "batch_size": 32},
        "groups": [
            {
                "name": "memorise",
                "data": "random",
                "data_options": {"n_train": 64, "n_test": 32, "classes": 5},
                "models": ["resnet-8"],
            }
        ],
    }
    store = run_study(load_spec(write_spec(tmp_path, spec)), tmp_path / "s", device="cpu",
                      report=False)  # fmt: skip
    runs = store.runs()
    assert [r["status"] for r in runs] == ["finished"] * 2
    run = json.loads((tmp_path / "s" / "runs" / runs[0]["id"] / "run.json").read_text())
    assert run["data"] == "random" and run["model_options"]["num_classes"] == 5
    assert run["data_options"] == {"n_train": 64, "n_test": 32, "size": 32, "channels": 3,
                                   "classes": 5, "seed": 0}  # fmt: skip


def test_second_process_on_same_folder_is_refused(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, TINY)
    out = tmp_path / "out"
    with study_lock(out):
        result = runner.invoke(app, ["study", str(spec), "--out", str(out)])
    assert result.exit_code == 2 and "another skiplab study" in result.stderr


def test_different_spec_in_same_folder_is_refused(tmp_path: Path) -> None:
    run_study(
        parse_spec({**TINY, "groups": [], "experiments": TINY["experiments"]}), tmp_path / "s"
    )
    with pytest.raises(ValueError, match="different spec"):
        run_study(parse_spec(TINY), tmp_path / "s")


def _epochs_done(study: Path, run_id: str) -> int:
    """Epochs a study's run has logged so far (lines of its metrics.jsonl)."""
    try:
        return len((study / "runs" / run_id / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def test_study_resumes_after_sigkill(tmp_path: Path) -> None:
    """Kill a study mid-run with SIGKILL; the restart redoes only the unfinished run."""
    spec = {**TINY, "recipe": {"preset": "quick", "epochs": 3, "batch_size": 32},
            "groups": [{**TINY["groups"][0], "subset": {"n_train": 512, "n_test": 64}, "analyses": {}}],
            "experiments": []}  # fmt: skip
    path = write_spec(tmp_path, spec)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "skiplab", "study", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    killed_during = None
    while time.time() < deadline and proc.poll() is None:
        if (out / "study.db").exists():
            try:
                db = sqlite3.connect(out / "study.db", timeout=1)
                rows = dict(db.execute("SELECT id, status FROM runs").fetchall())
                db.close()
            except sqlite3.Error:
                rows = {}
            # kill a run midway: after its first epoch of 3 (metrics.jsonl has one line),
            # not on the edge of finishing, so that the kill cannot race its end
            midway = [k for k, v in rows.items() if v == "running" and _epochs_done(out, k) == 1]
            if list(rows.values()).count("finished") >= 1 and midway:
                killed_during = midway[0]
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_during is not None, "the study finished before it could be killed"
    before = Store.open_existing(out).runs()
    done_before = {r["id"]: r["finished"] for r in before if r["status"] == "finished"}
    interrupted = [r["id"] for r in before if r["status"] == "running"]
    assert interrupted, "no run was in flight when the study was killed"
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    after = {r["id"]: r for r in Store.open_existing(out).runs()}
    assert all(r["status"] == "finished" for r in after.values())
    for run_id, finished in done_before.items():  # finished runs were never redone
        assert after[run_id]["finished"] == finished and after[run_id]["attempts"] == 1
    for run_id in interrupted:  # the half-written run was redone cleanly
        assert after[run_id]["attempts"] == 2
    # stdout is not a terminal: no bar, a line per job done in this session instead
    redone = [line for line in result.stderr.splitlines() if line.startswith("[")]
    n, left = len(after), [r for r in after if r not in done_before]
    assert [line.split()[0] for line in redone] == [
        f"[{k}/{n}]" for k in range(n - len(left) + 1, n + 1)
    ]
    assert sorted(line.split()[1] for line in redone) == sorted(left)


def test_report_command_rerenders(tmp_path: Path) -> None:
    out = tmp_path / "s"
    run_study(parse_spec({**TINY, "groups": [], "experiments": TINY["experiments"]}), out).close()
    (out / "report.html").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0 and (out / "report.html").exists()
    result = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "holds no study" in result.stderr


@pytest.mark.parametrize(
    "name",
    [
        "he2015-degradation",
        "he2016-table1",
        "he2016-table2",
        "veit-lesion",
        "li2018-landscape",
        "unet-skips",
    ],
)
def test_builtin_full_scale_specs_run_with_tiny_overrides(tmp_path: Path, name: str) -> None:
    spec = load_spec(name, quick=True)
    store = run_study(spec, tmp_path / name)
    assert all(r["status"] == "finished" for r in store.runs()), [r["error"] for r in store.runs()]
    full = load_spec(name)
    assert full.reproduces and all(r.data != "digits" for r in full.runs())


@pytest.mark.parametrize("dies_once", [True, False])
def test_local_pool_survives_a_dead_worker(tmp_path: Path, dies_once: bool) -> None:
    """A worker process that dies breaks the pool; its jobs start again in a fresh pool
    (once), a job that kills every worker is recorded as failed with the reason, every job
    is recorded exactly once, and every attempt is started (the store counts attempts)."""
    from pool_jobs import KillsWorker
    from skiplab.study.runner import Job, LocalExecutor

    jobs = [Job(name, "run", {}) for name in "abcd"]
    started, recorded = [], []
    # as the kernel's OOM killer does (dies_once: a plain exit)
    fn = KillsWorker("b", str(tmp_path / "died") if dies_once else None,
                     None if dies_once else signal.SIGKILL)  # fmt: skip
    LocalExecutor(workers=2).map(jobs, fn, on_start=lambda j: started.append(j.job_id),
                                 on_done=lambda j, out: recorded.append((j.job_id, out)))  # fmt: skip
    assert sorted(set(started)) == list("abcd") and sorted(j for j, _ in recorded) == list("abcd")
    assert started.count("b") == 2  # the attempt that died, and the one after it
    status = {j: out["status"] for j, out in recorded}
    assert status == {"a": "finished", "b": "finished" if dies_once else "failed",
                      "c": "finished", "d": "finished"}  # fmt: skip
    if not dies_once:
        error = dict(recorded)["b"]["error"]
        assert "worker process" in error and "SIGKILL" in error and "2 attempts" in error, error


DRIVER = """
import sys
from pool_jobs import Sleeps
from skiplab.study.runner import Job, LocalExecutor
LocalExecutor(workers=2).map([Job(n, "run", {}) for n in "ab"], Sleeps(sys.argv[1], 300),
                             on_start=lambda j: None, on_done=lambda j, out: None)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_no_worker_outlives_its_driver(tmp_path: Path, sig: int) -> None:
    """Killed (SIGKILL: out of memory, `kill -9`), the driver's workers exit on their own
    (they used to live on, write into the study folder and then wait forever); interrupted
    (SIGINT to the driver alone), the driver stops them at once (it used to wait until
    their runs ended, then drop the results)."""
    env = {**ENV, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    files = [tmp_path / "a.pid", tmp_path / "b.pid"]
    deadline = time.time() + 180
    while not all(f.exists() and f.read_text() for f in files) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    pids = [int(f.read_text()) for f in files]
    t0 = time.time()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    while any(alive(p) for p in pids) and time.time() < t0 + 15:
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"worker processes {left} outlived their driver"
    assert time.time() - t0 < 15


def test_bad_spec_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "empty.yaml").write_text("")
    cases = {"adir": "is a folder", "latin1.yaml": "not a UTF-8 text file",
             "list.yaml": "mapping of fields such as name and groups, but this file holds a list",
             "empty.yaml": "the file is empty"}  # fmt: skip
    for name, needle in cases.items():
        with pytest.raises(SpecError) as err:
            load_spec(tmp_path / name)
        assert needle in str(err.value) and str(tmp_path / name) in str(err.value)
        assert ": :" not in str(err.value)  # no empty field path
    out = tmp_path / "out"
    result = runner.invoke(app, ["study", str(tmp_path / "adir"), "--out", str(out)])
    assert result.exit_code == 2 and "is a folder" in result.stderr and not out.exists()


def test_bad_device_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "new"
    with pytest.raises(ValueError, match="no CUDA GPU is available here; use --device cpu"):
        run_study(parse_spec(TINY), out, device="cuda")
    assert not out.exists()
    old = tmp_path / "old"  # an existing study is left byte for byte as it was
    Store(old).close()
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    for device in ("tpu", "cuda:0", "cuda"):
        with pytest.raises(ValueError, match="device"):
            run_study(parse_spec(TINY), old, device=device)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    spec = write_spec(tmp_path, TINY)
    result = runner.invoke(app, ["study", str(spec), "--out", str(out), "--device", "tpu"])
    assert result.exit_code == 2 and "allowed: cpu, cuda, auto" in result.stderr
    assert not out.exists()


def test_provenance_tolerates_cuda_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from skiplab.provenance import provenance

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no GPU" in provenance("cuda")["device"]


def test_jobs_get_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative --out must not be read in a worker's own working directory (Ray's)."""

    class Capture:
        runs_here = True

        def map(self, jobs, fn, on_start, on_done) -> None:  # noqa: ANN001
            self.fn = fn

    monkeypatch.chdir(tmp_path)
    ex = Capture()
    spec = parse_spec({**TINY, "groups": [], "experiments": TINY["experiments"]})
    run_study(spec, "rel", data_dir="data", executor=ex, report=False).close()
    assert ex.fn.study_dir == str(Path.cwd() / "rel") and ex.fn.data_dir == str(Path.cwd() / "data")


def test_quick_patches_an_experiment_named_by_its_kind() -> None:
    spec = {**TINY, "experiments": [{"kind": "identity", "options": {"depths": [4, 10]}}],
            "quick": {"experiments": {"identity": {"options": {"depths": [4]}}}}}  # fmt: skip
    assert parse_spec(spec).experiment_specs()[0].options == {"depths": [4, 10]}
    assert parse_spec(spec, quick=True).experiment_specs()[0].options == {"depths": [4]}


def test_refused_duplicate_runs_write_nothing(tmp_path: Path) -> None:
    """A spec whose runs collide is refused before the folder is claimed: fixed, it runs
    into the same folder (it used to find a study.db with the bad spec and refuse)."""
    bad = parse_spec({**TINY, "groups": [], "experiments": TINY["experiments"]})
    bad.experiments = bad.experiments * 2  # made in Python, past parse_spec's check
    out = tmp_path / "s"
    with pytest.raises(
        SpecError, match=r"experiments\[1\]\.name: duplicate experiment name 'paths'"
    ):
        run_study(bad, out, report=False)
    assert not (out / "study.db").exists()
    spec = write_spec(
        tmp_path, {**TINY, "groups": [{**TINY["groups"][0], "models": ["plain-8", "plain-8"]}]}
    )
    result = runner.invoke(app, ["study", str(spec), "--out", str(out)])
    assert result.exit_code == 2 and "appears twice" in result.stderr
    assert not (out / "study.db").exists()


def test_yaml_errors_are_one_line_with_the_place(tmp_path: Path) -> None:
    cases = {
        "twice.yaml": ("name: a\nexperiments: [{kind: paths, models: [resnet-8]}]\nname: b\n",
                       "line 3, column 1: while reading a mapping: the key 'name' is given twice"),
        "flow.yaml": ("name: a\ngroups: [{name: g\n", "line 3, column 1: while parsing a flow mapping"),
        "spec.toml": ('name = "a"\n[[groups]]\nname = "g"\n', "TOML is not read: write the spec in YAML"),
    }  # fmt: skip
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(SpecError) as err:
            load_spec(tmp_path / name)
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("content", ["garbage", "foreign", "old-runs"])
def test_a_foreign_or_corrupt_study_db_is_refused_untouched(tmp_path: Path, content: str) -> None:
    out = tmp_path / "s"
    out.mkdir()
    db_path = out / "study.db"
    if content == "garbage":
        db_path.write_bytes(b"\x07not sqlite" * 500)
        needle = "is not a readable study database"
    else:
        db = sqlite3.connect(db_path)
        db.execute("CREATE TABLE notes (text)" if content == "foreign" else "CREATE TABLE runs (x)")
        db.commit()
        db.close()
        needle = "is not a skiplab study database"
    before = db_path.read_bytes()
    spec = parse_spec({**TINY, "groups": [], "experiments": TINY["experiments"]})
    with pytest.raises(ValueError, match=needle):
        run_study(spec, out)
    with pytest.raises(ValueError, match=needle):
        Store.open_existing(out)
    assert db_path.read_bytes() == before and sorted(p.name for p in out.iterdir()) == [
        ".study.lock",
        "study.db",
    ]


def test_report_of_a_folder_whose_study_never_started_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()  # the tables, but no spec: nothing to report
    with pytest.raises(ValueError, match="holds no study yet"):
        Store.open_existing(tmp_path)


def test_different_spec_message_names_the_first_difference(tmp_path: Path) -> None:
    base = {**TINY, "groups": [], "experiments": TINY["experiments"]}
    run_study(parse_spec(base), tmp_path / "s", report=False).close()
    other = {**base, "recipe": {**TINY["recipe"], "epochs": 2}}
    with pytest.raises(ValueError, match=r"different spec \(recipe\.epochs: 1 there, 2 here\)"):
        run_study(parse_spec(other), tmp_path / "s")


def test_first_difference_names_keys_one_side_lacks() -> None:
    from skiplab.study.runner import _first_difference

    old = {"name": "s", "groups": [{"models": ["a"]}], "gone": 1}
    assert _first_difference(old, {**old, "groups": [{"models": ["b"]}]}) == (
        'groups[0].models[0]: "a" there, "b" here'
    )
    assert _first_difference(old, {"name": "s", "groups": old["groups"]}) == (
        "gone: in the folder's spec, not in this one"
    )
    assert _first_difference(old, {**old, "new": 2}) == "new: in this spec, not in the folder's"
    assert _first_difference([1], [1, 2]) == "spec: [1] there, [1, 2] here"


def test_paths_analysis_options_reach_the_analysis() -> None:
    """``analysis_options.paths`` (until, blocks) was accepted and then ignored."""
    import torch

    from skiplab.data import TensorData
    from skiplab.models import create_model
    from skiplab.study.analyses import run_analysis

    x = torch.randn(4, 1, 8, 8)
    data = TensorData("toy", "classification", x, torch.zeros(4, dtype=torch.long), x,
                      torch.zeros(4, dtype=torch.long), 10, "none")  # fmt: skip
    model = create_model("plain-8", in_channels=1, num_classes=10)
    full, _ = run_analysis("paths", model, data, {}, "plain-8", "cpu", 0)
    part, _ = run_analysis(
        "paths", model, data, {"paths": {"until": "stages.0"}}, "plain-8", "cpu", 0
    )
    assert part["min"] < full["min"]
    parse_spec(
        {
            **TINY,
            "groups": [{**TINY["groups"][0], "analysis_options": {"paths": {"until": "stages.0"}}}],
        }
    )


def test_an_interrupted_study_says_how_to_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C: one line says what is done and that the same command resumes (the CLI
    exited 130 without a word); the run in flight is marked interrupted, and the rerun redoes
    it."""

    class Interrupted:
        runs_here = True

        def map(self, jobs, fn, on_start, on_done) -> None:  # noqa: ANN001
            on_start(jobs[0])
            raise KeyboardInterrupt

    spec = parse_spec({**TINY, "groups": [], "experiments": TINY["experiments"]})
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, out, executor=Interrupted(), report=False)
    assert "interrupted: 0 of 1 runs done; the same command resumes the study" in caplog.text
    # not 'running' (the report said "2 running" of a study nothing ran any more)
    assert Store.open_existing(out).status("experiment/paths") == "interrupted"
    store = run_study(spec, out, report=False)
    assert [(r["status"], r["attempts"]) for r in store.runs()] == [("finished", 2)]


def test_results_the_store_cannot_take_fail_the_run_not_the_study(tmp_path: Path) -> None:
    """An analysis listed twice (two results for one key) crashed the study with an
    IntegrityError after the run was done, and again on every resume; a result that is not
    JSON did the same. Now: the last result is kept, and the run that cannot be stored
    fails with the reason while the study goes on."""

    class Returns:
        runs_here = True

        def map(self, jobs, fn, on_start, on_done) -> None:  # noqa: ANN001
            twice = [("init", "nlc", {"v": 1}, "a"), ("init", "nlc", {"v": 2}, "b")]
            for job, results in zip(
                jobs, [twice, [("init", "nlc", {"v": object()}, "c")]], strict=True
            ):
                on_start(job)
                on_done(job, {"status": "finished", "results": results})

    spec = {**TINY, "groups": [{**TINY["groups"][0], "models": ["plain-8", "resnet-8"]}],
            "experiments": []}  # fmt: skip
    store = run_study(parse_spec(spec), tmp_path / "s", executor=Returns(), report=False)
    runs = {r["id"]: r for r in store.runs()}
    assert runs["g/plain-8/digits/s0"]["status"] == "finished"
    assert [x["result"] for x in store.results("g/plain-8/digits/s0")] == [{"v": 2}]
    bad = runs["g/resnet-8/digits/s0"]
    assert bad["status"] == "failed" and "cannot be stored as JSON" in bad["error"]
    assert store.results("g/resnet-8/digits/s0") == []
