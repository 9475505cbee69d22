"""One worker per device: slots from the GPUs (or CPU cores) there are, /ping only while every worker is ready, a dead
worker restarted alone on its own device.

No GPU here: the server tests run two workers pinned to halves of the CPU, the same code path a multi-GPU instance
takes (a slot is a device; CPU slots are core sets)."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from container.settings import Settings, SettingsError
from container.gpus import visible_gpus
from container.workers import Slot, slots
from helpers import worker_status


def settings(**env: str) -> Settings:
    return Settings.from_env({"SEARCHBOX_MODEL_DIR": "/nonexistent", **env})


@pytest.mark.unit
def test_one_worker_per_gpu_and_one_on_cpu():
    assert slots(settings(), gpus=4, cores=(0, 1)) == [Slot(i, f"cuda:{i}") for i in range(4)]
    assert slots(settings(SEARCHBOX_DEVICE="cuda"), gpus=2, cores=(0,)) == [Slot(0, "cuda:0"), Slot(1, "cuda:1")]
    assert slots(settings(SEARCHBOX_WORKERS="2"), gpus=4, cores=(0,)) == [Slot(0, "cuda:0"), Slot(1, "cuda:1")]
    assert slots(settings(SEARCHBOX_DEVICE="cuda:3"), gpus=4, cores=(0,)) == [Slot(0, "cuda:3")]
    assert slots(settings(), gpus=0, cores=(0, 1, 2, 3)) == [Slot(0, "auto")]
    assert slots(settings(SEARCHBOX_DEVICE="cpu"), gpus=4, cores=(0, 1)) == [Slot(0, "cpu")]


@pytest.mark.unit
def test_cpu_workers_split_the_cores():
    assert slots(settings(SEARCHBOX_DEVICE="cpu", SEARCHBOX_WORKERS="3"), gpus=0, cores=(0, 1, 2, 3, 4, 5, 6)) == [
        Slot(0, "cpu", (0, 1, 2)), Slot(1, "cpu", (3, 4)), Slot(2, "cpu", (5, 6))]
    worker = Slot(1, "cpu", (3, 4)).settings(settings(SEARCHBOX_DEVICE="cpu"))
    assert (worker.device, worker.torch_threads) == ("cpu", 2)
    assert worker.handler_options().torch_threads == 2
    # an operator's thread count wins
    assert Slot(1, "cpu", (3, 4)).settings(settings(SEARCHBOX_TORCH_THREADS="1")).torch_threads == 1


@pytest.mark.unit
@pytest.mark.parametrize("env, gpus, cores, named", [
    ({"SEARCHBOX_WORKERS": "5"}, 4, (0,), "4 GPU"),
    ({"SEARCHBOX_WORKERS": "2", "SEARCHBOX_DEVICE": "cuda:1"}, 4, (0,), "SEARCHBOX_DEVICE=cuda:1"),
    ({"SEARCHBOX_WORKERS": "3", "SEARCHBOX_DEVICE": "cpu"}, 0, (0, 1), "2 core"),
])
def test_more_workers_than_devices_is_refused(env, gpus, cores, named):
    with pytest.raises(SettingsError, match="SEARCHBOX_WORKERS") as refused:
        slots(settings(**env), gpus=gpus, cores=cores)
    assert named in str(refused.value)


@pytest.mark.unit
def test_bad_worker_counts_name_the_variable():
    for raw in ("0", "many", "65"):
        with pytest.raises(SettingsError, match="SEARCHBOX_WORKERS"):
            settings(SEARCHBOX_WORKERS=raw)
    assert settings(SEARCHBOX_WORKERS="auto").workers is None


@pytest.mark.unit
def test_visible_gpus_without_torch(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia3"):
        (tmp_path / name).touch()
    assert visible_gpus({}, dev=tmp_path) == 3
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}, dev=tmp_path) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, dev=tmp_path) == 0
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}, dev=tmp_path) == 1  # CUDA stops at an invalid entry


@pytest.mark.unit
@pytest.mark.parametrize("device, gpus, expected", [
    ("auto", 0, False), ("auto", 2, True), ("cpu", 2, False), ("cuda", 1, True), ("cuda:1", 2, True)])
def test_one_gpu_rule_for_the_workers_and_the_job_settings(device, gpus, expected):
    """`serve` places its workers and `GET /execution-parameters` sizes a batch job by the same judgement."""
    current = settings(SEARCHBOX_DEVICE=device)
    assert current.expects_gpu(gpus) is expected
    assert any(slot.device.startswith("cuda") for slot in slots(current, gpus=gpus, cores=(0,))) is expected


@pytest.mark.unit
def test_the_gpus_counted_are_the_ones_cuda_would_show(monkeypatch):
    """GPUs that CUDA_VISIBLE_DEVICES hides are none for the job settings either, as for the workers."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert settings().expects_gpu() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert settings().expects_gpu() is True
    assert settings(SEARCHBOX_DEVICE="cpu").expects_gpu() is False


