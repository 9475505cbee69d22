"""Tests written against the mutants `make mutation` left alive in the core modules (README: Mutation testing).

Each asserts values from an independent reference: sentence-transformers' own modules on the same weights, numpy's
arithmetic written out here, Python's struct and base64, or the arithmetic of the rule stated in the module's
docstring.
"""

from __future__ import annotations

import base64
import math
import struct

import numpy as np
import pytest
from numpy.testing import assert_allclose

from container.encodings import EmbeddingType, Encoding, encode, schema, vector_bytes
from model_handlers.errors import InvalidOption, ModelDirectoryError, TooLarge
from model_handlers.metering import Metering, parse_metering
from model_handlers.operations.embed import check_dimensions, finish
from model_handlers.ranking import (RerankWork, Scoring, Windowing, best_per_document, check_window_count, maxsim,
                                    rank, window_scores, windowed)
from model_handlers.operations.sparse import SparseOptions
from model_handlers.types import EmbedRequest, TextInput

RNG = np.random.default_rng(22)


# --- model_handlers/metering.py ---------------------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize(("inputs", "tokens", "per", "expected"), [
    (3, 0, 1000, 1), (3, 1, 1000, 1), (3, 1000, 1000, 1), (3, 1001, 1000, 2), (3, 2999, 1000, 3), (0, 7, 1, 7)])
def test_token_units_are_usage_over_the_unit_rounded_up_per_request_at_least_one(inputs, tokens, per, expected):
    assert Metering("tokens", per).units(inputs=inputs, tokens=tokens) == expected


@pytest.mark.unit
def test_request_and_input_units():
    assert Metering("request").units(inputs=5, tokens=900) == 1
    assert Metering("input").units(inputs=5, tokens=900) == 5
    assert Metering("input").units(inputs=1, tokens=900) == 1
    assert Metering("input").units(inputs=0, tokens=0) == 1  # AWS counts every 2xx at least once


@pytest.mark.unit
def test_a_unit_described_in_a_buyers_words():
    assert Metering("request").describe() == "one request"
    assert Metering("input").describe() == "one input (a text or image to embed, or a document to rerank)"
    assert Metering("tokens", 1000).describe() == "1,000 tokens of usage, rounded up per request"


@pytest.mark.unit
def test_parse_metering_reads_each_valid_form():
    assert parse_metering(None, "x") is None
    assert parse_metering({"unit": "request"}, "x") == Metering("request", 1)
    assert parse_metering({"unit": "input"}, "x") == Metering("input", 1)
    assert parse_metering({"unit": "tokens"}, "x") == Metering("tokens", 1)
    assert parse_metering({"unit": "tokens", "tokens_per_unit": 1000}, "x") == Metering("tokens", 1000)
    assert parse_metering({"unit": "input", "tokens_per_unit": 1}, "x") == Metering("input", 1)


@pytest.mark.unit
@pytest.mark.parametrize(("value", "says"), [
    ({"unit": "hour"}, "metering must be"), ("tokens", "metering must be"), ({}, "metering must be"),
    ({"unit": "tokens", "per": 2}, "metering must be"),
    ({"unit": "tokens", "tokens_per_unit": 0}, "tokens_per_unit must be a positive integer"),
    ({"unit": "tokens", "tokens_per_unit": True}, "tokens_per_unit must be a positive integer"),
    ({"unit": "tokens", "tokens_per_unit": 2.0}, "tokens_per_unit must be a positive integer"),
    ({"unit": "input", "tokens_per_unit": 1000}, "only with unit tokens"),
])
def test_parse_metering_refuses_naming_the_file_and_the_value(value, says):
    with pytest.raises(ModelDirectoryError) as raised:
        parse_metering(value, "m/searchbox.json")
    message = str(raised.value)
    assert message.startswith("m/searchbox.json: metering") and says in message
    if says == "metering must be":
        assert message.endswith('{"unit": one of request, input, tokens[, "tokens_per_unit": N]}, not ' + repr(value))
    else:
        assert message.endswith(f"and only with unit tokens, not {value['tokens_per_unit']!r}")


# --- model_handlers/operations/embed.py --------------------------------------------------------------------------

@pytest.mark.unit
def test_finish_cuts_then_normalises_each_row_as_numpy_says():
    vector = RNG.normal(size=(3, 8)).astype(np.float32) * 5
    whole = finish(vector, EmbedRequest(inputs=(), normalized=False))
    assert whole.dtype == np.float32 and whole.flags.c_contiguous
    assert_allclose(whole, vector)
    cut = finish(vector, EmbedRequest(inputs=(), dimensions=3, normalized=False))
    assert_allclose(cut, vector[:, :3])
    unit = finish(vector, EmbedRequest(inputs=(), dimensions=3))
    by_hand = vector[:, :3] / np.sqrt((vector[:, :3] ** 2).sum(axis=1))[:, None]
    assert_allclose(unit, by_hand, rtol=1e-6)
    # a zero vector stays zero (no division by zero), and a tiny one is still scaled to unit length
    assert_allclose(finish(np.zeros(4), EmbedRequest(inputs=())), np.zeros(4))
    assert_allclose(finish(np.full(4, 1e-8), EmbedRequest(inputs=())), np.full(4, 0.5), rtol=1e-6)
    # below a norm of 1e-12 the divisor is held at 1e-12 (a vector of zeros and rounding noise is not blown up)
    assert_allclose(finish(np.full(4, 1e-13), EmbedRequest(inputs=())), np.full(4, 0.1), rtol=1e-5)
    assert_allclose(finish(np.full(4, 1e-3), EmbedRequest(inputs=())), np.full(4, 0.5), rtol=1e-6)


@pytest.mark.unit
def test_check_dimensions_admits_one_to_the_width_only():
    check_dimensions(1, 384, "m")
    check_dimensions(384, 384, "m")
    check_dimensions(None, 384, "m")
    check_dimensions(999, None, "m")
    for bad in (0, 385, -1):
        with pytest.raises(InvalidOption) as raised:
            check_dimensions(bad, 384, "m")
        assert raised.value.code == "INVALID_DIMENSIONS"
        assert str(raised.value) == f"dimensions must be between 1 and 384 for model m, got {bad}"


@pytest.mark.app
@pytest.mark.parametrize("dimensions", [None, 64])
def test_unnormalised_vectors_are_sentence_transformers_pooled_values(app, reference_model, dimensions):
    """`normalized: false` answers the pooled vector itself (values, not only its direction): sentence-transformers'
    Transformer and Pooling modules on the same weights, without its Normalize module."""
    from sentence_transformers import SentenceTransformer

    pooled = SentenceTransformer(modules=[reference_model[0], reference_model[1]], device="cpu")
    texts = ["a short one", "mutation testing measures whether a test suite notices a change in the code"]
    body = {"input": texts, "normalized": False, **({"dimensions": dimensions} if dimensions else {})}
    said = app.post("/v1/embeddings", body)
    assert said.status_code == 200, said.text
    got = np.asarray([row["embedding"] for row in said.json()["data"]])
    expected = pooled.encode(texts, convert_to_numpy=True)[:, :dimensions]
    assert got.shape == expected.shape
    assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# --- container/encodings.py --------------------------------------------------------------------------------------

def _sign_bytes(row) -> list[int]:
    """Sign bits packed MSB-first, written out with Python ints (contract §2c), independent of np.packbits."""
    bits = [1 if value > 0 else 0 for value in row] + [0] * (-len(row) % 8)
    return [sum(bit << (7 - j) for j, bit in enumerate(bits[i:i + 8])) for i in range(0, len(bits), 8)]


@pytest.mark.unit
def test_each_encoding_against_struct_and_hand_packed_bits():
    vector = np.array([0.5, -1.0, 0.0, 2.0, -0.25, 3.0, 1e-9, -2.0, 7.0, -7.0], dtype=np.float64)
    assert_allclose(encode(vector, EmbeddingType.FLOAT), vector.astype(np.float32))
    assert encode(vector, EmbeddingType.FLOAT).dtype == np.float32
    assert base64.b64decode(encode(vector, EmbeddingType.BASE64)) == struct.pack("<10f", *vector)
    packed = _sign_bytes(vector)
    assert packed == [0b10010110, 0b10000000]
    assert encode(vector, EmbeddingType.UBINARY).tolist() == packed
    assert encode(vector, EmbeddingType.BINARY).tolist() == [byte - 128 for byte in packed]
    assert encode(vector, EmbeddingType.BINARY).dtype == np.int8


@pytest.mark.unit
def test_a_matrix_is_encoded_row_by_row():
    matrix = RNG.normal(size=(3, 9)).astype(np.float32)
    assert encode(matrix, EmbeddingType.BASE64) == [base64.b64encode(struct.pack("<9f", *row)).decode()
                                                    for row in matrix]
    assert encode(matrix, EmbeddingType.UBINARY).tolist() == [_sign_bytes(row) for row in matrix]
    assert encode(matrix, EmbeddingType.BINARY).tolist() == [[b - 128 for b in _sign_bytes(row)] for row in matrix]


@pytest.mark.unit
def test_render_answers_one_value_or_a_dict_keyed_by_type():
    vector = np.array([1.0, -1.0], dtype=np.float32)
    assert_allclose(Encoding().render(vector), vector)
    assert Encoding((EmbeddingType.UBINARY,)).render(vector).tolist() == [128]
    keyed = Encoding((EmbeddingType.BINARY, EmbeddingType.BASE64), keyed=True).render(vector)
    assert list(keyed) == ["binary", "base64"]
    assert keyed["binary"].tolist() == [0] and keyed["base64"] == base64.b64encode(struct.pack("<2f", 1, -1)).decode()


