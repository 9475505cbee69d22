"""SEARCHBOX_ASYNC: SageMaker asynchronous inference's limits (1 GB bodies, an hour), JSON Lines spooled to disk and run
a slice at a time; real-time limits unchanged when it is off."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import orjson
import pytest
import requests

from container import spooled
from container.settings import ASYNC_MAX_PAYLOAD_MB, ASYNC_TIMEOUT_S, Settings
from helpers import InProcess, assert_error, cosine, serving, kib, worker_status

JSONLINES = {"Content-Type": "application/jsonlines"}
_MIB = 1024 * 1024


def settings(**env: str) -> Settings:
    return Settings.from_env({"SEARCHBOX_MODEL_DIR": "/nonexistent", **env})


# --- settings and slicing (unit) ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_async_mode_raises_the_limits_and_real_time_keeps_them():
    real_time, asynchronous = settings(), settings(SEARCHBOX_ASYNC="1")
    assert (real_time.max_payload_bytes, real_time.request_timeout_s, real_time.batch_timeout_s) == (6 * _MIB, 50, 600)
    assert asynchronous.max_payload_bytes == ASYNC_MAX_PAYLOAD_MB * _MIB == 1024 * _MIB
    assert asynchronous.request_timeout_s == asynchronous.batch_timeout_s == ASYNC_TIMEOUT_S == 3600
    assert asynchronous.max_batch_rows > real_time.max_batch_rows
    assert asynchronous.max_response_bytes > real_time.max_response_bytes
    # an operator's own value still wins
    assert settings(SEARCHBOX_ASYNC="1", SEARCHBOX_MAX_PAYLOAD_MB="100").max_payload_bytes == 100 * _MIB
    assert settings(SEARCHBOX_ASYNC="1", SEARCHBOX_REQUEST_TIMEOUT_S="900").request_timeout_s == 900
    # the handler's deadline follows
    assert asynchronous.handler_options().request_timeout_s == 3600


@pytest.mark.unit
def test_nginx_waits_as_long_as_an_async_request_may_take(tmp_path):
    from container.proxy import ProxyPaths, render_conf

    real_time = render_conf(settings(), ProxyPaths(tmp_path))
    asynchronous = render_conf(settings(SEARCHBOX_ASYNC="1"), ProxyPaths(tmp_path))
    assert f"client_max_body_size {6 * _MIB};" in real_time and "proxy_send_timeout 60s;" in real_time
    assert f"client_max_body_size {1024 * _MIB};" in asynchronous
    assert "proxy_read_timeout 3630s;" in asynchronous and "proxy_send_timeout 3630s;" in asynchronous
    # bodies past 1 MiB go to nginx's temporary files, not its memory
    assert "client_body_buffer_size 1m;" in asynchronous


@pytest.mark.unit
def test_slices_keep_every_line_and_number_them(monkeypatch):
    monkeypatch.setattr(spooled, "SLICE_LINES", 3)
    monkeypatch.setattr(spooled, "SLICE_BYTES", 40)
    lines = [b'{"text": "%d"}\n' % i for i in range(10)] + [b"x" * 100 + b"\n", b"last without newline"]
    pieces = list(spooled.slices(io.BytesIO(b"".join(lines))))
    assert b"".join(piece for _, piece in pieces) == b"".join(lines)
    number = 1
    for first, piece in pieces:
        assert first == number
        assert piece.count(b"\n") <= 3 and (len(piece) < 40 + 101 or piece.count(b"\n") == 1)
        number += piece.count(b"\n")


@pytest.mark.unit
def test_a_slice_ends_once_its_bytes_reach_the_bound_whatever_its_line_count():
    """The rule written out (module docstring: at most SLICE_LINES lines *or* SLICE_BYTES bytes, a longer line a
    slice of its own), with the shipped bounds, 1,024 lines and 8 MiB: lines of 3 MiB close a slice at the third
    (9 MiB), far below 1,024 lines; a 9 MiB line alone is a slice."""
    three = b"a" * (3 * _MIB - 1) + b"\n"
    nine = b"b" * (9 * _MIB - 1) + b"\n"
    small = b'{"text": "x"}\n'
    body = three * 4 + nine + small * 2
    got = [(first, len(piece)) for first, piece in spooled.slices(io.BytesIO(body))]
    assert got == [(1, 9 * _MIB), (4, 3 * _MIB + 9 * _MIB), (6, 2 * len(small))]
    # below the byte bound only the line count closes a slice: 1,024 lines, then the rest
    short = [b"%05d\n" % n for n in range(1030)]
    assert [(first, piece.count(b"\n")) for first, piece in spooled.slices(io.BytesIO(b"".join(short)))] == \
        [(1, 1024), (1025, 6)]


@pytest.mark.unit
def test_spooling_holds_the_limit_whatever_the_framing():
    from container.errors import PayloadTooLarge

    body = spooled.spool(io.BytesIO(b"a" * 5000), limit=5000)
    assert body.read() == b"a" * 5000
    with pytest.raises(PayloadTooLarge):
        spooled.spool(io.BytesIO(b"a" * 5001), limit=5000)


@pytest.mark.unit
def test_a_slice_closes_at_exactly_its_byte_bound_counted_from_zero_in_each_slice(monkeypatch):
    """Lines of 20, 19 and 1 bytes against a 40-byte bound: the third line brings the slice to exactly 40, which
    closes it (at most SLICE_BYTES: reaching the bound is enough), and the next slice counts from 0 again."""
    monkeypatch.setattr(spooled, "SLICE_LINES", 1000)
    monkeypatch.setattr(spooled, "SLICE_BYTES", 40)
    pattern = [b"a" * 19 + b"\n", b"b" * 18 + b"\n", b"\n"]
    got = [(first, piece) for first, piece in spooled.slices(io.BytesIO(b"".join(pattern * 2 + pattern[:1])))]
    assert got == [(1, b"".join(pattern)), (4, b"".join(pattern)), (7, pattern[0])]


class _Reads(io.BytesIO):
    """A body that records the size of every read asked of it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.asked: list = []

    def read(self, size=-1):
        self.asked.append(size)
        return super().read(size)


