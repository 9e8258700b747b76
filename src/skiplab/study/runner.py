"""Run a study: expand the grid, execute what is not done, record everything in study.db.

Killed at any moment and started again, a study resumes: finished runs are never redone,
a run left 'running' by a kill (or 'interrupted' by Ctrl-C) is redone from scratch (its
folder is cleared first).
Failed or diverged runs are recorded and do not stop the study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .spec import (
    ExperimentSpec,
    ModelSpec,
    RunSpec,
    StudySpec,
    check_unique,
    run_model_options,
)
from .store import LOCK_NAME, Store, study_lock

log = logging.getLogger(__name__)


def _run_record(run: RunSpec) -> dict[str, Any]:
    d = dataclasses.asdict(run)
    d["label"] = run.model.display()
    return d


def _run_from_record(d: dict[str, Any]) -> RunSpec:
    d = {k: v for k, v in d.items() if k != "label"}
    d["model"] = ModelSpec(**d["model"])
    d["analyses_init"] = tuple(d["analyses_init"])
    d["analyses_trained"] = tuple(d["analyses_trained"])
    return RunSpec(**d)


def _exp_record(exp: ExperimentSpec) -> dict[str, Any]:
    return dataclasses.asdict(exp)


def _exp_from_record(d: dict[str, Any]) -> ExperimentSpec:
    d = dict(d)
    d["models"] = tuple(ModelSpec(**m) for m in d["models"])
    d["input"] = tuple(d["input"]) if d["input"] else None
    return ExperimentSpec(**d)


def device_used(device: str) -> str | None:
    """The device a job on this process runs on, in words (``auto`` resolved here: on a
    Ray worker, the worker's); ``None`` for a device that cannot be used."""
    from ..provenance import device_name
    from ..train.trainer import resolve_device

    try:
        return device_name(resolve_device(device))
    except ValueError:
        return None


def execute_run(
    record: dict[str, Any], study_dir: str, device: str, data_dir: str | None
) -> dict[str, Any]:
    """Train one run and run its analyses; never raises (errors become status 'failed')."""
    import torch

    from ..data import load_dataset
    from ..models import create_model
    from ..train import fit, get_recipe
    from .analyses import run_analysis

    run = _run_from_record(record)
    t0 = time.perf_counter()
    folder = Path(study_dir) / "runs" / run.run_id
    results: list[tuple[str, str, dict[str, Any], str]] = []
    try:
        if folder.exists():  # a half-written earlier attempt: redo cleanly
            shutil.rmtree(folder)
        data = load_dataset(run.data, data_dir=data_dir, **run.data_options)
        if run.subset:
            data = data.subset(run.subset.get("n_train"), run.subset.get("n_test"))
        options = run_model_options(run.model, data)
        torch.manual_seed(run.seed)
        model = create_model(run.model.name, **options)
        label = run.model.display()
        for kind in run.analyses_init:
            results.append(
                (
                    "init",
                    kind,
                    *run_analysis(kind, model, data, run.analysis_options, label, device, run.seed),
                )
            )
        recipe = dict(run.recipe)
        recipe = get_recipe(recipe.pop("preset", "quick"), **recipe)
        res = fit(model, data, recipe, folder, seed=run.seed, device=device, model_name=run.model.name,
                  model_options=options)  # fmt: skip
        if res.status == "finished":
            for kind in run.analyses_trained:
                results.append(
                    (
                        "trained",
                        kind,
                        *run_analysis(
                            kind, model, data, run.analysis_options, label, device, run.seed
                        ),
                    )
                )
        return {"status": res.status, "metrics": res.final, "history": res.metrics, "results": results,
                "error": res.message or None, "duration_s": time.perf_counter() - t0}  # fmt: skip
    except Exception as err:  # noqa: BLE001 - a failed run is recorded, the study goes on
        log.warning("run %s failed: %s", run.run_id, err)
        tb = traceback.format_exc(limit=3)
        return {"status": "failed", "metrics": {}, "history": [], "results": results,
                "error": f"{type(err).__name__}: {err}\n{tb}", "duration_s": time.perf_counter() - t0}  # fmt: skip


def execute_experiment(record: dict[str, Any], device: str) -> dict[str, Any]:
    from .analyses import run_experiment

    exp = _exp_from_record(record)
    t0 = time.perf_counter()
    try:
        result, summary = run_experiment(exp, device)
        return {"status": "finished", "metrics": {}, "history": [], "results": [("experiment", exp.kind, result, summary)],
                "error": None, "duration_s": time.perf_counter() - t0}  # fmt: skip
    except Exception as err:  # noqa: BLE001
        log.warning("experiment %s failed: %s", exp.name, err)
        return {"status": "failed", "metrics": {}, "history": [], "results": [],
                "error": f"{type(err).__name__}: {err}", "duration_s": time.perf_counter() - t0}  # fmt: skip


@dataclass
class Job:
    job_id: str
    kind: str  # 'run' | 'experiment'
    record: dict[str, Any]


def _worker_init(driver: int) -> None:
    """Set up a worker process of ``LocalExecutor``: Ctrl-C is for the driver (it stops its
    workers itself, and a worker's traceback would only bury its message), and a worker
    whose driver is gone (killed with SIGKILL, or by the OOM killer) exits at once instead
    of writing into the study folder that a restarted study redoes its run in."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(driver,), daemon=True).start()


def _exit_with(driver: int) -> None:
    while os.getppid() == driver:  # an orphan is adopted by another process
        time.sleep(0.5)
    os._exit(1)


def _workers(pool: ProcessPoolExecutor) -> list:
    """The pool's worker processes (``multiprocessing.Process`` objects).

    ``ProcessPoolExecutor`` has no public way to reach them: its ``shutdown`` waits for
    the jobs in flight, ``BrokenProcessPool`` does not say how a worker ended, and
    ``terminate_workers`` (Python 3.14) still gives no exit codes. Pids reported by an
    initializer would not do either: the pool reaps its workers itself, so their exit
    codes live only in its ``Process`` objects. So this reads the private ``_processes``
    (a dict pid -> Process in CPython 3.8 to 3.14), checked: where it is missing or of
    another shape the answer is ``[]``, Ctrl-C then waits for the jobs in flight, and a
    dead worker's cause reads 'ended'."""
    procs = getattr(pool, "_processes", None)
    if not isinstance(procs, dict):
        return []
    return [p for p in list(procs.values()) if hasattr(p, "exitcode") and hasattr(p, "terminate")]


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes now: ``shutdown`` would wait for their jobs to end."""
    procs = _workers(pool)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _death(pool: ProcessPoolExecutor) -> str:
    """How the worker processes of a broken pool ended, e.g. ``killed by SIGKILL``."""
    procs = _workers(pool)
    for p in procs:
        if p.exitcode is None:  # broken, but not reaped yet (a loaded machine)
            p.join(5)
    codes = {p.exitcode for p in procs}
    codes.discard(None)
    if len(codes) > 1:  # the pool terminates the others once one has died
        codes.discard(-signal.SIGTERM)
    if len(codes) != 1:
        return "ended"
    code = codes.pop()
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = {"SIGKILL": " (out of memory?)", "SIGSEGV": " (a crash in native code)"}.get(name, "")
    return f"was killed by {name}{hint}"


class LocalExecutor:
    """Runs jobs in a pool of ``workers`` worker processes, or in this process (``workers=0``).

    A worker process that dies (killed, out of memory, a crash in native code) breaks the
    whole pool and every job in flight with it: those jobs then run again one at a time,
    each in a process of its own (so a job that kills its worker takes no other job with
    it), at most ``retries`` more times before it is recorded as failed; then the other
    jobs go on in a fresh pool. This holds for one worker too: ``workers=1`` runs the jobs
    one after another in one worker process. Every attempt is started (``on_start``), so
    the store counts attempts. Interrupted (Ctrl-C), the driver kills its workers and
    re-raises; killed, its workers exit on their own.

    ``workers=0`` runs the jobs in this process: no process to start (seconds per pool),
    but a job that kills its process (segfault, out of memory) ends the caller with it.
    """

    runs_here = True  # runs execute on this machine: its device must exist here

    def __init__(self, workers: int = 0, retries: int = 1) -> None:
        if workers < 0:
            raise ValueError(
                f"invalid workers={workers}: 0 (in this process) or a number of worker processes"
            )
        self.workers, self.retries = workers, retries

    def map(self, jobs: list[Job], fn: Callable[[Job], dict[str, Any]], on_start: Callable[[Job], None],
            on_done: Callable[[Job, dict[str, Any]], None]) -> None:  # fmt: skip
        if self.workers == 0:
            for job in jobs:
                on_start(job)
                on_done(job, fn(job))
            return
        queue = list(jobs)
        tries: dict[str, int] = {}
        args = (tries, fn, on_start, on_done)
        while queue:
            with self._pool(self.workers) as pool:
                suspects, queue = self._run_pool(pool, self.workers, queue, *args)
            while suspects:
                with self._pool(1) as solo:
                    again, _ = self._run_pool(solo, 1, suspects[:1], *args)
                suspects = again + suspects[1:]

    @staticmethod
    def _pool(workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                   initializer=_worker_init, initargs=(os.getpid(),))  # fmt: skip

    def _run_pool(self, pool: ProcessPoolExecutor, workers: int, queue: list[Job], tries: dict[str, int],
                  fn: Callable[[Job], dict[str, Any]], on_start: Callable[[Job], None],
                  on_done: Callable[[Job, dict[str, Any]], None]) -> tuple[list[Job], list[Job]]:  # fmt: skip
        """Run jobs until the queue is empty or the pool breaks; return the jobs that were in
        flight when it broke (to run again) and those not started."""
        try:
            return self._drive(pool, workers, queue, tries, fn, on_start, on_done)
        except BaseException:  # Ctrl-C (or a store that cannot be written): stop the workers
            _stop_workers(pool)
            raise

    def _drive(self, pool: ProcessPoolExecutor, workers: int, queue: list[Job], tries: dict[str, int],
               fn: Callable[[Job], dict[str, Any]], on_start: Callable[[Job], None],
               on_done: Callable[[Job, dict[str, Any]], None]) -> tuple[list[Job], list[Job]]:  # fmt: skip
        queue = list(queue)
        pending: dict[Future, Job] = {}
        redo: list[Job] = []
        broken = False
        while queue or pending:
            while queue and len(pending) < workers and not broken:
                job = queue[0]
                try:
                    fut = pool.submit(fn, job)
                except BrokenProcessPool:  # found broken before any of its futures said so
                    broken = True
                    break
                queue.pop(0)
                on_start(job)
                tries[job.job_id] = tries.get(job.job_id, 0) + 1
                pending[fut] = job
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                try:
                    out = fut.result()
                except BrokenProcessPool:  # a worker died: every job in flight is lost
                    broken = True
                    if tries[job.job_id] <= self.retries:
                        log.warning("a worker process died; %s starts again", job.job_id)
                        redo.append(job)
                        continue
                    n = tries[job.job_id]
                    who = "its worker process" if workers == 1 else "a worker process"
                    out = {"status": "failed", "results": [],
                           "error": f"{who} {_death(pool)}; gave up after {n} attempt{'s' * (n > 1)}"}  # fmt: skip
                except Exception as err:  # noqa: BLE001 - e.g. a result that cannot be unpickled
                    out = {"status": "failed", "error": f"worker failed: {err}", "results": []}
                on_done(job, out)
        return redo, queue


class _JobFn:
    """Picklable job function for worker processes (``threads``: torch threads per worker,
    so that N single-run workers share the cores instead of oversubscribing them)."""

    def __init__(
        self, study_dir: str, device: str, data_dir: str | None, threads: int | None = None
    ) -> None:
        self.study_dir, self.device, self.data_dir, self.threads = (
            study_dir,
            device,
            data_dir,
            threads,
        )

    def __call__(self, job: Job) -> dict[str, Any]:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        if job.kind == "run":
            out = execute_run(job.record, self.study_dir, self.device, self.data_dir)
        else:
            out = execute_experiment(job.record, self.device)
        return {**out, "device": device_used(self.device)}  # where this process ran it


STUDY_DEVICES = ("cpu", "cuda", "auto")


def check_study_device(device: str, *, runs_here: bool = True) -> None:
    """Refuse a device a study cannot use, before anything is written: one of
    ``STUDY_DEVICES``, and ``cuda`` only where there is a GPU, unless the runs execute
    elsewhere (``runs_here=False``: a CPU-only Ray driver hands runs to GPU workers)."""
    if device not in STUDY_DEVICES:
        raise ValueError(f"invalid --device {device!r} for a study; allowed: cpu, cuda, auto")
    if runs_here:
        from ..train.trainer import resolve_device

        resolve_device(device)  # the same check, and message, as training


def auto_workers(device: str) -> int:
    """Runs at once when not given: one per core (at most 4) on the CPU, where small nets
    use single-threaded processes better than one multi-threaded one; 1 on a GPU."""
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def run_study(
    spec: StudySpec,
    out_dir: str | Path,
    *,
    workers: int = 0,
    device: str = "auto",
    data_dir: str | Path | None = None,
    executor: Any = None,
    progress: bool = False,
    report: bool = True,
) -> Store:
    """Execute every unfinished run and experiment of ``spec`` into ``out_dir``, then write
    ``results.json`` and the report. Returns the (open) store. A device the runs cannot use
    is a ``ValueError`` before anything is written.

    ``workers`` (without ``executor``): 0, the default, runs the jobs in this process, with
    no worker to start (seconds), but a run that kills the process (a crash in native code,
    the out-of-memory killer) ends the study, and a resume meets that run again. N >= 1 runs
    them in N worker processes (``skiplab study`` always does): a run that kills its worker
    is retried once in a process of its own, then recorded as failed with the cause, and
    the study goes on.

    Each session (the first, and every resume) is recorded in ``store.sessions()`` and
    ``results.json``: its start, duration, jobs done and provenance. The ``provenance``
    meta is the first session's."""
    from ..provenance import provenance

    ex = executor or LocalExecutor(workers)
    check_study_device(device, runs_here=getattr(ex, "runs_here", True))
    out_dir = Path(out_dir)
    if (
        out_dir.exists()
        and any(p.name != LOCK_NAME for p in out_dir.iterdir())
        and not (out_dir / "study.db").exists()
    ):
        raise ValueError(f"{out_dir} is not empty and holds no study; choose a new or empty --out")
    # before anything is written: a refused spec must not claim the folder (checked again:
    # a spec may be changed in Python after parse_spec)
    check_unique(spec)
    jobs = [Job(r.run_id, "run", _run_record(r)) for r in spec.runs()]
    jobs += [Job(e.exp_id, "experiment", _exp_record(e)) for e in spec.experiment_specs()]
    with study_lock(out_dir):
        store = Store(out_dir)
        old = store.meta("spec")
        if old is not None and json.dumps(old, sort_keys=True, default=str) != json.dumps(
            _spec_json(spec), sort_keys=True, default=str
        ):
            raise ValueError(
                f"{out_dir} holds study {old.get('name')!r} with a different spec "
                f"({_first_difference(old, _spec_json(spec))}); resume it with the same spec "
                "(and --quick setting), or choose another --out"
            )
        store.set_meta("spec", _spec_json(spec))
        store.set_meta("source", spec.source)
        prov = provenance(device if device != "auto" else None)
        if store.meta("provenance") is None:  # the first session's; each one's in "sessions"
            store.set_meta("provenance", prov)
        for j in jobs:
            store.add_run(j.job_id, j.kind, j.record)
        todo = [j for j in jobs if store.status(j.job_id) != "finished"]
        log.info("%s: %d of %d runs to do", spec.name, len(todo), len(jobs))
        t0 = time.time()
        session = store.add_session({
            "started": datetime.now().astimezone().isoformat(timespec="seconds"), "duration_s": 0.0,
            "jobs": 0, "todo": len(todo), "status": "running", "executor": type(ex).__name__,
            "workers": getattr(ex, "workers", None), "provenance": prov, "devices": [],
        })  # fmt: skip
        session_devices: list[str] = []  # what this session's jobs ran on
        bar = _bar(progress, len(jobs), len(jobs) - len(todo))

        in_flight: set[str] = set()  # started, not yet recorded

        def on_start(job: Job) -> None:
            store.start(job.job_id)
            in_flight.add(job.job_id)
            if bar:
                bar[0].update(bar[1], description=job.job_id)

        done_before = len(jobs) - len(todo)
        finished = [done_before]

        def on_done(job: Job, out: dict[str, Any]) -> None:
            in_flight.discard(job.job_id)
            status = out.get("status", "failed")
            try:
                store.finish(job.job_id, status, metrics=out.get("metrics"), history=out.get("history"),
                             results=out.get("results", []), error=out.get("error"), duration_s=out.get("duration_s"))  # fmt: skip
            except (TypeError, ValueError) as err:  # not JSON: the run fails, the study goes on
                status = "failed"
                log.warning("run %s: its results cannot be stored: %s", job.job_id, err)
                store.finish(job.job_id, status, error=f"its results cannot be stored as JSON: {err}",
                             duration_s=out.get("duration_s"))  # fmt: skip
            finished[0] += 1
            used = out.get("device")  # as the job's process resolved --device (auto)
            if used and used not in session_devices:
                session_devices.append(used)
            store.update_session(session, duration_s=time.time() - t0, jobs=finished[0] - done_before,
                                 devices=session_devices)  # fmt: skip
            if used and used not in (store.meta("devices") or []):  # for older skiplab readers
                store.set_meta("devices", store.devices())
            # one line per job for logs (the bar is for terminals)
            log.info("[%d/%d] %s %s in %.1f s", finished[0], len(jobs), job.job_id, status,
                     out.get("duration_s") or 0.0)  # fmt: skip
            if bar:
                bar[0].advance(bar[1])

        threads = (
            max(1, (os.cpu_count() or 1) // workers) if workers > 1 and executor is None else None
        )
        # absolute paths: a Ray worker (or a process on another node) has a working
        # directory of its own
        study_dir = str(out_dir.absolute())
        data = str(Path(data_dir).expanduser().absolute()) if data_dir else None
        ended = "failed"
        try:
            ex.map(todo, _JobFn(study_dir, device, data, threads), on_start, on_done)
            ended = "finished"
        except KeyboardInterrupt:
            ended = "interrupted"
            with contextlib.suppress(sqlite3.Error):
                store.interrupt(sorted(in_flight))
            log.warning("interrupted: %d of %d runs done; the same command resumes the study",
                        finished[0], len(jobs))  # fmt: skip
            raise
        finally:
            if bar:
                bar[0].stop()
            # bookkeeping: must not hide the error that ends the session (a store that cannot
            # be written fails here too)
            with contextlib.suppress(sqlite3.Error):
                store.update_session(session, duration_s=time.time() - t0, status=ended)
        store.set_meta("last_session_s", store.last_session_s())  # for older skiplab readers
        write_results_json(store, out_dir)
        if report:
            from ..report import write_report

            write_report(store, out_dir)
        return store


def _first_difference(old: Any, new: Any) -> str:
    """Where two specs (as JSON) first differ, e.g. ``recipe.epochs: 1 there, 2 here``."""
    from ..io import MISSING, differences

    where, a, b = next(differences(old, new), ("", old, new))
    where = where or "spec"
    if b is MISSING:
        return f"{where}: in the folder's spec, not in this one"
    if a is MISSING:
        return f"{where}: in this spec, not in the folder's"
    return f"{where}: {json.dumps(a)[:60]} there, {json.dumps(b)[:60]} here"


def _spec_json(spec: StudySpec) -> dict[str, Any]:
    return json.loads(
        json.dumps(
            spec.to_dict(),
            default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o),
        )
    )


def write_results_json(store: Store, out_dir: Path) -> None:
    from ..io import atomic_write_text

    results: dict[str, list[dict[str, Any]]] = {}
    for x in store.results():  # one query, not one per run
        results.setdefault(x["run_id"], []).append(x)
    runs = []
    for r in store.runs():
        spec = r["spec"]
        entry: dict[str, Any] = {
            "id": r["id"],
            "kind": r["kind"],
            "status": r["status"],
            "duration_s": r["duration_s"],
        }
        if r["kind"] == "run":
            entry.update(model=spec["model"]["name"], options=spec["model"]["options"], label=spec["label"],
                         group=spec["group"], data=spec["data"], seed=spec["seed"], metrics=r["metrics"])  # fmt: skip
        else:
            entry.update(experiment=spec["name"], analysis=spec["kind"])
        if r["error"]:
            entry["error"] = r["error"].splitlines()[0]
        entry["analyses"] = {
            f"{x['phase']}:{x['kind']}": x["summary"] for x in results.get(r["id"], [])
        }
        runs.append(entry)
    doc = {"study": store.meta("spec", {}).get("name"), "runs": runs,
           "provenance": store.meta("provenance"), "sessions": store.sessions()}  # fmt: skip
    atomic_write_text(out_dir / "results.json", json.dumps(doc, indent=2))


def _bar(enabled: bool, total: int, done: int) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )
    p.start()
    return p, p.add_task("study", total=total, completed=done)