@pytest.mark.unit
@pytest.mark.parametrize("dims", [1, 7, 8, 9, 384, 1024])
def test_vector_bytes_bounds_what_orjson_writes(dims):
    import orjson

    worst = np.full(dims, -1.2345678e-06, dtype=np.float32)  # orjson: "-0.0000012345678", the longest float32
    for types in [(EmbeddingType.FLOAT,), (EmbeddingType.BASE64,), (EmbeddingType.BINARY,), (EmbeddingType.UBINARY,),
                  tuple(EmbeddingType)]:
        encoding = Encoding(types, keyed=len(types) > 1)
        rendered = len(orjson.dumps([encoding.render(worst)], option=orjson.OPT_SERIALIZE_NUMPY))
        assert rendered <= vector_bytes(dims, encoding) + 2 + 12 * len(types)
    assert vector_bytes(dims, None) == 4 + 17 * dims
    assert vector_bytes(dims, Encoding((EmbeddingType.BASE64,))) == 4 + 4 * math.ceil(4 * dims / 3) + 2
    assert vector_bytes(dims, Encoding((EmbeddingType.BINARY,))) == 4 + 5 * math.ceil(dims / 8)
    assert vector_bytes(dims, Encoding((EmbeddingType.UBINARY,))) == 4 + 5 * math.ceil(dims / 8)
    assert vector_bytes(dims, Encoding(tuple(EmbeddingType), keyed=True)) == (
        4 + 17 * dims + 4 * math.ceil(4 * dims / 3) + 2 + 2 * 5 * math.ceil(dims / 8))


@pytest.mark.unit
def test_schema_validates_every_encoding_and_refuses_the_rest():
    from jsonschema import Draft202012Validator

    vector = RNG.normal(size=10).astype(np.float32)
    matrix = RNG.normal(size=(2, 10)).astype(np.float32)
    keyed = Encoding(tuple(EmbeddingType), keyed=True)
    for matrix_form, value in ((False, vector), (True, matrix)):
        validator = Draft202012Validator(schema(matrix=matrix_form))
        for type_ in EmbeddingType:
            assert validator.is_valid(np.asarray(encode(value, type_)).tolist() if type_ is not EmbeddingType.BASE64
                                      else encode(value, type_))
        rendered = keyed.render(value)
        assert validator.is_valid({k: v if isinstance(v, (str, list)) else v.tolist() for k, v in rendered.items()})
        assert not validator.is_valid({})
        assert not validator.is_valid({"float": [1.0], "other": [1]})
    single = Draft202012Validator(schema())
    assert not single.is_valid([300]) or not single.is_valid(["x"])
    assert not single.is_valid({"binary": [200]}) and not single.is_valid({"ubinary": [-1]})
    assert not single.is_valid({"binary": [-129]}) and not single.is_valid({"ubinary": [256]})
    assert not single.is_valid({"binary": [128]}) and not single.is_valid({"ubinary": [-1]})  # int8 and uint8 bounds
    assert single.is_valid({"binary": [-128, 127]}) and single.is_valid({"ubinary": [0, 255]})
    assert not Draft202012Validator(schema(matrix=True)).is_valid([1.0, 2.0])
    # what /openapi.json tells a client of each encoding (contract §2c)
    assert [row.get("description") for row in schema()["anyOf"][:4]] == [
        None, "little-endian float32 bytes", "sign bits packed MSB-first, minus 128", "sign bits packed MSB-first"]
    assert schema()["anyOf"][1]["contentEncoding"] == "base64"


# --- model_handlers/ranking.py -----------------------------------------------------------------------------------

class _Windows:
    def __init__(self, tokens, overlap):
        self.rerank_window_tokens = tokens
        self.rerank_window_overlap = overlap


@pytest.mark.unit
@pytest.mark.parametrize(("room", "tokens", "overlap", "expected"), [
    (100, None, None, (100, 25)), (100, 40, None, (40, 10)), (100, 400, None, (100, 25)), (100, 40, 30, (40, 20)),
    (100, 40, 5, (40, 5)), (100, 40, 0, (40, 0)), (0, None, None, (1, 0)), (3, None, None, (3, 0)),
    (8, None, None, (8, 2)), (7, 7, 3, (7, 3)), (7, 7, 4, (7, 3))])
def test_windowing_within_the_room(room, tokens, overlap, expected):
    windows = Windowing.within(room, _Windows(tokens, overlap))
    assert (windows.size, windows.overlap) == expected


@pytest.mark.unit
@pytest.mark.parametrize(("length", "size", "overlap"), [(5, 5, 1), (4, 5, 1), (6, 5, 1), (23, 5, 2), (20, 5, 0),
                                                          (11, 4, 2)])
def test_windows_cover_the_document_with_the_overlap_and_end_at_its_end(length, size, overlap):
    content = np.arange(length)
    windows = Windowing(size, overlap).split(content)
    if length <= size:
        assert [w.tolist() for w in windows] == [content.tolist()]
        return
    stride = size - overlap
    expected_starts = list(range(0, length - size, stride)) + [length - size]
    assert [w.tolist() for w in windows] == [list(range(s, s + size)) for s in expected_starts]
    assert windows[-1][-1] == length - 1 and windows[0][0] == 0


@pytest.mark.unit
def test_windowed_work_keeps_the_query_then_each_documents_pieces_in_order():
    documents = ["ab", "cde", "f"]
    work = windowed(Scoring.COSINE, ["q"], 7, documents, lambda i, d: (list(d), 10 * (i + 1) + len(d)), 6)
    assert list(work.items) == ["q", "a", "b", "c", "d", "e", "f"]
    assert list(work.owners) == [None, 0, 0, 1, 1, 1, 2]
    assert work.scoring is Scoring.COSINE and work.query_tokens == 7 and list(work.document_tokens) == [12, 23, 31]
    with pytest.raises(TooLarge):
        windowed(Scoring.COSINE, ["q"], 7, documents, lambda i, d: (list(d), 1), 5)
    seen = []
    with pytest.raises(TooLarge):  # refused at once: the documents after the cap is passed are not prepared
        windowed(Scoring.PAIR, [], 0, documents, lambda i, d: (seen.append(i) or list(d), 1), 4)
    assert seen == [0, 1]


@pytest.mark.unit
def test_window_count_cap_and_its_message():
    check_window_count(5, 5)
    with pytest.raises(TooLarge) as raised:
        check_window_count(6, 5)
    assert str(raised.value) == ("the documents make more than 5 windows of model input (a long document is read in "
                                 "windows); send fewer or shorter documents per request, at most 5 windows")


def _cos(a, b):
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


@pytest.mark.unit
def test_window_scores_for_each_scoring_by_hand():
    q, w1, w2 = RNG.normal(size=6), RNG.normal(size=6) * 3, RNG.normal(size=6) * 0.1
    cosine = RerankWork(items=[0, 1, 2, 3], owners=[0, None, 1, 0], scoring=Scoring.COSINE, query_tokens=0,
                        document_tokens=[0, 0])
    # an output of shape (1, d) is the same vector as one of shape (d,)
    assert_allclose(window_scores(cosine, [w1[None, :], q, w2, w2 * 4]), [_cos(q, w1), _cos(q, w2), _cos(q, w2)],
                    rtol=1e-9)
    dot = RerankWork(items=[0, 1, 2], owners=[0, None, 1], scoring=Scoring.DOT, query_tokens=0, document_tokens=[0, 0])
    assert_allclose(window_scores(dot, [w1, q, w2]), [float(w1 @ q), float(w2 @ q)], rtol=1e-9)
    pair = RerankWork(items=[0, 1], owners=[0, 1], scoring=Scoring.PAIR, query_tokens=0, document_tokens=[0, 0])
    assert window_scores(pair, [np.array([[0.25]]), np.array([-1.5])]) == [0.25, -1.5]
    # token vectors shorter than 1 (as a model's often are) are scaled up to unit length, not only longer ones cut
    qm, d1, d2 = RNG.normal(size=(3, 4)) * 0.05, RNG.normal(size=(5, 4)) * 2, RNG.normal(size=(2, 4)) * 0.01
    late = RerankWork(items=[0, 1, 2], owners=[0, None, 1], scoring=Scoring.MAXSIM, query_tokens=0,
                      document_tokens=[0, 0])
    expected = [sum(max(_cos(row, token) for token in doc) for row in qm) for doc in (d1, d2)]
    assert_allclose(window_scores(late, [d1, qm, d2]), expected, rtol=1e-5)


@pytest.mark.unit
def test_maxsim_of_empty_sides_is_zero_and_otherwise_the_sum_of_best_dots():
    assert maxsim(np.zeros((0, 4)), np.ones((2, 4))) == 0.0
    assert maxsim(np.ones((2, 4)), np.zeros((0, 4))) == 0.0
    query, window = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.6, 0.8], [1.0, 0.0], [-1.0, 0.0]])
    assert maxsim(query, window) == pytest.approx(1.0 + 0.8)


@pytest.mark.unit
def test_a_document_keeps_its_best_window():
    work = RerankWork(items=list(range(6)), owners=[0, 0, 1, 2, 2, 2], scoring=Scoring.PAIR, query_tokens=0,
                      document_tokens=[0, 0, 0, 0])
    outputs = [np.array([s]) for s in (-3.0, -2.0, 0.5, -1.0, 4.0, 2.0)]
    assert best_per_document(work, outputs, 4) == [-2.0, 0.5, 4.0, float("-inf")]


@pytest.mark.unit
def test_rank_sorts_highest_first_ties_in_input_order_cut_to_top_n():
    scores, tokens = [0.1, 0.9, 0.5, 0.9, -1.0], [1, 2, 3, 4, 5]
    full = rank(scores, tokens, None)
    assert [(h.index, h.relevance_score, h.tokens) for h in full] == [
        (1, 0.9, 2), (3, 0.9, 4), (2, 0.5, 3), (0, 0.1, 1), (4, -1.0, 5)]
    assert [h.index for h in rank(scores, tokens, 2)] == [1, 3]
    assert [h.index for h in rank(scores, tokens, 9)] == [1, 3, 2, 0, 4]
    assert rank(scores, tokens, 0) == [] and rank(scores, tokens, -1) == []
    assert all(type(h.relevance_score) is float and type(h.tokens) is int
               for h in rank(np.array(scores, dtype=np.float32), np.array(tokens), None))


@pytest.mark.unit
def test_text_inputs_types_used_here_exist():
    assert EmbedRequest(inputs=(TextInput("x"),)).normalized is True


# --- model_handlers/pipeline.py ----------------------------------------------------------------------------------

PROMPTS = {"query": "query: ", "document": "passage: "}
SERVED_NAME = "minilm-with-prompts"


class _Passes:
    """A BatchObserver that keeps what it is told (the server's is telemetry's metrics)."""

    def __init__(self):
        self.passes, self.waits = [], []

    def pass_ran(self, items, padded_tokens, seconds):
        self.passes.append(items)

    def waited(self, seconds):
        self.waits.append(seconds)