@pytest.mark.unit
def test_bodies_and_answers_move_in_pieces_of_one_mebibyte():
    """The module's promise that a worker holds a piece, never the whole: reads of 1 MiB (1,048,576 bytes) each."""
    body = _Reads(b"x" * (3 * _MIB + 5))
    spooled.spool(body, limit=4 * _MIB).close()
    assert body.asked and set(body.asked) == {_MIB}
    answer = _Reads(b"y" * (2 * _MIB + 7))
    assert [len(block) for block in spooled.stream_file(answer)] == [_MIB, _MIB, 7]
    assert answer.closed


@pytest.mark.unit
def test_the_limit_counts_the_whole_body_not_each_piece():
    from container.errors import PayloadTooLarge

    with pytest.raises(PayloadTooLarge):  # three pieces of 1 MiB, each under a 2 MiB + 1 limit, the body over it
        spooled.spool(io.BytesIO(b"a" * (3 * _MIB)), limit=2 * _MIB + 1)


@pytest.mark.unit
def test_a_body_whose_framing_breaks_is_a_400_naming_the_fix():
    from container.errors import BadRequest

    class Broken(io.RawIOBase):
        def read(self, size=-1):
            raise ValueError("invalid chunk size")

    with pytest.raises(BadRequest) as refused:
        spooled.spool(Broken(), limit=_MIB)
    assert refused.value.code == "MALFORMED_BODY"
    assert refused.value.detail == ("the body's framing is malformed (ValueError); send Content-Length or valid "
                                    "chunked encoding")


# --- the app (in-process, the embedded model) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def async_app():
    from model_handlers.embedded import embedded_model_dir

    with serving(embedded_model_dir(), {"SEARCHBOX_ASYNC": "1"}) as app:
        yield app, app.runtime


@pytest.mark.app
def test_spooled_answer_is_the_real_time_answer(async_app, client, monkeypatch):
    monkeypatch.setattr(spooled, "SLICE_LINES", 4)  # several slices, one answer
    lines = [orjson.dumps({"text": f"line {i} about cats"}) for i in range(9)]
    lines.insert(3, orjson.dumps({"data": [{"text": "an envelope"}, {"text": "of two"}], "parameters": {"dimensions": 8}}))
    body = b"\n".join(lines) + b"\n"
    app, _ = async_app
    spooled_answer = app.post("/invocations", data=body, headers=JSONLINES)
    in_memory = InProcess(client).post("/invocations", data=body, headers=JSONLINES)
    assert spooled_answer.status_code == in_memory.status_code == 200
    assert spooled_answer.content.count(b"\n") == in_memory.content.count(b"\n") == len(lines)
    for ours, theirs in zip(spooled_answer.content.splitlines(), in_memory.content.splitlines()):
        ours, theirs = orjson.loads(ours), orjson.loads(theirs)
        vectors = [np.array(item.pop("embedding")) for item in ours["data"]]
        expected = [np.array(item.pop("embedding")) for item in theirs["data"]]
        for item in (*ours["data"], *theirs["data"]):
            item.pop("id", None)  # made up per answer where the record gives none
        assert ours == theirs  # indexes, usage: the same (a pass of other sizes moves floats by ~1e-7 only)
        for vector, want in zip(vectors, expected):
            np.testing.assert_allclose(vector, want, atol=1e-5)
    for header in ("X-Compute-Tokens", "Content-Type"):
        assert spooled_answer.headers[header] == in_memory.headers[header]
    assert int(spooled_answer.headers["Content-Length"]) == len(spooled_answer.content)


