"""Studies on Ray: a local Ray instance on the CPU runs a study; a lost worker is retried
and its run recorded once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from pool_jobs import alive  # noqa: E402
from skiplab.study import parse_spec, run_study  # noqa: E402
from skiplab.study.ray_executor import RayExecutor, check_reachable  # noqa: E402
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
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process is lost midway (OOM)
        return {"status": "finished", "metrics": {"job": job.job_id}, "results": []}

    return fn


def test_lost_worker_is_retried_and_recorded_once(tmp_path: Path, local_ray) -> None:
    marker = str(tmp_path / "died-once")
    started: list[str] = []
    recorded: list[tuple[str, dict]] = []
    ex = RayExecutor(workers=1, device="cpu", max_retries=2)
    ex.map([Job("a", "run", {})], _dies_once(marker), on_start=lambda j: started.append(j.job_id),
           on_done=lambda j, out: recorded.append((j.job_id, out)))  # fmt: skip
    assert os.path.exists(marker)  # the first attempt died
    assert recorded == [("a", {"status": "finished", "metrics": {"job": "a"}, "results": []})]
    assert started == ["a", "a"]  # each attempt is started: the store counts attempts


@pytest.mark.parametrize("max_retries", [0, 1])
def test_retries_exhausted_is_a_failed_run_not_a_crash(
    tmp_path: Path, local_ray, max_retries: int
) -> None:
    """``max_retries`` is the whole story: Ray's own retries (3 by default) are not added
    unseen (max_retries=0: the run that dies once is failed), and the reason names the
    attempts."""

    def always_dies(job: Job) -> dict:
        os.kill(os.getpid(), signal.SIGKILL)

    fn = _dies_once(str(tmp_path / "died-once")) if max_retries == 0 else always_dies
    started, recorded = [], []
    RayExecutor(workers=1, device="cpu", max_retries=max_retries).map(
        [Job("b", "run", {})],
        fn,
        on_start=lambda j: started.append(j.job_id),
        on_done=lambda j, out: recorded.append(out),
    )
    assert len(recorded) == 1 and recorded[0]["status"] == "failed"
    n = max_retries + 1
    assert started == ["b"] * n
    assert f"gave up after {n} attempt" in recorded[0]["error"], recorded[0]["error"]
    assert "WorkerCrashedError" in recorded[0]["error"]


def test_an_interrupted_map_cancels_its_tasks(tmp_path: Path, local_ray) -> None:
    """Ctrl-C in the driver: the tasks in flight stop (a Ray instance the caller started
    stays up, so nothing else would stop them)."""

    def works(job: Job) -> dict:
        (tmp_path / f"{job.job_id}.pid").write_text(str(os.getpid()))
        time.sleep(120)
        return {"status": "finished", "results": []}

    def interrupt(job: Job, out: dict) -> None:
        raise AssertionError("no job should finish")

    ex = RayExecutor(workers=1, device="cpu")
    real_wait = ray.wait

    def wait(refs, **kwargs):  # noqa: ANN001, ANN003, ANN202
        while not (tmp_path / "d.pid").exists():
            time.sleep(0.1)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray, "wait", wait)
        with pytest.raises(KeyboardInterrupt):
            ex.map([Job("d", "run", {})], works, lambda j: None, interrupt)
    pid = int((tmp_path / "d.pid").read_text())
    deadline = time.time() + 20
    while alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(pid)
    assert real_wait([ray.put(1)], num_returns=1)[0]  # Ray itself is still up


@pytest.fixture
def not_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if no Ray instance were running here; reaching ray.init fails the test."""

    def init(**kwargs) -> None:  # noqa: ANN003
        raise AssertionError(f"ray.init reached with {kwargs}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)


def test_unreachable_address_fails_fast_and_writes_nothing(tmp_path: Path, not_connected) -> None:
    from typer.testing import CliRunner

    from skiplab.cli import app

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["study", str(spec), "--executor", "ray", "--address",
                                      "127.0.0.1:1", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert time.perf_counter() - t0 < 10
    assert result.exit_code == 2, result.output
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in result.stderr
    assert "ray start --head" in result.stderr and not out.exists()


@pytest.fixture
def listener():
    """A TCP server that is not Ray: it accepts, reads, and answers ``reply`` (or nothing)."""
    servers = []

    def start(reply: bytes) -> str:
        srv = socket.create_server(("127.0.0.1", 0))
        servers.append(srv)

        def serve() -> None:
            with contextlib.suppress(OSError):
                conn, _ = srv.accept()
                servers.append(conn)
                conn.recv(1024)
                if reply:
                    conn.sendall(reply)

        threading.Thread(target=serve, daemon=True).start()
        return f"127.0.0.1:{srv.getsockname()[1]}"

    yield start
    for s in servers:
        s.close()


@pytest.mark.parametrize(
    "reply, said",
    [(b"", "sent nothing in 0.5 s"), (b"HTTP/1.1 400 Bad Request\r\n\r\n", "sent b'HTTP/1.1 '")],
)
def test_a_listener_that_is_not_ray_is_refused(listener, reply: bytes, said: str) -> None:
    # Ray's own init retries such an address for minutes (or forever); the check does not.
    address = listener(reply)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="not a Ray cluster") as err:
        check_reachable(address, timeout=0.5)
    assert time.perf_counter() - t0 < 3
    assert said in str(err.value) and "6379" in str(err.value) and address in str(err.value)


def test_a_real_ray_gcs_passes_the_handshake(local_ray) -> None:
    check_reachable(ray.get_runtime_context().gcs_address)  # raises if it were refused
    check_reachable("ray://" + ray.get_runtime_context().gcs_address)


def test_cli_refuses_a_non_ray_address_fast(tmp_path: Path, not_connected, listener) -> None:
    from typer.testing import CliRunner

    from skiplab.cli import app

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    address = listener(b"SSH-2.0-OpenSSH_9.6\r\n")
    result = CliRunner().invoke(app, ["study", str(spec), "--executor", "ray", "--address",
                                      address, "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"something listens at {address}, but it is not a Ray cluster" in result.stderr
    assert not out.exists()


def test_ray_connection_error_is_a_clear_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(**kwargs) -> None:  # noqa: ANN003
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(ValueError, match="cannot reach a Ray cluster at auto: Could not find"):
        RayExecutor(address="auto", device="cpu")


def test_bad_device_is_refused_before_connecting(not_connected) -> None:
    with pytest.raises(ValueError, match="allowed: cpu, cuda, auto"):
        RayExecutor(device="tpu")
    with pytest.raises(ValueError, match="workers"):
        RayExecutor(workers=-1, device="cpu")


def test_workers_from_the_cluster(monkeypatch: pytest.MonkeyPatch, local_ray) -> None:
    assert RayExecutor(workers=0, device="cpu").workers == 2  # local_ray has 2 CPUs
    assert RayExecutor(workers=0, device="cpu", cpus_per_run=2).workers == 1
    assert RayExecutor(workers=3, device="cpu").workers == 3
    with pytest.raises(ValueError, match="the Ray cluster has no GPUs"):
        RayExecutor(device="cuda")
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 64.0, "GPU": 4.0})
    ex = RayExecutor(device="cuda")  # a CPU-only driver may drive GPU workers
    assert ex.workers == 4 and ex._gpus_per_run() == 1.0
    assert RayExecutor(device="auto").workers == 4
    assert RayExecutor(device="cuda", workers=8)._gpus_per_run() == 0.5