@pytest.fixture(scope="module")
def small_passes(minilm_dir, tmp_path_factory):
    """The embedded model with retrieval prompts behind a pipeline of at most 2 inputs per pass, an observer, and the
    operator's default input type `query`."""
    import json
    import shutil
    import threading

    from model_handlers import load_handler
    from model_handlers.options import HandlerOptions

    model_dir = tmp_path_factory.mktemp("prompted") / "minilm"
    shutil.copytree(minilm_dir, model_dir)
    (model_dir / "searchbox.json").write_text(json.dumps({"tasks": {"retrieval.query": PROMPTS["query"],
                                                                    "retrieval.passage": PROMPTS["document"]},
                                                          "served_model_name": SERVED_NAME}))
    before = {thread.ident for thread in threading.enumerate()}
    observer = _Passes()
    pipeline = load_handler(model_dir, HandlerOptions(max_batch_items=2, observer=observer,
                                                      default_input_type="query"))
    threads = [thread for thread in threading.enumerate() if thread.ident not in before]
    yield pipeline, observer, threads
    pipeline.close()


@pytest.mark.app
def test_the_pipeline_passes_the_options_to_its_batcher(small_passes, reference_model):
    pipeline, observer, threads = small_passes
    assert pipeline.dimensions == reference_model.get_embedding_dimension()
    assert pipeline.max_length == reference_model.max_seq_length
    assert pipeline.default_input_type == "query"
    assert pipeline.model_name == SERVED_NAME
    assert any(thread.name.startswith(f"{pipeline.kind.name}-batcher") for thread in threads)
    from model_handlers.batching import Timing

    texts = tuple(TextInput(f"text number {i}") for i in range(5))
    before, seen, timing = pipeline.forward_passes, len(observer.passes), Timing()
    result = pipeline.run(EmbedRequest(inputs=texts), timing=timing)
    assert pipeline.forward_passes - before == 3  # 5 inputs, 2 per pass
    assert sorted(observer.passes[seen:]) == [1, 2, 2] and observer.waits  # passes may end in any order on lanes
    assert timing.forward_s > 0  # the caller's timing is the one the batcher fills
    assert pipeline.queue_depth == 0
    assert pipeline.answer_rows(EmbedRequest(inputs=texts)) == 5
    assert result.model == SERVED_NAME
    # no input_type given: the operator's default (query) selects the query prompt, as sentence-transformers adds it
    queries = reference_model.encode([PROMPTS["query"] + t.text for t in texts])
    assert_allclose(np.stack(result.vectors), queries, atol=1e-5)
    documents = pipeline.run(EmbedRequest(inputs=texts[:1], input_type="document")).vectors[0]
    assert_allclose(documents, reference_model.encode(PROMPTS["document"] + texts[0].text), atol=1e-5)
    with pytest.raises(InvalidOption) as raised:
        pipeline.run(EmbedRequest(inputs=texts[:1], dimensions=pipeline.dimensions + 1))
    assert str(raised.value) == (f"dimensions must be between 1 and {pipeline.dimensions} for model "
                                 f"{pipeline.model_name}, got {pipeline.dimensions + 1}")


@pytest.mark.app
def test_a_pipeline_refuses_adapters_it_does_not_hold_and_operations_its_kind_does_not_answer(runtime, small_passes,
                                                                                               monkeypatch):
    from model_handlers.deadline import Deadline

    pipeline = runtime.handler
    # the embedded model is a transformers model: it holds an adapter set (model_handlers/adapters.py), empty here,
    # which refuses a name it does not hold, naming those there are
    assert pipeline.adapters is not None and pipeline.adapters.names == ()
    with pytest.raises(InvalidOption) as raised:
        pipeline.run_items([], Deadline.after(10), adapters=("nope",))
    assert raised.value.code == "UNKNOWN_ADAPTER"
    assert str(raised.value) == "no adapter 'nope' is loaded on this endpoint; adapters: none"
    # a model that can hold none (ONNX, a directory's own code without peft: adapters.attach answers None)
    prompted, _, _ = small_passes
    monkeypatch.setattr(prompted.model, "adapters", None)
    assert prompted.adapters is None
    with pytest.raises(InvalidOption) as raised:
        prompted.run_items([], Deadline.after(10), adapters=("a", "b"))
    assert raised.value.code == "UNKNOWN_ADAPTER"
    assert str(raised.value) == f"model {SERVED_NAME} holds no LoRA adapters (adapters: a, b)"
    assert prompted.run_items([], Deadline.after(10)) == [] and pipeline.run_items([], Deadline.after(10)) == []
    with pytest.raises(AssertionError) as raised:
        pipeline.run(EmbedRequest(inputs=(TextInput("q"),), operation="multi-vector"))
    assert str(raised.value) == (f"kind {pipeline.kind.name} does not answer multi-vector: the server refuses such "
                                 "requests before they run (container/engine.py); this is a bug")


class _Work:
    """What `Pipeline.execute` runs: work items and the adapters they hold."""

    def __init__(self, items, adapters=()):
        self.items, self.adapters = items, adapters


@pytest.mark.app
def test_execute_admits_then_prepares_then_runs_and_counts_the_outputs(small_passes, monkeypatch):
    """The one run template: admission before any preparing, the prepared items run (a packed late-chunking item
    answers several inputs, flattened in input order), the adapters they name held, and the output count checked
    against what the operation expects (one per item when it says nothing)."""
    from model_handlers.batching import Timing
    from model_handlers.deadline import Deadline
    from model_handlers.errors import Overloaded

    pipeline, _, _ = small_passes
    texts = (TextInput("one"), TextInput("two words"), TextInput("three words here"))
    plain = EmbedRequest(inputs=texts, operation="embed")
    prepared = pipeline.model.prepare_embed(plain)
    timing = Timing()
    work, outputs = pipeline.execute(lambda: prepared, Deadline.after(30), timing, 3)
    assert work is prepared and len(outputs) == 3
    assert timing.forward_s > 0  # the caller's timing is the one the batcher fills in
    for output, text in zip(outputs, texts):
        alone = pipeline.run_items(pipeline.model.prepare_embed(EmbedRequest(inputs=(text,), operation="embed")).items,
                                   Deadline.after(30))
        assert_allclose(output, alone[0][0], atol=1e-5)
    packed = pipeline.model.prepare_embed(EmbedRequest(inputs=texts, late_chunking=True, operation="embed"))
    assert len(packed.items) == 1
    _, outputs = pipeline.execute(lambda: packed, Deadline.after(30), None, 3)
    assert len(outputs) == 3 and all(output.shape == (pipeline.dimensions,) for output in outputs)
    # one output per item when the operation expects nothing else
    assert len(pipeline.execute(lambda: prepared, Deadline.after(30), None)[1]) == 3
    with pytest.raises(AssertionError) as raised:
        pipeline.execute(lambda: packed, Deadline.after(30), None)
    assert str(raised.value) == "the model answered 3 outputs for 1; this is a bug"
    with pytest.raises(AssertionError):
        pipeline.execute(lambda: prepared, Deadline.after(30), None, 2)
    # the adapters the work names are held while it runs: a model that holds none refuses them
    monkeypatch.setattr(pipeline.model, "adapters", None)
    with pytest.raises(InvalidOption) as raised:
        pipeline.execute(lambda: _Work(prepared.items, ("a1",)), Deadline.after(30), None, 3)
    assert raised.value.code == "UNKNOWN_ADAPTER"
    # admission first: work that could not finish in time is refused before anything is prepared
    prepares = []
    monkeypatch.setattr(pipeline._batcher, "admit", lambda deadline: (_ for _ in ()).throw(Overloaded("busy")))
    with pytest.raises(Overloaded):
        pipeline.execute(lambda: prepares.append(1) or prepared, Deadline.after(30), None, 3)
    assert prepares == []


@pytest.mark.unit
def test_a_kind_answers_the_operations_whose_protocols_its_model_class_implements():
    """`answered_by`: each protocol's members, its bases' included, all on the class; single vectors from an embedder
    that no other form of embeddings describes, or whose one pass makes several forms."""
    from model_handlers import operations
    from model_handlers.operations.embed import makes_single_vectors

    class Embeds:
        def prepare_embed(self, request): ...

    class Tokens(Embeds):
        def vector_count(self, request): ...

    class Sparse(Embeds):
        def token_strings(self, indices): ...

    class OnePass(Tokens, Sparse):
        def forms_of_one_pass(self): ...

    class Classifies(Embeds):
        def classification_scale(self): ...

        def text_tokenizer(self): ...

    class Ranks:
        rerank_scoring = "how it scores"

        def prepare_rerank(self, request, max_windows): ...

    assert operations.answered_by(Embeds) == {"embed"}
    assert operations.answered_by(Tokens) == {"multi-vector"}
    assert operations.answered_by(Sparse) == {"sparse"}
    assert operations.answered_by(OnePass) == {"embed", "multi-vector", "sparse"}
    # a model that classifies zero-shot also trains few-shot classifiers (the same embeddings)
    assert operations.answered_by(Classifies) == {"embed", "classify", "tokenize", "segment", "train"}
    assert operations.answered_by(Ranks) == {"rerank"}
    assert operations.answered_by(object) == frozenset()
    assert not makes_single_vectors(Ranks) and makes_single_vectors(OnePass) and not makes_single_vectors(Sparse)
    # a protocol's members are its own and its bases' (TokenEmbedder extends Embedder)
    from model_handlers.operations.multi_vector import TokenEmbedder

    class CountsOnly:
        def vector_count(self, request): ...

    assert not operations.implements(CountsOnly, TokenEmbedder) and operations.implements(Tokens, TokenEmbedder)
    assert [spec.name for spec in operations.beside()] == ["sparse", "multi-vector"]


@pytest.mark.unit
def test_the_embed_summary_the_artifact_check_prints():
    from model_handlers.operations import embed
    from model_handlers.types import EmbedResult

    request = EmbedRequest(inputs=(TextInput("a"), TextInput("b")))
    result = EmbedResult(vectors=[np.zeros(384), np.zeros(384)], token_counts=[3, 3], model="m", operation="embed")
    assert embed.SPEC.summary(request, result) == "embedded 2 texts into 384 dimensions"
    tokens = EmbedResult(vectors=[np.zeros((5, 128))], token_counts=[5], model="m", operation="embed")
    assert embed.SPEC.summary(EmbedRequest(inputs=(TextInput("a"),)), tokens) == "embedded 1 text into 128 dimensions"