@pytest.mark.app
def test_spooled_blank_lines_answer_null_in_place(async_app, reference_model, monkeypatch):
    """Line N out answers line N in across slices too: blank lines (one ending a slice, one starting the next, the
    body's last) answer null, the others their own text's vector."""
    monkeypatch.setattr(spooled, "SLICE_LINES", 3)
    sent = [b'"one"', b"", b'"two"', b"", b"   ", b'"three"', b""]
    app, _ = async_app
    answer = app.post("/invocations", data=b"\n".join(sent) + b"\n", headers=JSONLINES)
    assert answer.status_code == 200, answer.text
    out = [orjson.loads(line) for line in answer.content.split(b"\n")[:-1]]
    assert len(out) == len(sent)
    for line, got in zip(sent, out):
        if not line.strip():
            assert got is None
        else:
            want = reference_model.encode(orjson.loads(line), normalize_embeddings=True)
            np.testing.assert_allclose(got["data"][0]["embedding"], want, atol=1e-5)


@pytest.mark.app
def test_a_bad_line_anywhere_is_refused_before_any_work(async_app, monkeypatch):
    monkeypatch.setattr(spooled, "SLICE_LINES", 4)
    app, runtime = async_app
    lines = [orjson.dumps({"text": f"fine {i}"}) for i in range(20)] + [b'{"text": 3}']
    passes = runtime.handler.forward_passes
    answer = app.post("/invocations", data=b"\n".join(lines), headers=JSONLINES)
    assert_error(answer, 400, "INVALID_JSON_LINE", "line 21")
    assert runtime.handler.forward_passes == passes, "nothing may run for a body that is refused"


@pytest.mark.app
def test_async_lines_cap_counts_the_whole_body(monkeypatch):
    from model_handlers.embedded import embedded_model_dir

    monkeypatch.setattr(spooled, "SLICE_LINES", 2)
    with serving(embedded_model_dir(), {"SEARCHBOX_ASYNC": "1", "SEARCHBOX_MAX_BATCH_ROWS": "5"}) as app:
        assert app.post("/invocations", data=b'"a"\n' * 5, headers=JSONLINES).status_code == 200
        assert_error(app.post("/invocations", data=b'"a"\n' * 6, headers=JSONLINES), 413, "TOO_MANY_ROWS", "5")


# --- real servers --------------------------------------------------------------------------------------------------