@pytest.mark.unit
def test_ping_needs_every_workers_ready_file(tmp_path):
    from container.proxy import ProxyPaths, inference_connections, render_conf

    paths = ProxyPaths(tmp_path, workers=3)
    conf = render_conf(settings(), paths)
    for ready in paths.ready_files:
        assert f"if (!-f {ready})" in conf
    assert len(set(paths.ready_files)) == 3
    assert f"max_conns={3 * inference_connections(settings())};" in conf
    assert render_conf(settings(), ProxyPaths(tmp_path)).count("if (!-f ") == 1


# --- a real server with two workers ------------------------------------------------------------------------------


def workers_of(server) -> dict[int, str]:
    """The gunicorn workers: pid -> the cores it may run on."""
    return {pid: status["Cpus_allowed_list"] for pid, status in worker_status(server.process.pid).items()}


def scraped(server) -> dict[tuple[str, tuple], float]:
    """/metrics as one worker answers it: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = requests.get(server.url + "/metrics", timeout=30)
    assert answer.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def answered(route: str, status: int) -> tuple[str, tuple]:
    return "searchbox_requests_total", (("route", route), ("status", str(status)))


def embeddings_answered_by(server) -> list[str]:
    """The pid of the worker that logged each /v1/embeddings answer (the request log, in the order written)."""
    return re.findall(r'\[(\d+)\] \[INFO\] searchbox\.requests: \{"request_id":"\w+","route":"/v1/embeddings"',
                      server.log())


def wait_for(condition, timeout: float = 120, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s")


@pytest.mark.server
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two workers pinned to cores of their own need 2 cores")
def test_two_pinned_workers_answer_and_restart_one_at_a_time(server_factory, reference_model):
    from helpers import cosine

    server = server_factory({"SEARCHBOX_DEVICE": "cpu", "SEARCHBOX_WORKERS": "2"})
    workers = wait_for(lambda: (found := workers_of(server)) and len(found) == 2 and found)
    cores = sorted(workers.values())
    assert len(set(cores)) == 2, f"each worker on its own cores: {workers}"
    texts = [f"text number {i} about rivers" for i in range(24)]

    def embed(text: str):
        answer = requests.post(server.url + "/v1/embeddings", json={"input": [text]}, timeout=60)
        return answer.status_code, answer.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(embed, texts))
    assert all(status == 200 for status, _ in answers)
    for text, (_, body) in zip(texts, answers):
        assert cosine(body["data"][0]["embedding"], reference_model.encode([text])[0]) >= 0.9999
    log = server.log()
    assert "slot 0 on cpu" in log and "slot 1 on cpu" in log

    # /metrics counts what every worker answered, and each answer nginx made once, whichever worker is asked
    refused = requests.post(server.url + "/invocations", data=b"x", headers={"Transfer-Encoding": "gzip"}, timeout=30)
    assert refused.status_code == 501
    pids = wait_for(lambda: len(found := embeddings_answered_by(server)) >= len(texts) and found, timeout=30)
    assert len(pids) == len(texts) and set(pids) == set(map(str, workers)), "both workers answered some"
    for _ in range(8):
        figures = scraped(server)
        assert figures[answered("/v1/embeddings", 200)] == len(texts)
        assert figures[answered("/invocations", 501)] == 1
        assert figures[("searchbox_request_duration_seconds_count", (("route", "/v1/embeddings"),))] == len(texts)
        assert figures[("searchbox_inputs_total", (("route", "/v1/embeddings"),))] == len(texts)
    # gauges: each worker writes its own every second; the sum of queues, ready only when both are
    wait_for(lambda: (figures := scraped(server))[("searchbox_ready", ())] == 1
             and figures[("searchbox_queue_depth", ())] == 0, timeout=10)

    # SIGKILL one (as the OOM killer does): /ping says 503 until it is back; the other serves throughout
    victim, survivor = sorted(workers)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: requests.get(server.url + "/ping", timeout=5).status_code == 503, timeout=10, every=0.01)
    served_meanwhile = requests.post(server.url + "/v1/embeddings", json={"input": ["still here"]}, timeout=60)
    assert served_meanwhile.status_code in (200, 503)  # the survivor answers, or nginx says to retry: never lost
    wait_for(lambda: requests.get(server.url + "/ping", timeout=5).status_code == 200)
    after = workers_of(server)
    assert survivor in after and after[survivor] == workers[survivor], "the other worker was not touched"
    replacement = next(pid for pid in after if pid != survivor)
    assert replacement != victim and after[replacement] == workers[victim], "the new worker took the freed cores"
    with ThreadPoolExecutor(4) as pool:
        assert all(status == 200 for status, _ in pool.map(embed, texts[:8]))
    # the killed worker's answers stay counted; readiness is the new worker's too
    expected = len(texts) + (served_meanwhile.status_code == 200) + 8
    for _ in range(4):
        assert scraped(server)[answered("/v1/embeddings", 200)] == expected
    wait_for(lambda: scraped(server)[("searchbox_ready", ())] == 1, timeout=10)