# --- container/dialects/fields.py --------------------------------------------------------------------------------
# Each parser against what the contract (§2a-§2c) says a caller may send, and the exact words of its refusal: a 422
# that names the field and shows the value (cut short), so a caller can fix the request.

from container.dialects import fields  # noqa: E402
from container.errors import BadRequest, ValidationFailed  # noqa: E402
from model_handlers.types import ImageInput, OtherInput  # noqa: E402


def _refusal(parse, *args) -> str:
    with pytest.raises(ValidationFailed) as raised:
        parse(*args)
    assert raised.value.code == "VALIDATION_ERROR"
    return raised.value.detail


@pytest.mark.unit
def test_loads_reads_json_with_or_without_a_byte_order_mark_and_refuses_the_rest():
    assert fields.loads(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    assert fields.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    assert fields.loads(b'\xef\xbb\xbf{"a": 1}', exact=True) == {"a": 1}
    # the fast parser answers plain floats; only the exact one (decode_body's second reading) keeps each number's text
    assert type(fields.loads(b'{"a": 1.5}')["a"]) is float and not hasattr(fields.loads(b"[2.5]")[0], "text")
    exact = fields.loads(b'{"id": 0.12345678901234567890123}', exact=True)["id"]
    assert exact.text == "0.12345678901234567890123" and exact == pytest.approx(0.123456789)
    for exact_mode in (False, True):
        with pytest.raises(BadRequest) as raised:
            fields.loads(b'{"a": ', exact=exact_mode)
        assert raised.value.code == "INVALID_JSON" and raised.value.status_code == 400
        assert raised.value.detail.startswith("the body is not valid JSON: ")
    with pytest.raises(BadRequest) as raised:  # int() of more than 4,300 digits: refused (not a 500)
        fields.loads(b'{"a": ' + b"9" * 5000 + b"}", exact=True)
    assert raised.value.detail.startswith("the body is not valid JSON: Exceeds the limit (4300 digits)")
    with pytest.raises(BadRequest) as raised:  # nested past the recursion limit: refused (not a 500)
        fields.loads(b"[" * 100_000 + b"]" * 100_000, exact=True)
    assert raised.value.detail.startswith("the body is not valid JSON: ") and len(raised.value.detail) <= 300
    with pytest.raises(BadRequest) as raised:  # not UTF-8
        fields.loads(b'{"a": "\xff"}', exact=True)
    assert raised.value.code == "INVALID_JSON"


@pytest.mark.unit
def test_an_id_is_echoed_exactly_as_sent():
    assert fields.item_id(None, "id") is None and fields.item_id("x-1", "id") == "x-1"
    assert fields.item_id(-(2**63), "id") == -(2**63) and fields.item_id(2**64 - 1, "id") == 2**64 - 1
    for beyond in (2**64, -(2**63) - 1):  # orjson would read these back as floats: rendered from their digits
        fragment = fields.item_id(beyond, "id")
        assert isinstance(fragment, orjson_fragment()) and orjson_dumps([fragment]) == f"[{beyond}]".encode()
    with pytest.raises(fields.InexactNumber):
        fields.item_id(0.5, "id")
    # decode_body reads the body again with exact numbers when the fast parser saw a float id
    decoded = fields.decode_body(lambda body: fields.item_id(body["id"], "id"), b'{"id": 1.10000000000000000001}')
    assert orjson_dumps([decoded]) == b"[1.10000000000000000001]"
    assert fields.decode_body(lambda body: body["id"], b'{"id": 7}') == 7
    for value, said in ((True, "a boolean"), ([1], "an array"), ({"a": 1}, "an object")):
        assert _refusal(fields.item_id, value, "data.0.id") == f"`data.0.id` must be a string or a number, got {said}"


def orjson_fragment():
    import orjson

    return orjson.Fragment


def orjson_dumps(value) -> bytes:
    import orjson

    return orjson.dumps(value)


@pytest.mark.unit
def test_echoed_and_mapping():
    flat = {"task": "retrieval.query", "dimensions": 256}
    assert fields.echoed(flat, "parameters") is flat
    nested: dict = {}
    deep = nested
    for _ in range(300):  # orjson refuses more than 254 levels
        deep["a"] = {}
        deep = deep["a"]
    said = _refusal(fields.echoed, nested, "parameters")
    assert said.startswith("`parameters` cannot be echoed back: ") and said.endswith("; send a flat object")
    assert _refusal(fields.echoed, {"n": 2**64}, "parameters").startswith("`parameters` cannot be echoed back: ")
    assert fields.mapping(None, "parameters") == {} and fields.mapping(flat, "parameters") is flat
    assert _refusal(fields.mapping, [1], "parameters") == "`parameters` must be a JSON object, got an array"
    assert _refusal(fields.mapping, "x", "data") == "`data` must be a JSON object, got a string"


@pytest.mark.unit
def test_optional_int_reads_integers_and_numeric_strings_only():
    """§2a: `dimensions` may be an int or a numeric string ("1024")."""
    for value, expected in ((None, None), (1024, 1024), ("1024", 1024), (" 64 ", 64), ("+7", 7), ("-7", -7),
                            (3.0, 3), (-(10**18 - 1), -(10**18 - 1)), (10**18 - 1, 10**18 - 1), ("9" * 18, 10**18 - 1),
                            (999999999999999872.0, 999999999999999872), (0, 0)):
        got = fields.optional_int(value, "dimensions")
        assert got == expected and (got is None or type(got) is int), value
    assert _refusal(fields.optional_int, True, "dimensions") == "`dimensions` must be an integer, got a boolean"
    for value in (3.5, 10**18, -(10**18), 1e18, "9" * 19, "²", "1.5", "", "12a", [1], float("nan")):
        assert _refusal(fields.optional_int, value, "dimensions") == (
            f"`dimensions` must be an integer, got {value!r}"[:len("`dimensions` must be an integer, got ") + 60]
            if len(repr(value)) <= 60 else f"`dimensions` must be an integer, got {repr(value)[:57]}...")


@pytest.mark.unit
def test_the_value_shown_in_a_refusal_is_cut_to_60_characters():
    assert fields._shown("a" * 58) == repr("a" * 58)  # 60 characters with its quotes: whole
    assert fields._shown("a" * 59) == repr("a" * 59)[:57] + "..."
    assert len(fields._shown("a" * 1000)) == 60
    assert [fields._json_type(v) for v in (None, True, 1, 1.5, "s", [], {}, b"x")] == [
        "null", "a boolean", "a number", "a number", "a string", "an array", "an object", "bytes"]


@pytest.mark.unit
def test_optional_float_bool_and_str():
    assert fields.optional_float(None, "min_weight") is None
    assert fields.optional_float(1, "min_weight") == 1.0 and type(fields.optional_float(1, "min_weight")) is float
    assert fields.optional_float(-0.25, "min_weight") == -0.25
    for value in (True, "0.5", float("inf"), float("-inf"), float("nan"), [0.5]):
        assert _refusal(fields.optional_float, value, "min_weight") == (
            f"`min_weight` must be a finite number, got {value!r}")
    for default in (True, False):
        assert fields.optional_bool(None, "normalized", default) is default
        assert fields.flag(default)(None, "normalized") is default
        assert fields.flag(default)("TRUE", "normalized") is True and fields.flag(default)(False, "x") is False
        assert _refusal(fields.flag(default), "yes", "late_chunking") == (
            "`late_chunking` must be true or false, got a string")
    for value, expected in ((True, True), (False, False), ("true", True), ("TRUE", True), ("False", False),
                            ("false", False)):
        assert fields.optional_bool(value, "truncate", not expected) is expected
    for value, said in (("yes", "a string"), (1, "a number"), (0, "a number"), ([], "an array")):
        assert _refusal(fields.optional_bool, value, "truncate", True) == (
            f"`truncate` must be true or false, got {said}")
    assert fields.optional_str(None, "task") is None and fields.optional_str("", "task") == ""
    assert _refusal(fields.optional_str, 5, "task") == "`task` must be a string, got a number"


@pytest.mark.unit
def test_choice_and_input_type():
    assert fields.choice(None, "f", ("a", "b")) is None and fields.choice(None, "f", ("a", "b"), "b") == "b"
    assert fields.choice("a", "f", iter(("a", "b"))) == "a"
    for value in ("c", ["a"], {"a": 1}, 1):  # a list or an object is refused, not tested for membership
        assert _refusal(fields.choice, value, "f", iter(("a", "b"))) == f"`f` must be one of a, b, got {value!r}"
    assert fields.input_type("query", "input_type") == "query"
    assert fields.input_type("document", "input_type") == "document"
    assert fields.input_type(None, "input_type") is None
    assert _refusal(fields.input_type, "passage", "input_type") == (
        "`input_type` must be one of query, document, got 'passage'")
    assert _refusal(fields.input_type, 1, "input_type") == "`input_type` must be a string, got a number"


@pytest.mark.unit
def test_encoding_reads_one_type_or_a_list_keyed_by_type():
    """§2b/§2c: `embedding_type` one of float, base64, binary, ubinary; a list answers an object keyed by type."""
    assert fields.encoding(None, "embedding_type") == Encoding((EmbeddingType.FLOAT,), False)
    assert fields.encoding("base64", "embedding_type") == Encoding((EmbeddingType.BASE64,), False)
    assert fields.encoding(["ubinary", "float", "ubinary"], "embedding_type") == Encoding(
        (EmbeddingType.UBINARY, EmbeddingType.FLOAT), True)
    assert fields.encoding(["binary"], "embedding_type") == Encoding((EmbeddingType.BINARY,), True)
    assert _refusal(fields.encoding, [], "embedding_type") == (
        "`embedding_type` must name at least one of float, base64, binary, ubinary")
    for item in ("int8", {"a": 1}, ["float"]):
        assert _refusal(fields.encoding, ["float", item], "embedding_type") == (
            f"`embedding_type` must be one of float, base64, binary, ubinary (or a list of them), got {item!r}")
    assert _refusal(fields.encoding, "FLOAT", "encoding_format").startswith("`encoding_format` must be one of float")


@pytest.mark.unit
def test_embed_input_reads_each_form_of_an_input():
    """§2a: bare strings, {"text"}, {"image"}, {"url"}, {"bytes"}; newer clients' {"audio"}, {"video"}, {"pdf"}."""
    assert fields.embed_input("a", "input") == TextInput("a")
    assert fields.embed_input({"text": "a", "image": "i"}, "input") == TextInput("a")
    assert fields.embed_input({"url": "u", "bytes": "b"}, "input") == ImageInput("u", "url")
    for key in ("image", "url", "bytes"):
        assert fields.embed_input({key: "x", "audio": "y"}, "input.0") == ImageInput("x", key)
        assert fields.render_input(ImageInput("x", key)) == {key: "x"}
        assert _refusal(fields.embed_input, {key: 1}, "input.0") == (
            f"`input.0.{key}` must be a string (a URL, base64 or a data URI), got a number")
    for key in ("audio", "video", "pdf"):
        assert fields.embed_input({key: "s"}, "input") == OtherInput(key, "s")
        assert fields.embed_input({key: 5}, "input") == OtherInput(key, "")
        assert fields.render_input(OtherInput(key, "s")) == {key: "s"}
    assert fields.render_input(TextInput("t")) == {"text": "t"}
    assert _refusal(fields.embed_input, {"text": None}, "input.2") == "`input.2.text` must be a string, got null"
    assert _refusal(fields.embed_input, {"txt": "a"}, "input.1") == (
        "`input.1` must have a `text` (or `image`, `url`, `bytes`) key")
    assert _refusal(fields.embed_input, 5, "input.1") == (
        "`input.1` must be a string or an object with `text`, got a number")


@pytest.mark.unit
def test_the_input_schema_admits_what_embed_input_reads_and_nothing_else():
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(fields.input_schema())
    read = ["a", {"text": "a"}, {"text": "a", "image": "i"}, {"image": "i"}, {"url": "u", "bytes": "b"},
            {"bytes": "b"}, {"audio": 5}, {"video": "v", "pdf": "p"}, {"pdf": None}]
    refused = [5, None, [], {}, {"txt": "a"}, {"text": 1}, {"image": 1}, {"url": None}]
    for value in read:
        fields.embed_input(value, "input")
        assert validator.is_valid(value), value
    for value in refused:
        with pytest.raises(ValidationFailed):
            fields.embed_input(value, "input")
        assert not validator.is_valid(value), value


@pytest.mark.unit
def test_the_option_schemas_admit_what_their_parsers_read():
    from jsonschema import Draft202012Validator

    integer = Draft202012Validator(fields.INTEGER_SCHEMA)
    for value in (0, -5, 10**18 - 1, -(10**18 - 1), "1024", " 64 ", "+7", "-7", "9" * 18):
        assert integer.is_valid(value) and fields.optional_int(value, "f") is not None, value
    for value in (10**18, -(10**18), "9" * 19, "1.5", "x", "", True, [1]):
        assert not integer.is_valid(value), value
        with pytest.raises(ValidationFailed):
            fields.optional_int(value, "f")
    for default in (True, False):
        boolean = Draft202012Validator(fields.boolean_schema(default))
        assert fields.boolean_schema(default)["default"] is default
        for value in (True, False, "true", "TRUE", "False", "tRuE"):
            assert boolean.is_valid(value) and fields.optional_bool(value, "f", default) in (True, False)
        for value in ("yes", "", 1, None, "truee"):
            assert not boolean.is_valid(value), value
    option = fields.Option("dimensions", fields.optional_int, fields.INTEGER_SCHEMA, "cut")
    assert option.parse({"dimensions": "8"}, "parameters.") == 8 and option.parse({}, "parameters.") is None
    assert _refusal(option.parse, {"dimensions": "x"}) == "`dimensions` must be an integer, got 'x'"
    assert _refusal(option.parse, {"dimensions": "x"}, "parameters.") == (
        "`parameters.dimensions` must be an integer, got 'x'")
    assert option.property_schema() == {"anyOf": [fields.INTEGER_SCHEMA, {"type": "null"}], "description": "cut"}
    nullable = Draft202012Validator(option.property_schema())
    assert nullable.is_valid(None) and nullable.is_valid(3) and not nullable.is_valid("x")


@pytest.mark.unit
def test_an_input_list_is_one_input_or_a_list_and_each_refusal_says_what_to_send():
    shape = '{"input": ["text", ...]}'
    assert fields.input_list({"input": "a"}, shape) == (TextInput("a"),)
    assert fields.input_list({"input": {"text": "a"}}, shape) == (TextInput("a"),)
    assert fields.input_list({"input": ["a", {"url": "u"}]}, shape) == (TextInput("a"), ImageInput("u", "url"))
    assert fields.input_list({"input": []}, shape) == ()
    for body in ([], "a", {"text": "a"}, None):
        with pytest.raises(ValidationFailed) as raised:
            fields.input_list(body, shape)
        assert raised.value.detail == 'the body must be a JSON object with `input`: {"input": ["text", ...]}'
    with pytest.raises(ValidationFailed) as raised:
        fields.input_list({}, "S", "`input` and `labels`")
    assert raised.value.detail == "the body must be a JSON object with `input` and `labels`: S"
    for value in (3, None, True):
        with pytest.raises(ValidationFailed) as raised:
            fields.input_list({"input": value}, shape)
        assert raised.value.detail == '`input` must be a string or a list of strings or {"text"} objects'
    with pytest.raises(ValidationFailed) as raised:
        fields.input_list({"input": 3}, shape, listed="texts")
    assert raised.value.detail == "`input` must be a string or a list of texts"
    with pytest.raises(ValidationFailed) as raised:
        fields.input_list({"input": ["a", 3]}, shape)
    assert raised.value.detail == "`input[1]` must be a string or an object with `text`, got a number"


@pytest.mark.unit
def test_an_envelope_reads_its_parameters_inputs_and_ids():
    params, inputs, ids = fields.envelope({"data": [{"text": "a", "id": 7}, "b", {"text": "c", "id": "x"}],
                                           "parameters": {"task": "t"}})
    assert params == {"task": "t"} and inputs == (TextInput("a"), TextInput("b"), TextInput("c"))
    assert ids[0] == 7 and ids[2] == "x" and len(ids[1]) == 32 and int(ids[1], 16) >= 0
    params, inputs, ids = fields.envelope({"data": {"text": "only"}})
    assert params == {} and inputs == (TextInput("only"),) and len(ids) == 1 and len(ids[0]) == 32
    assert fields.envelope({"data": [{"text": "a"}, {"text": "b"}]})[2][0] != fields.envelope({"data": ["a"]})[2][0]
    for data, shape, detail in ((3, "", "`data` must be a list of inputs or one input object"),
                                ("a", "S", "`data` must be a list of inputs or one input object: S")):
        with pytest.raises(ValidationFailed) as raised:
            fields.envelope({"data": data}, shape)
        assert raised.value.detail == detail
    with pytest.raises(ValidationFailed) as raised:
        fields.envelope({"data": [], "parameters": [1]})
    assert raised.value.detail == "`parameters` must be a JSON object, got an array"
    with pytest.raises(ValidationFailed) as raised:
        fields.envelope({"data": ["a", {"text": "b", "id": [1]}]})
    assert raised.value.detail == "`data[1].id` must be a string or a number, got an array"
    with pytest.raises(ValidationFailed) as raised:
        fields.envelope({"data": ["a", 5]})
    assert raised.value.detail == "`data[1]` must be a string or an object with `text`, got a number"


@pytest.mark.unit
def test_embed_request_reads_every_option_of_the_contract():
    """§2c, with OpenAI's `encoding_format` read as `embedding_type`'s synonym (§2b)."""
    request, encoding = fields.embed_request((TextInput("a"),), {})
    assert encoding == Encoding() and request.inputs == (TextInput("a"),)
    assert (request.task, request.dimensions, request.normalized, request.late_chunking, request.truncate,
            request.input_type, request.adapter, request.also, request.form_options) == (
        None, None, True, False, True, None, None, (), ())
    request, encoding = fields.embed_request((), {
        "task": "retrieval.query", "dimensions": "256", "normalized": "false", "late_chunking": True,
        "truncate": False, "input_type": "query", "adapter": "a1", "top_k": 5, "min_weight": 0.5,
        "return_tokens": "TRUE", "encoding_format": "base64", "return_multivector": True, "return_sparse": "true"})
    assert (request.task, request.dimensions, request.normalized, request.late_chunking, request.truncate,
            request.input_type, request.adapter) == ("retrieval.query", 256, False, True, False, "query", "a1")
    # the sparse form's own options, whether it is asked or asked beside; the forms asked beside in their order
    assert request.form_options == (SparseOptions(top_k=5, min_weight=0.5, return_tokens=True),)
    assert request.also == ("sparse", "multi-vector")
    for option, value in (("top_k", 1), ("min_weight", 0.0), ("return_tokens", True)):
        assert fields.embed_request((), {option: value})[0].form_options == (SparseOptions(**{option: value}),)
    assert fields.embed_request((), {"return_multivector": "TRUE"})[0].also == ("multi-vector",)
    assert fields.embed_request((), {"return_sparse": True, "return_multivector": False})[0].also == ("sparse",)
    assert _refusal(fields.embed_request, (), {"top_k": "x"}, "parameters.") == (
        "`parameters.top_k` must be an integer, got 'x'")
    assert _refusal(fields.embed_request, (), {"return_sparse": 1}, "parameters.") == (
        "`parameters.return_sparse` must be true or false, got a number")
    assert encoding == Encoding((EmbeddingType.BASE64,))
    # both given: embedding_type wins; a null embedding_type leaves encoding_format to say
    assert fields.embed_request((), {"embedding_type": ["binary"], "encoding_format": "base64"})[1] == Encoding(
        (EmbeddingType.BINARY,), True)
    assert fields.embed_request((), {"embedding_type": None, "encoding_format": "base64"})[1] == Encoding(
        (EmbeddingType.BASE64,))
    assert _refusal(fields.embed_request, (), {"dimensions": "x"}, "parameters.") == (
        "`parameters.dimensions` must be an integer, got 'x'")
    assert _refusal(fields.embed_request, (), {"encoding_format": "int8"}, "parameters.").startswith(
        "`parameters.encoding_format` must be one of float, base64, binary, ubinary")
    assert _refusal(fields.embed_request, (), {"embedding_type": "int8"}, "parameters.").startswith(
        "`parameters.embedding_type` must be one of")
    schema_ = fields.options_schema()
    assert list(schema_) == ["task", "dimensions", "normalized", "late_chunking", "truncate", "input_type", "adapter",
                             "top_k", "min_weight", "return_tokens", "return_sparse", "return_multivector",
                             "embedding_type", "encoding_format"]
    assert schema_["encoding_format"]["description"] == "synonym of `embedding_type`"
    assert schema_["encoding_format"]["anyOf"] == schema_["embedding_type"]["anyOf"]


# --- container/dialects/rerank.py --------------------------------------------------------------------------------
# The two rerank bodies of contract §3, decoded and answered; each JSON Schema the OpenAPI document publishes checked
# against the bodies the decoders read and the answers the renderers write (jsonschema, an independent validator).

from container.dialects import ITEM_OVERHEAD_BYTES, rerank as rerank_dialect  # noqa: E402
from model_handlers.types import RerankHit, RerankRequest, RerankResult  # noqa: E402

SAGEMAKER_SHAPE = '{"data": {"query": "...", "documents": ["...", {"text": "..."}], "top_n": 3}}'
PUBLIC_SHAPE = '{"query": "...", "documents": ["...", {"text": "..."}], "top_n": 3, "return_documents": true}'
RESULT = RerankResult(hits=[RerankHit(2, 0.75, 4), RerankHit(0, -1.5, 3)], query_tokens=5, document_tokens=11,
                      model="rr")


def _validator(schema_):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema_)