def worker_memory_kib(server) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of the gunicorn worker."""
    (status,) = worker_status(server.process.pid).values()
    return {key: kib(status[key]) for key in ("VmRSS", "VmHWM")}


# Each line's text is far longer than the model reads (it truncates to 256 tokens), so 200 MB is a few thousand
# inputs: the body's size, not the model, is what is under test.
_LINE_WORDS = 12_000
_BODY_MB = 200
# What the worker may grow by while answering the 200 MB body: a slice (8 MiB of lines, their tokens and vectors), not
# the body or the answer. README's "Scaling" states it.
WORKER_GROWTH_BOUND_MIB = 300


def long_lines(total_bytes: int):
    """JSON lines of long, different texts adding up to `total_bytes` (the last line short of it)."""
    words = ("cats", "dogs", "rivers", "search", "engines", "vectors", "mountains", "quietly", "measure", "blue")
    rng = np.random.default_rng(0)
    sent = index = 0
    while sent < total_bytes:
        text = " ".join(words[i] for i in rng.integers(0, len(words), _LINE_WORDS))
        line = orjson.dumps({"text": f"{index} {text}"}) + b"\n"
        yield line
        sent += len(line)
        index += 1


# 200 MB takes ~7 minutes on 2 vCPUs (417 s measured: 2347 lines, worker +117 MiB): `make soak`; 20 MB in `make test`
@pytest.mark.parametrize("megabytes", [pytest.param(20, marks=pytest.mark.server),
                                       pytest.param(_BODY_MB, marks=pytest.mark.soak)])
def test_async_server_answers_a_large_json_lines_body_in_bounded_memory(server_factory, reference_model, megabytes):
    server = server_factory({"SEARCHBOX_ASYNC": "1"})
    before = worker_memory_kib(server)
    lines = list(long_lines(megabytes * 1000 * 1000))
    size = sum(map(len, lines))
    assert size >= megabytes * 1000 * 1000
    peak = {"VmRSS": 0}
    samples: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def watch() -> None:
        # a watcher that dies would leave the peak at 0 and the bound passed: its failure is the test's
        try:
            while not stop.is_set():
                samples.append(worker_memory_kib(server)["VmRSS"])
                peak["VmRSS"] = max(peak["VmRSS"], samples[-1])
                time.sleep(0.2)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread, which raises it
            failures.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        # chunked, as a client streaming a file sends it: the limit and the spooling hold however it is framed
        answer = requests.post(server.url + "/invocations", data=iter(lines), headers=JSONLINES, timeout=3600,
                               stream=True)
        out = answer.raw.read()
    finally:
        stop.set()
        watcher.join()
    took = time.monotonic() - started
    after = worker_memory_kib(server)
    assert not failures, f"the memory watcher failed: {failures[0]!r}"
    assert len(samples) >= 2 and min(samples) > 0, samples
    if after["VmHWM"] > before["VmHWM"]:
        # the kernel's own high-water mark rose during the request: it is the peak, even between two samples
        peak["VmRSS"] = max(peak["VmRSS"], after["VmHWM"])
    assert answer.status_code == 200, out[:500]
    answered = out.splitlines()
    assert len(answered) == len(lines)
    growth_mib = (peak["VmRSS"] - before["VmRSS"]) / 1024
    print(f"\n{size / 1e6:.0f} MB, {len(lines)} lines in {took:.0f} s; worker RSS {before['VmRSS'] / 1024:.0f} MiB "
          f"before, peak {peak['VmRSS'] / 1024:.0f} MiB (+{growth_mib:.0f} MiB)")
    assert growth_mib < WORKER_GROWTH_BOUND_MIB, growth_mib
    for index in (0, len(lines) // 2, len(lines) - 1):  # the right vector on the right line, first to last
        text = orjson.loads(lines[index])["text"]
        vector = orjson.loads(answered[index])["data"][0]["embedding"]
        assert cosine(np.array(vector), reference_model.encode([text])[0]) >= 0.9999


@pytest.mark.server
def test_real_time_limits_hold_when_async_is_off(server):
    body = b'{"text": "padding"}\n' * (7 * _MIB // 20)  # just over 6 MiB
    assert_error(requests.post(server.url + "/invocations", data=body, headers=JSONLINES, timeout=60), 413,
                 "PAYLOAD_TOO_LARGE")
    chunked = requests.post(server.url + "/invocations", data=iter([body[:_MIB]] * 7), headers=JSONLINES, timeout=60)
    assert_error(chunked, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.soak
def test_async_server_answers_a_ten_minute_request(server_factory):
    """A JSON Lines body sized from this machine's measured rate to take over ten minutes: past every real-time
    bound (SageMaker's 60 s, nginx's), answered whole."""
    server = server_factory({"SEARCHBOX_ASYNC": "1"})
    probe = list(long_lines(2 * _MIB))
    started = time.monotonic()
    assert requests.post(server.url + "/invocations", data=b"".join(probe), headers=JSONLINES,
                         timeout=600).status_code == 200
    per_line = (time.monotonic() - started) / len(probe)
    count = int(720 / per_line) + 1  # 12 minutes at the probed rate: over 10 even if the machine gets faster
    lines = [line for _, line in zip(range(count), _repeat(probe))]
    started = time.monotonic()
    answer = requests.post(server.url + "/invocations", data=iter(lines), headers=JSONLINES, timeout=3600)
    took = time.monotonic() - started
    print(f"\n{len(lines)} lines answered in {took:.0f} s")
    assert answer.status_code == 200, answer.text[:500]
    assert answer.content.count(b"\n") == len(lines)
    assert took > 600


def _repeat(lines):
    while True:
        yield from lines