@pytest.mark.unit
def test_top_n_is_a_positive_integer_or_left_out():
    """§3: `top_n` missing means all; 0 or less is refused (a caller who wants all leaves it out)."""
    assert rerank_dialect._top_n(None, "top_n") is None
    assert rerank_dialect._top_n(1, "top_n") == 1 and rerank_dialect._top_n(" 3 ", "data.top_n") == 3
    for bad in (0, -2, "0"):
        assert _refusal(rerank_dialect._top_n, bad, "data.top_n") == (
            f"`data.top_n` must be at least 1 (leave it out to get every document), got {int(bad)}")
    assert _refusal(rerank_dialect._top_n, "x", "data.top_n") == "`data.top_n` must be an integer, got 'x'"
    top_n = _validator(rerank_dialect.OPTIONS[0].schema)
    for value in (1, 3, "3", " 010 ", "+7", "9" * 18):
        assert top_n.is_valid(value) and rerank_dialect._top_n(value, "top_n") >= 1, value
    for value in (0, -1, "0", "000", "-3", "9" * 19, "x", 1.5):
        assert not top_n.is_valid(value), value
        with pytest.raises(ValidationFailed):
            rerank_dialect._top_n(value, "top_n")


@pytest.mark.unit
def test_which_bodies_are_rerank_bodies():
    """§1/§3: /invocations routes by shape: `query` or `documents` (in `data`, or at the top without `input`)."""
    sagemaker = rerank_dialect.is_sagemaker_rerank
    assert sagemaker({"query": "q"}) and sagemaker({"documents": []}) and sagemaker([{"query": "q"}])
    assert not sagemaker([]) and not sagemaker([{"text": "a"}]) and not sagemaker(["q"]) and not sagemaker("query")
    assert not sagemaker({"text": "a"}) and not sagemaker(None)
    public = rerank_dialect.is_public_rerank
    assert public({"query": "q"}) and public({"documents": ["d"]}) and public({"query": "q", "model": "m"})
    assert not public({"input": "a", "query": "q"}) and not public({"model": "m"}) and not public(["query"])
    assert rerank_dialect.invocation({"input": ["a"]}) is None
    assert rerank_dialect.invocation({"data": [{"text": "a"}]}) is None
    assert rerank_dialect.invocation({"data": {"text": "a"}}) is None
    assert rerank_dialect.invocation({"data": {"query": "q", "documents": ["d"]}}).request == RerankRequest(
        query=TextInput("q"), documents=(TextInput("d"),))
    assert rerank_dialect.invocation({"query": "q", "documents": ["d"], "top_n": 1}).request == RerankRequest(
        query=TextInput("q"), documents=(TextInput("d"),), top_n=1)
    # the SageMaker body is answered in its envelope, the public one in the public form
    three = ["a", "b", "c"]
    assert list(rerank_dialect.invocation({"data": {"query": "q", "documents": three}}).render(RESULT)) == [
        "data", "parameters"]
    assert list(rerank_dialect.invocation({"query": "q", "documents": three}).render(RESULT)) == [
        "model", "object", "usage", "results"]


@pytest.mark.unit
def test_the_sagemaker_rerank_envelope_decoded_and_answered():
    body = {"data": [{"query": {"text": "q"}, "documents": ["a", {"text": "b"}, {"image": "i"}], "top_n": "2",
                      "return_documents": "true"}], "parameters": {"k": 1}}
    assert _validator(rerank_dialect.sagemaker_request_schema()).is_valid(body)
    decoded = rerank_dialect.decode_sagemaker(body)
    assert decoded.request == RerankRequest(query=TextInput("q"), documents=(
        TextInput("a"), TextInput("b"), ImageInput("i", "image")), top_n=2, return_documents=True)
    answer = decoded.render(RESULT)
    assert answer == {"data": [{"query_usage": {"total_tokens": 5}, "docs_usage": {"total_tokens": 11},
                                "results": [{"index": 2, "relevance_score": 0.75, "document": {"image": "i"},
                                             "usage": {"total_tokens": 4}},
                                            {"index": 0, "relevance_score": -1.5, "document": {"text": "a"},
                                             "usage": {"total_tokens": 3}}]}],
                      "parameters": {"k": 1}}
    response = _validator(rerank_dialect.sagemaker_response_schema())
    assert response.is_valid(answer)
    assert not response.is_valid({**answer, "data": []}) and not response.is_valid({"data": answer["data"]})
    assert not response.is_valid({**answer, "data": answer["data"] * 2})
    for key in ("query_usage", "docs_usage", "results"):
        assert not response.is_valid({**answer, "data": [{k: v for k, v in answer["data"][0].items() if k != key}]})
    hit = answer["data"][0]["results"][0]
    for key in ("index", "relevance_score", "usage"):
        broken = {k: v for k, v in hit.items() if k != key}
        assert not response.is_valid({**answer, "data": [{**answer["data"][0], "results": [broken]}]}), key
    assert not response.is_valid({**answer, "data": [{**answer["data"][0], "results": [{**hit, "index": "2"}]}]})
    assert not response.is_valid({**answer, "data": [{**answer["data"][0], "query_usage": {"total_tokens": "5"}}]})
    # each level's type: an answer of the wrong shape anywhere is refused
    item = answer["data"][0]
    for wrong in (["x"], [[item]], {"0": item}, "x"):
        assert not response.is_valid({**answer, "data": wrong}), wrong
    for key, wrong in (("docs_usage", {"total_tokens": "5"}), ("docs_usage", {}), ("docs_usage", 5),
                       ("query_usage", [5]), ("results", {"0": hit}), ("results", "x"), ("results", [5]),
                       ("results", [{**hit, "usage": {"total_tokens": 1.5}}]), ("results", [{**hit, "usage": 4}])):
        assert not response.is_valid({**answer, "data": [{**item, key: wrong}]}), (key, wrong)
    assert not response.is_valid({**answer, "parameters": [1]}) and not response.is_valid([answer])
    # one object in `data` reads the same; parameters left out echo as {}; documents not echoed when asked so
    decoded = rerank_dialect.decode_sagemaker({"data": {"query": "q", "documents": ["a", "b", "c"],
                                                        "return_documents": False}})
    assert decoded.request.return_documents is False and decoded.request.top_n is None
    answer = decoded.render(RESULT)
    assert answer["parameters"] == {} and [set(hit) for hit in answer["data"][0]["results"]] == [
        {"index", "relevance_score", "usage"}] * 2
    assert response.is_valid(answer)
    # a CSV row (batch transform) is `data` itself: its errors name the field alone
    row = rerank_dialect.WIRE.rows.decode({"query": "q", "documents": ["a"]})
    assert row.request == RerankRequest(query=TextInput("q"), documents=(TextInput("a"),))
    assert _refusal(rerank_dialect.WIRE.rows.decode, {"query": "q"}) == (
        f"`documents` is missing; a rerank body looks like {SAGEMAKER_SHAPE}")


@pytest.mark.unit
def test_the_sagemaker_rerank_envelope_refused_naming_the_field():
    def refusal(body):
        assert not _validator(rerank_dialect.sagemaker_request_schema()).is_valid(body), body
        return _refusal(rerank_dialect.decode_sagemaker, body)

    two = {"query": "q", "documents": ["a"]}
    envelope = _validator(rerank_dialect.sagemaker_request_schema())
    for bad in ([{"data": two}], "x", {}, {"parameters": {}}, {"data": [{"documents": ["a"]}]}, {"data": [5]}):
        assert not envelope.is_valid(bad), bad
    assert envelope.is_valid({"data": [two]}) and envelope.is_valid({"data": two, "parameters": {"a": 1}})
    assert refusal({"data": [two, two]}) == f"`data` holds 2 rerank requests; send one per body: {SAGEMAKER_SHAPE}"
    assert refusal({"data": []}) == f"`data` holds 0 rerank requests; send one per body: {SAGEMAKER_SHAPE}"
    assert refusal({"data": {"documents": ["a"]}}) == (
        f"`data.query` is missing; a rerank body looks like {SAGEMAKER_SHAPE}")
    assert refusal({"data": {"query": None, "documents": ["a"]}}) == (
        f"`data.query` is missing; a rerank body looks like {SAGEMAKER_SHAPE}")
    assert refusal({"data": {"query": "q", "documents": None}}) == (
        f"`data.documents` is missing; a rerank body looks like {SAGEMAKER_SHAPE}")
    assert refusal({"data": {"query": "q", "documents": "a"}}) == (
        '`data.documents` must be a list of strings or {"text"} objects')
    assert refusal({"data": {"query": "q", "documents": ["a", 5]}}) == (
        "`data.documents[1]` must be a string or an object with `text`, got a number")
    assert refusal({"data": {"query": 5, "documents": ["a"]}}) == (
        "`data.query` must be a string or an object with `text`, got a number")
    assert refusal({"data": {"query": "q", "documents": ["a"], "top_n": 0}}) == (
        "`data.top_n` must be at least 1 (leave it out to get every document), got 0")
    assert refusal({"data": {"query": "q", "documents": ["a"], "return_documents": "no"}}) == (
        "`data.return_documents` must be true or false, got a string")
    assert refusal({"data": {"query": "q", "documents": ["a"]}, "parameters": [1]}) == (
        "`parameters` must be a JSON object, got an array")
    assert refusal({"data": "q"}) == "`data` must be a JSON object, got a string"
    assert _refusal(rerank_dialect.decode_sagemaker, {"data": two, "parameters": {"n": 2**64}}).startswith(
        "`parameters` cannot be echoed back: ")


@pytest.mark.unit
def test_the_public_rerank_body_decoded_and_answered():
    body = {"model": "any", "query": "q", "documents": ["a", {"url": "u"}, "c"], "top_n": 2}
    request_schema = _validator(rerank_dialect.public_request_schema())
    assert request_schema.is_valid(body)
    decoded = rerank_dialect.decode_public(body)
    assert decoded.request == RerankRequest(query=TextInput("q"), documents=(
        TextInput("a"), ImageInput("u", "url"), TextInput("c")), top_n=2)
    answer = decoded.render(RESULT)
    assert answer == {"model": "rr", "object": "list", "usage": {"total_tokens": 16},
                      "results": [{"index": 2, "relevance_score": 0.75, "document": {"text": "c"}},
                                  {"index": 0, "relevance_score": -1.5, "document": {"text": "a"}}]}
    response = _validator(rerank_dialect.public_response_schema())
    assert response.is_valid(answer)
    for key in ("model", "object", "usage", "results"):
        assert not response.is_valid({k: v for k, v in answer.items() if k != key}), key
    assert not response.is_valid({**answer, "object": "dict"}) and not response.is_valid({**answer, "model": 1})
    assert not response.is_valid({**answer, "usage": {}}) and not response.is_valid({**answer, "results": {}})
    assert not response.is_valid({**answer, "results": [{"index": 0}]})
    assert not response.is_valid({**answer, "results": [{"index": 0, "relevance_score": "high"}]})
    assert not response.is_valid({**answer, "results": [{"index": 0, "relevance_score": 1, "document": 5}]})
    for key, wrong in (("usage", {"total_tokens": "16"}), ("usage", 16), ("results", {"0": answer["results"][0]}),
                       ("results", [5]), ("results", [{"index": 0.5, "relevance_score": 1}]), ("object", None)):
        assert not response.is_valid({**answer, key: wrong}), (key, wrong)
    assert not response.is_valid([answer])
    hidden = rerank_dialect.decode_public({**body, "return_documents": False}).render(RESULT)
    assert [set(hit) for hit in hidden["results"]] == [{"index", "relevance_score"}] * 2 and response.is_valid(hidden)
    for bad in ([body], "q", None):
        assert _refusal(rerank_dialect.decode_public, bad) == f"the body must be a JSON object: {PUBLIC_SHAPE}"
    assert _refusal(rerank_dialect.decode_public, {"query": "q"}) == (
        f"`documents` is missing; a rerank body looks like {PUBLIC_SHAPE}")
    assert _refusal(rerank_dialect.decode_public, {"query": "q", "documents": [{"text": 1}]}) == (
        "`documents[0].text` must be a string, got a number")
    for bad in ({"query": "q"}, {"documents": ["a"]}, {"query": "q", "documents": "a"},
                {"query": "q", "documents": [5]}, {"query": "q", "documents": ["a"], "top_n": 0},
                {"query": "q", "documents": ["a"], "model": 5}):
        assert not request_schema.is_valid(bad), bad
    assert request_schema.is_valid({"query": "q", "documents": [], "top_n": None, "return_documents": "FALSE"})
    for bad in ([body], "q", None, {"query": "q", "documents": {"0": "a"}}):
        assert not request_schema.is_valid(bad), bad
    assert not request_schema.is_valid({"query": "q", "documents": [], "return_documents": "no"})


@pytest.mark.unit
def test_a_rerank_answer_is_estimated_from_the_documents_it_echoes():
    """The bound `estimate` states: each echoed document's text counted twice (JSON may escape every character), and
    ITEM_OVERHEAD_BYTES per document; an answer that echoes none is the overhead alone."""
    import json

    documents = (TextInput('"' * 50), ImageInput("u" * 7, "url"), TextInput("é"))
    request = RerankRequest(query=TextInput("q"), documents=documents)
    assert rerank_dialect.estimate(request, None, None) == 2 * (50 + 7 + 1) + 3 * ITEM_OVERHEAD_BYTES
    hidden = RerankRequest(query=TextInput("q"), documents=documents, return_documents=False)
    assert rerank_dialect.estimate(hidden, None, None) == 3 * ITEM_OVERHEAD_BYTES
    result = RerankResult(hits=[RerankHit(i, -1.2345678e-06, 10**6) for i in range(3)], query_tokens=10**6,
                          document_tokens=10**6, model="m")
    for each in (request, hidden):
        answer = rerank_dialect.render_item(each, result)
        echoed = sum(len(json.dumps(hit.get("document", ""))) for hit in answer["results"])
        assert echoed <= rerank_dialect.estimate(each, None, None)


# --- container/dialects/embed.py ---------------------------------------------------------------------------------

from container.dialects import embed as embed_dialect  # noqa: E402


@pytest.mark.unit
def test_an_embeddings_body_on_invocations_asks_for_the_served_models_own_form():
    """§1/§2: on /invocations the SageMaker envelope (`data`) and the public body (`input`) are embeddings of the
    model's own form (operation None); `data` is the envelope even beside `input`; anything else is not this one's."""
    envelope = embed_dialect.invocation({"data": [{"text": "a", "id": 7}], "parameters": {"dimensions": "8"},
                                         "input": "ignored"})
    assert envelope.request.inputs == (TextInput("a"),) and envelope.request.dimensions == 8
    assert envelope.request.operation is None
    public = embed_dialect.invocation({"input": "b", "embedding_type": "base64"})
    assert public.request.inputs == (TextInput("b"),) and public.request.operation is None
    assert public.encoding == Encoding((EmbeddingType.BASE64,))
    assert embed_dialect.invocation({"query": "q", "documents": []}) is None and embed_dialect.invocation({}) is None
    # /v1/embeddings asks for `embed` by name
    assert embed_dialect.WIRE.routes[0].decode({"input": ["c"]}).request.operation == "embed"


class _Rows:
    """What `estimate` reads of a pipeline: its width and the rows an answer holds (one per input; for token vectors
    3 per input here, as a model of token vectors counts them)."""

    dimensions = 384
    default_input_type = None

    def answer_rows(self, request) -> int:
        return (3 if request.operation == "multi-vector" else 1) * len(request.inputs)


@pytest.mark.unit
def test_an_embeddings_answer_is_estimated_from_its_rows_and_encodings():
    """The bound `estimate` states: each answered row's vector in the encodings asked (`vector_bytes`, whose own test
    checks it against orjson), at the dimensions asked (else the model's width), and ITEM_OVERHEAD_BYTES per input;
    then each form asked beside it, as that form's own answer would be estimated."""
    from container import dialects

    inputs = (TextInput("a"), TextInput("b"))
    keyed = Encoding((EmbeddingType.FLOAT, EmbeddingType.BINARY), keyed=True)
    for operation, rows in (("embed", 2), ("multi-vector", 6)):
        for dims, encoding in ((None, None), (64, None), (None, keyed), (8, Encoding((EmbeddingType.BASE64,)))):
            request = EmbedRequest(inputs=inputs, dimensions=dims, operation=operation)
            assert embed_dialect.estimate(request, encoding, _Rows()) == (
                rows * vector_bytes(dims or 384, encoding) + 2 * ITEM_OVERHEAD_BYTES)
    widthless = _Rows()
    widthless.dimensions = None
    assert embed_dialect.estimate(EmbedRequest(inputs=inputs), None, widthless) == (
        2 * vector_bytes(0, None) + 2 * ITEM_OVERHEAD_BYTES)
    for encoding in (None, Encoding((EmbeddingType.BINARY,))):
        top_k = (SparseOptions(top_k=5),)
        both = EmbedRequest(inputs=inputs, operation="embed", also=("sparse", "multi-vector"), form_options=top_k)
        own = 2 * vector_bytes(384, encoding) + 2 * ITEM_OVERHEAD_BYTES
        sparse = dialects.named("sparse").estimate(EmbedRequest(inputs=inputs, operation="sparse", form_options=top_k),
                                                   encoding, _Rows())
        tokens = dialects.named("multi-vector").estimate(
            EmbedRequest(inputs=inputs, operation="multi-vector", form_options=top_k), encoding, _Rows())
        assert tokens == 6 * vector_bytes(384, encoding) + 2 * ITEM_OVERHEAD_BYTES  # a vector per token, encoded
        assert sparse > 2 * ITEM_OVERHEAD_BYTES
        assert embed_dialect.estimate(both, encoding, _Rows()) == own + sparse + tokens
        assert embed_dialect.estimate(replace_request(both, also=("sparse",)), encoding, _Rows()) == (
            own + sparse)


def replace_request(request, **changes):
    from dataclasses import replace

    return replace(request, **changes)


@pytest.mark.app
@pytest.mark.parametrize("body", [
    {"input": ["a", "b" * 300]}, {"input": ["a"], "dimensions": 32, "embedding_type": "base64"},
    {"input": ["x y z"] * 3, "embedding_type": ["float", "binary", "ubinary", "base64"]},
    {"data": [{"text": "a", "id": "i" * 32}, "b"], "parameters": {"dimensions": 17}}])
def test_the_estimate_bounds_the_answer_the_server_writes(app, runtime, body):
    """The estimate is what the answer cap compares (before the model runs): the answered items the server writes
    (the answer's `data`, without the envelope's few fixed keys) must fit in it."""
    decoded = embed_dialect.invocation(body)
    said = app.post("/invocations", body)
    assert said.status_code == 200, said.text
    start = said.content.index(b'"data":[')
    end = said.content.rfind(b',"parameters":') if "parameters" in body else len(said.content) - 1
    items = said.content[start + len(b'"data":'):end]
    assert items.startswith(b"[{") and items.endswith(b"}]")
    assert len(items) <= embed_dialect.estimate(decoded.request, decoded.encoding, runtime.handler)


def _another_pipeline(small_passes, **options):
    """A second pipeline (its own batcher) on the small_passes model."""
    from model_handlers.options import HandlerOptions
    from model_handlers.pipeline import Pipeline

    pipeline, _, _ = small_passes
    return Pipeline(pipeline.kind, pipeline.model, pipeline.config, HandlerOptions(**options))


@pytest.mark.app
def test_a_model_on_a_gpu_gets_the_gpu_budget_of_padded_tokens_per_pass(small_passes, monkeypatch):
    """README (SEARCHBOX_MAX_BATCH_TOKENS): 1024 padded tokens per pass on CPU, 16384 on a GPU. Eight inputs of about
    200 tokens (1,600 padded) take two passes or more on CPU and one where the model says it is on a GPU (the forward
    pass itself still runs where the weights are)."""
    texts = tuple(TextInput(" ".join(f"word{i}x{j}" for j in range(60))) for i in range(8))
    for device, passes in (("cpu", range(2, 9)), ("cuda:0", range(1, 2))):
        monkeypatch.setattr(small_passes[0].model, "device", device)
        observer = _Passes()
        pipeline = _another_pipeline(small_passes, observer=observer)
        try:
            pipeline.run(EmbedRequest(inputs=texts))
        finally:
            pipeline.close()
        assert len(observer.passes) in passes and sum(observer.passes) == 8, (device, observer.passes)


@pytest.mark.app
def test_closing_a_pipeline_closes_its_model_and_draining_an_idle_one_keeps_and_refuses_nothing(small_passes,
                                                                                               monkeypatch):
    """A model that holds something to close (an ONNX session, a remote-code process) is closed with its pipeline;
    a drained pipeline takes no more work."""
    from model_handlers.errors import Overloaded

    closed = []
    monkeypatch.setattr(small_passes[0].model, "close", lambda: closed.append(True), raising=False)
    pipeline = _another_pipeline(small_passes)
    try:
        assert pipeline.run(EmbedRequest(inputs=(TextInput("before"),))).vectors[0].shape == (pipeline.dimensions,)
        assert pipeline.drain(5.0) == (0, 0)
        with pytest.raises(Overloaded):
            pipeline.run(EmbedRequest(inputs=(TextInput("after"),)))
    finally:
        pipeline.close()
    assert closed == [True]


# --- model_handlers/operations/embed.py: the forms asked beside a request's own -----------------------------------

class _OnePass:
    """What check_also reads of a model: the forms its one forward pass makes (BGE-M3's FORMS, or fewer)."""

    def __init__(self, *forms):
        self.forms = frozenset(forms)

    def forms_of_one_pass(self):
        return self.forms


@pytest.mark.unit
def test_forms_beside_the_asked_one_come_only_from_a_model_whose_one_pass_makes_them():
    from model_handlers.operations.embed import check_also

    def refusal(request, model):
        with pytest.raises(InvalidOption) as raised:
            check_also(request, model, "m")
        return raised.value.code, str(raised.value)

    def unsupported(options):
        return ("UNSUPPORTED_OPTION", f"{options} needs a model whose one forward pass also makes those outputs "
                f"(BGE-M3); model m does not: leave {options} out, and ask /v1/sparse-embeddings or /v1/multi-vector "
                "of a model that makes them")

    bge_m3 = _OnePass("embed", "sparse", "multi-vector")
    both = EmbedRequest(inputs=(), operation="embed", also=("sparse", "multi-vector"))
    assert check_also(both, bge_m3, "m") is None
    assert check_also(EmbedRequest(inputs=(), operation="embed", also=("sparse",)), bge_m3, "m") is None
    assert check_also(EmbedRequest(inputs=(), operation="sparse", also=("multi-vector",)), bge_m3, "m") is None
    # nothing asked beside: nothing to check, whatever the model (top_k is then the sparse operation's own to check)
    assert check_also(EmbedRequest(inputs=(), operation="embed", form_options=(SparseOptions(top_k=0),)), object(),
                      "m") is None
    assert refusal(both, object()) == unsupported("return_sparse and return_multivector")
    assert refusal(EmbedRequest(inputs=(), operation="embed", also=("multi-vector",)), object()) == (
        unsupported("return_multivector"))
    # a model that makes some of them: what it does not make is refused, as is an operation it does not make
    assert refusal(both, _OnePass("embed", "sparse")) == unsupported("return_sparse and return_multivector")
    assert refusal(EmbedRequest(inputs=(), operation="embed", also=("sparse",)), _OnePass("sparse", "multi-vector")
                   ) == unsupported("return_sparse")
    # the sparse form's own option, as /v1/sparse-embeddings checks it
    for top_k in (0, -3):
        request = EmbedRequest(inputs=(), operation="embed", also=("sparse",), form_options=(SparseOptions(top_k),))
        assert refusal(request, bge_m3) == ("INVALID_OPTION", f"top_k must be at least 1, got {top_k}")
    for top_k in (1, 2, None):
        assert check_also(EmbedRequest(inputs=(), operation="embed", also=("sparse",),
                                       form_options=(SparseOptions(top_k),)), bge_m3, "m") is None
    # the multi-vector form has no options of its own to check
    assert check_also(EmbedRequest(inputs=(), operation="embed", also=("multi-vector",),
                                   form_options=(SparseOptions(top_k=0),)), bge_m3, "m") is None


@pytest.mark.app
def test_the_embedded_model_refuses_forms_its_pass_does_not_make(app):
    said = app.post("/v1/embeddings", {"input": ["a"], "return_sparse": True, "return_multivector": "true"})
    assert said.status_code == 422 and said.json()["code"] == "UNSUPPORTED_OPTION"
    assert said.json()["detail"] == (
        "return_sparse and return_multivector needs a model whose one forward pass also makes those outputs (BGE-M3); "
        "model all-MiniLM-L6-v2 does not: leave return_sparse and return_multivector out, and ask "
        "/v1/sparse-embeddings or /v1/multi-vector of a model that makes them")


@pytest.mark.app
def test_an_adapter_the_endpoint_does_not_hold_is_refused_by_name(app):
    """The request's adapter (its `adapter` option, or SageMaker's adapter header) is held while it runs: one the
    endpoint does not hold is a 422 naming it and those there are (none on the embedded model)."""
    for body in ({"input": ["a"], "adapter": "nope"}, {"data": [{"text": "a"}], "parameters": {"adapter": "nope"}}):
        said = app.post("/v1/embeddings" if "input" in body else "/invocations", body)
        assert said.status_code == 422, said.text
        assert said.json()["code"] == "UNKNOWN_ADAPTER"
        assert said.json()["detail"] == "no adapter 'nope' is loaded on this endpoint; adapters: none"


@pytest.fixture(scope="module")
def tiny_bge_m3(bge_m3_dir, tmp_path_factory):
    """A tiny BGE-M3 built offline (tests/models/bge_m3.py: the embedded encoder with seeded heads), served in
    process: a model whose one forward pass makes dense, sparse and token vectors."""
    import shutil

    from helpers import serving

    model_dir = shutil.copytree(bge_m3_dir, tmp_path_factory.mktemp("m3") / "m3")  # served as "m3", its name
    with serving(model_dir, {"SEARCHBOX_ALLOW_PICKLE": "1"}) as app:
        yield app, app.runtime.handler


@pytest.mark.app
def test_forms_asked_beside_are_each_forms_own_answer(tiny_bge_m3):
    """return_sparse and return_multivector from the same pass answer what /v1/sparse-embeddings and
    /v1/multi-vector answer on their own (test_bge_m3.py checks those against FlagEmbedding)."""
    app, pipeline = tiny_bge_m3
    texts = ["what do cats like to eat", "one forward pass gives three forms"]

    def data(path, body):
        said = app.post(path, body)
        assert said.status_code == 200, said.text
        assert said.json()["model"] == "m3"  # the served model's name: its directory's
        return said.json()["data"]

    both = data("/v1/embeddings", {"input": texts, "return_sparse": True, "return_multivector": True, "top_k": 3,
                                   "return_tokens": True, "dimensions": 64})
    dense = data("/v1/embeddings", {"input": texts, "dimensions": 64})
    sparse = data("/v1/sparse-embeddings", {"input": texts, "top_k": 3, "return_tokens": True})
    tokens = data("/v1/multi-vector", {"input": texts, "dimensions": 64})
    assert len(both) == len(texts)
    for i in range(len(texts)):
        assert_allclose(both[i]["embedding"], dense[i]["embedding"], atol=1e-5)
        assert len(both[i]["embedding"]) == 64
        assert both[i]["sparse_embedding"]["indices"] == sparse[i]["sparse_embedding"]["indices"]
        assert len(both[i]["sparse_embedding"]["indices"]) <= 3
        assert both[i]["sparse_embedding"]["tokens"] == sparse[i]["sparse_embedding"]["tokens"]
        assert_allclose(both[i]["sparse_embedding"]["values"], sparse[i]["sparse_embedding"]["values"], atol=1e-5)
        assert_allclose(both[i]["multi_vector"], tokens[i]["embeddings"], atol=1e-5)
        assert np.asarray(both[i]["multi_vector"]).shape[-1] == 64
    # the rows an answer holds (what the answer cap is checked against before any work): one per input, or for token
    # vectors one per kept token, as many as the answer then holds
    multi = EmbedRequest(inputs=tuple(TextInput(text) for text in texts), operation="multi-vector")
    assert pipeline.answer_rows(multi) == sum(len(item["embeddings"]) for item in tokens) > len(texts)
    assert pipeline.answer_rows(EmbedRequest(inputs=multi.inputs, operation="embed")) == len(texts)


# --- model_handlers/operations/classify.py ------------------------------------------------------------------------


def test_softmax_is_per_row_and_holds_for_logits_of_any_size():
    """scipy's softmax, row by row: rows of very different sizes (a CLIP's logit scale reaches 100, a caller's scale
    anything) each sum to 1, and a row of large logits neither overflows nor is shifted by another row's maximum."""
    from scipy.special import softmax as scipy_softmax

    from model_handlers.operations.classify import softmax

    logits = np.array([[0.0, 1.0, 2.0], [1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])
    scores = softmax(logits)
    assert np.isfinite(scores).all()
    assert_allclose(scores, scipy_softmax(logits, axis=1), rtol=1e-12)
    assert_allclose(softmax(logits[1]), scipy_softmax(logits[1]), rtol=1e-12)  # one row alone
