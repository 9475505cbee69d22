"""POST /v1/tokenize and POST /v1/segment (issue 24, contract §2h): the served model's own tokenizer, counted and cut.

The references are the tokenizer's own library: transformers' fast tokenizer on the embedded MiniLM (its
`offset_mapping` gives the character offsets), and a byte-level BPE built here with the `tokenizers` library's own
trainer (GPT-2's scheme: an emoji is several tokens), for the token limit where one character costs several tokens.
The properties (nothing lost, limits held, offsets exact) are fuzzed with hypothesis over CJK, emoji (ZWJ sequences,
skin tones, flags), combining marks and every kind of whitespace.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import orjson
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from container.dialects import segment as segment_dialect
from container.dialects import tokenize as tokenize_dialect
from container.errors import ValidationFailed
from helpers import assert_documented
from model_handlers import segmenting

README = Path(__file__).resolve().parent.parent / "README.md"
PIECES = ["Hello", "world", "the", "searchbox", "Zürich", "naïve", "e\u0301", "a\u0308\u0304", "你好", "世界",
          "検索ベース", "한국어", "👍", "👍🏽", "👨\u200d👩\u200d👧", "🇩🇪", "🇫🇷🇮🇹", "🏴\U000e0067\U000e0062\U000e0065"
          "\U000e006e\U000e0067\U000e007f", "❤\ufe0f", "x" * 40, "1.5", "e.g.", "“quoted”", "\u00a0", "\u3000"]
SEPARATORS = [" ", "  ", ". ", "! ", "? ", ", ", "; ", ": ", "\n", "\n\n", "\n \n", "。", "！", "，", "、", "\t",
              "\r\n", "", "...", " - "]
texts = st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=60).flatmap(
    lambda words: st.lists(st.sampled_from(SEPARATORS), min_size=len(words), max_size=len(words)).map(
        lambda seps: "".join(word + sep for word, sep in zip(words, seps))))
PROPERTIES = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)


@pytest.fixture(scope="module")
def byte_bpe():
    """A small byte-level BPE (GPT-2's pre-tokenizer and alphabet), trained here with the library's own trainer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>"])
    corpus = ["Hello world, the searchbox segments text.", "Zürich is naïve about 你好 世界 and 👍.",
              "Paragraphs end in blank lines. Sentences end in full stops!"] * 20
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def reference_runs(tokenizer, text: str) -> list[list]:
    """[text, [ids]] runs of `text` from the tokenizer's own offsets (transformers' or tokenizers'), grouped here by
    the characters the tokens cover: tokens that share a character are one run (a character several tokens spell),
    a token that covers none belongs with the token before it (the first such, with the token after it)."""
    if hasattr(tokenizer, "backend_tokenizer"):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    else:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        ids, offsets = encoded.ids, encoded.offsets
    run_of = list(range(len(ids)))  # union-find over token indices

    def root(index: int) -> int:
        while run_of[index] != index:
            index = run_of[index]
        return index

    covering: dict[int, int] = {}
    for index, (start, end) in enumerate(offsets):
        for character in range(start, end):
            if character in covering:
                run_of[root(index)] = root(covering[character])
            covering[character] = index
    empty = [index for index, (start, end) in enumerate(offsets) if end <= start]
    for index in empty:
        covered = [other for other in range(len(ids)) if offsets[other][1] > offsets[other][0]]
        before = [other for other in covered if other < index]
        after = [other for other in covered if other > index]
        if before or after:
            run_of[root(index)] = root(before[-1] if before else after[0])
    runs: dict[int, list[int]] = {}
    for index in range(len(ids)):
        runs.setdefault(root(index), []).append(index)
    grouped = []
    for members in sorted(runs.values()):
        spans = [offsets[i] for i in members if offsets[i][1] > offsets[i][0]] or [offsets[members[0]]]
        start, end = min(a for a, _ in spans), max(b for _, b in spans)
        grouped.append([text[start:end], [ids[i] for i in members]])
    return grouped


def grapheme_ends(text: str) -> set[int]:
    """Where each user-perceived character of `text` ends: the `regex` library's UAX #29 clusters (`\\X`)."""
    ends, at = set(), 0
    for cluster in regex.findall(r"\X", text):
        at += len(cluster)
        ends.add(at)
    return ends


def check_chunks(content: str, answer: dict, *, max_chars: int | None, max_tokens: int | None, tokenizer) -> None:
    """Nothing lost, each chunk its position's text, every limit held, each chunk's tokens the reference's."""
    positions, chunks = answer["chunk_positions"], answer["chunks"]
    assert answer["num_chunks"] == len(chunks) == len(positions)
    assert "".join(chunks) == content
    at = 0
    for (start, end), text in zip(positions, chunks):
        assert start == at < end and content[start:end] == text
        at = end
        if max_chars is not None:
            assert len(text) <= max_chars
    assert at == len(content)
    for text, got in zip(chunks, answer.get("tokens", [])):
        expected = reference_runs(tokenizer, text)
        assert got == expected
        if max_tokens is not None:
            assert sum(len(ids) for _, ids in got) <= max_tokens


# --- the cutting, on its own ----------------------------------------------------------------------------------------


@PROPERTIES
@given(content=texts, limit=st.integers(min_value=1, max_value=120))
def test_chunks_cover_the_text_within_a_character_limit(content, limit):
    chunks = segmenting.chunk(content, 0, len(content), segmenting.Limits(characters=limit))
    assert "".join(content[a:b] for a, b in chunks) == content
    assert all(0 < b - a <= limit for a, b in chunks)
    assert [a for a, _ in chunks[1:]] == [b for _, b in chunks[:-1]]


@PROPERTIES
@given(content=texts, limit=st.integers(min_value=1, max_value=40))
def test_a_token_limit_holds_where_one_character_is_several_tokens(byte_bpe, content, limit):
    encoding = byte_bpe.encode(content, add_special_tokens=False)
    starts = np.asarray([start for start, _ in encoding.offsets], dtype=np.int64)

    def count(text: str) -> int:
        return len(byte_bpe.encode(text, add_special_tokens=False).ids)

    try:
        chunks = segmenting.chunk(content, 0, len(content), segmenting.Limits(tokens=limit), starts, count)
    except segmenting.Unsplittable as exc:
        # refused only when one character alone is over the limit, and it says how many tokens that one takes
        assert count(content[exc.at]) == exc.tokens > limit
        return
    assert "".join(content[a:b] for a, b in chunks) == content
    assert all(count(content[a:b]) <= limit for a, b in chunks)


def test_runs_group_the_tokens_of_one_character(byte_bpe):
    text = "a 👨\u200d👩\u200d👧 b"
    grouped = reference_runs(byte_bpe, text)
    assert "".join(piece for piece, _ in grouped).replace(" ", "") == text.replace(" ", "")
    family = next(ids for piece, ids in grouped if "👨" in piece)
    assert len(family) > 1  # a byte-level BPE spends several tokens on it: one run holds them all


def test_chunks_end_at_paragraphs_then_sentences_where_they_can():
    paragraphs = ["First paragraph. It has two sentences.", "Second one, short.",
                  "A third paragraph that is somewhat longer. It goes on for a while. And then it ends."]
    content = "\n\n".join(paragraphs)
    chunks = [content[a:b] for a, b in segmenting.chunk(content, 0, len(content), segmenting.Limits(characters=64))]
    # two short paragraphs packed into one chunk; the long one cut after a sentence, not inside one
    assert chunks == ["First paragraph. It has two sentences.\n\nSecond one, short.\n\n",
                      "A third paragraph that is somewhat longer. ", "It goes on for a while. And then it ends."]


@pytest.mark.parametrize("limit", range(5, 12))  # the family emoji is 5 code points
def test_a_cluster_is_never_cut_when_a_limit_leaves_room_for_it(limit):
    content = "ab👨\u200d👩\u200d👧cd🇩🇪🇫🇷e\u0301\u0302f🇮🇹🇪🇸x🇦"
    chunks = [content[a:b] for a, b in segmenting.chunk(content, 0, len(content), segmenting.Limits(characters=limit))]
    assert "".join(chunks) == content
    ends = grapheme_ends(content)
    for cut in np.cumsum([len(chunk) for chunk in chunks])[:-1]:
        assert int(cut) in ends, (chunks, cut)


def test_flags_are_cut_between_their_pairs_of_regional_indicators():
    """Six regional indicators are three flags (DE, FR, IT): a window of three code points holds one flag, never a
    flag and half the next; a lone indicator after a letter is a character of its own."""
    flags = "\U0001F1E9\U0001F1EA\U0001F1EB\U0001F1F7\U0001F1EE\U0001F1F9"
    chunks = [flags[a:b] for a, b in segmenting.chunk(flags, 0, len(flags), segmenting.Limits(characters=3))]
    assert chunks == ["\U0001F1E9\U0001F1EA", "\U0001F1EB\U0001F1F7", "\U0001F1EE\U0001F1F9"]
    odd = "x\U0001F1E9\U0001F1EA\U0001F1EB"  # DE then a lone F: the pairing counts from the run's start
    assert [odd[a:b] for a, b in segmenting.chunk(odd, 0, len(odd), segmenting.Limits(characters=3))] == \
        ["x\U0001F1E9\U0001F1EA", "\U0001F1EB"]


def test_joined_agrees_with_uax29_on_every_piece_the_properties_draw():
    content = "".join(piece + separator for piece in PIECES for separator in SEPARATORS[:3])
    content += "\U0001F1E9\U0001F1EA\U0001F1EB\U0001F1F7\U0001F1EE x\U0001F1E9\r\n"
    ends = grapheme_ends(content)
    assert [at for at in range(1, len(content)) if segmenting.joined(content, at) == (at in ends)] == []


# --- over the wire, on the embedded model ---------------------------------------------------------------------------


@PROPERTIES
@given(content=texts, max_chars=st.none() | st.integers(min_value=1, max_value=200),
       max_tokens=st.none() | st.integers(min_value=1, max_value=40))
def test_segment_properties_on_the_served_tokenizer(app, hf_tokenizer, content, max_chars, max_tokens):
    body = {"content": content, "return_chunks": True, "return_tokens": True}
    if max_chars is not None:
        body["max_chunk_length"] = max_chars
    if max_tokens is not None:
        body["max_chunk_tokens"] = max_tokens
    answer = app.post("/v1/segment", body)
    if answer.status_code == 422:
        # refused only when one character alone is more tokens than the limit (a Hangul syllable is three jamo)
        assert answer.json()["code"] == "CHUNK_LIMIT_TOO_SMALL" and max_tokens is not None
        assert any(len(hf_tokenizer(char, add_special_tokens=False)["input_ids"]) > max_tokens for char in content)
        return
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["num_tokens"] == len(hf_tokenizer(content, add_special_tokens=False)["input_ids"])
    assert got["tokenizer"] == "all-MiniLM-L6-v2" and got["usage"] == {"tokens": 0}
    default = 1000 if max_chars is None and max_tokens is None else None
    check_chunks(content, got, max_chars=max_chars or default, max_tokens=max_tokens, tokenizer=hf_tokenizer)


@PROPERTIES
@given(content=texts, n=st.integers(min_value=1, max_value=30), side=st.sampled_from(["head", "tail"]))
def test_head_and_tail_keep_n_tokens_at_their_end(app, hf_tokenizer, content, n, side):
    answer = app.post("/v1/segment", {"content": content, side: n, "return_tokens": True, "return_chunks": True})
    assert answer.status_code == 200, answer.text
    got = answer.json()
    every = reference_runs(hf_tokenizer, content)
    # N tokens, or fewer where the Nth is inside the run of tokens one character takes (NFD jamo, say): never cut
    lengths = [len(ids) for _, ids in (every if side == "head" else every[::-1])]
    whole = [int(total) for total in np.cumsum([0, *lengths])]
    assert got["num_tokens"] == max(total for total in whole if total <= n)
    kept = "".join(got["chunks"])
    assert content.startswith(kept) if side == "head" else content.endswith(kept)
    if got["chunk_positions"]:
        start, end = got["chunk_positions"][0][0], got["chunk_positions"][-1][1]
        assert content[start:end] == kept and (start == 0 if side == "head" else end == len(content))
    # without chunks, the tokens are the content's first (last) ones, as read in the whole content
    plain = app.post("/v1/segment", {"content": content, side: n, "return_tokens": True}).json()
    ids = [i for _, run in every for i in run]
    kept_ids = [i for _, run in plain["tokens"][0] for i in run]
    kept = got["num_tokens"]
    assert kept_ids == (ids[:kept] if side == "head" else ids[len(ids) - kept:])


def test_segment_answers_jinas_shape(app, document):
    content = "Jina AI: Your Search Foundation, Supercharged! 🚀\nIhrer Suchgrundlage, aufgeladen! 🚀\n您的搜索底座,从此不同!🚀"
    plain = app.post("/v1/segment", {"content": content})
    assert plain.status_code == 200, plain.text
    assert plain.json() == {"num_tokens": 38, "tokenizer": "all-MiniLM-L6-v2", "usage": {"tokens": 0}}
    full = app.post("/v1/segment", {"content": content, "return_chunks": True, "return_tokens": True,
                                    "max_chunk_length": 40})
    assert set(full.json()) == {"num_tokens", "tokenizer", "usage", "num_chunks", "chunk_positions", "chunks", "tokens"}
    for answer in (plain, full):
        assert_documented(document, "post", "/v1/segment", answer)


def test_segment_on_invocations_and_in_json_lines(app, document):
    body = {"content": "One sentence. Another sentence.", "return_chunks": True, "max_chunk_length": 16}
    direct = app.post("/v1/segment", body).json()
    invoked = app.post("/invocations", body)
    assert invoked.status_code == 200 and invoked.json() == direct
    assert_documented(document, "post", "/invocations", invoked)
    lines = app.post("/invocations", data=orjson.dumps(body) + b"\n" + orjson.dumps({**body, "head": 2}),
                     headers={"Content-Type": "application/jsonlines"})
    assert lines.status_code == 200, lines.text
    first, second = (json.loads(line) for line in lines.text.splitlines())
    assert first == direct and second["num_tokens"] == 2


@pytest.mark.parametrize(("body", "code", "named"), [
    ({"content": "x", "tokenizer": "cl100k_base"}, "UNKNOWN_TOKENIZER", "all-MiniLM-L6-v2"),
    ({"content": "x", "head": 2, "tail": 2}, "INVALID_OPTION", "either head or tail"),
    ({"content": "x", "max_chunk_tokens": 0, "return_chunks": True}, "INVALID_OPTION", "max_chunk_tokens"),
    ({"content": "x", "max_chunk_length": -1}, "INVALID_OPTION", "max_chunk_length"),
    ({"content": 3}, "VALIDATION_ERROR", "`content` must be a string"),
    ({"content": "x", "return_chunks": "maybe"}, "VALIDATION_ERROR", "return_chunks"),
])
def test_segment_refusals_name_the_fix(app, document, body, code, named):
    answer = app.post("/v1/segment", body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == code and named in answer.json()["detail"]
    assert_documented(document, "post", "/v1/segment", answer)


def test_the_served_models_name_is_its_tokenizer(app):
    for name in ("all-MiniLM-L6-v2", "ALL-MINILM-L6-V2"):
        assert app.post("/v1/segment", {"content": "x", "tokenizer": name}).status_code == 200


def test_tokenize_counts_what_an_embeddings_request_bills(app, hf_tokenizer, document):
    texts = ["hello", "Zürich and 你好 👍🏽", "a longer sentence, with punctuation!", "word " * 300]
    answer = app.post("/v1/tokenize", {"input": texts, "return_tokens": True})
    assert answer.status_code == 200, answer.text
    assert_documented(document, "post", "/v1/tokenize", answer)
    got = answer.json()
    assert got["usage"] == {"total_tokens": 0} and got["max_length"] == 256 and got["model"] == "all-MiniLM-L6-v2"
    for text, item in zip(texts, got["data"]):
        expected = hf_tokenizer(text)["input_ids"]  # special tokens included, no truncation
        assert item["ids"] == expected and item["num_tokens"] == len(expected)
        assert item["tokens"] == hf_tokenizer.convert_ids_to_tokens(expected)
        billed = app.post("/v1/embeddings", {"input": [text]}).json()["usage"]["total_tokens"]
        assert billed == min(item["num_tokens"], got["max_length"])  # what embeddings bill, before truncation
    bare = app.post("/v1/tokenize", {"input": "hello"}).json()
    assert bare["data"] == [{"object": "tokenization", "index": 0, "num_tokens": 3}]


def test_tokenize_refuses_what_it_cannot_read(app, document):
    image = app.post("/v1/tokenize", {"input": [{"image": "aGVsbG8="}]})
    assert image.status_code == 400 and image.json()["code"] == "UNSUPPORTED_INPUT"
    missing = app.post("/v1/tokenize", {"inputs": ["x"]})
    assert missing.status_code == 422 and "`input`" in missing.json()["detail"]
    for answer in (image, missing):
        assert_documented(document, "post", "/v1/tokenize", answer)


@pytest.mark.app
def test_neither_is_billed_more_than_awss_minimum(tmp_path_factory, minilm_dir):
    from helpers import serving
    from test_operating import METERING, metered_dir

    for metering in ({"unit": "input"}, {"unit": "tokens", "tokens_per_unit": 1}):
        with serving(metered_dir(tmp_path_factory, minilm_dir, metering)) as app:
            for path, body in (("/v1/tokenize", {"input": ["one text", "two texts", "three"]}),
                               ("/v1/segment", {"content": "word " * 500, "return_chunks": True}),
                               ("/invocations", {"content": "word " * 500})):
                answer = app.post(path, body)
                assert answer.status_code == 200, answer.text
                # AWS counts every 2xx once; nothing in these answers is billed beyond that
                assert json.loads(answer.headers[METERING])["ConsumedUnits"] == 1
                assert answer.headers["X-Compute-Tokens"] == "0"


@pytest.fixture(scope="module")
def document(app):
    return app.get("/openapi.json").json()


SAMPLES = [None, True, False, "true", "yes", "", 0, 1, -3, 12, 12.0, 1.5, "12", " 7 ", "²", 10**19, [1], {"a": 1},
           "cl100k_base"]


@pytest.mark.parametrize("option", [*segment_dialect.OPTIONS, tokenize_dialect.RETURN_TOKENS],
                         ids=lambda option: option.name)
def test_each_options_schema_accepts_what_its_parser_reads(option):
    validator = Draft202012Validator(option.property_schema())
    for value in SAMPLES:
        try:
            option.read(value, option.name)
            parsed = True
        except ValidationFailed:
            parsed = False
        assert validator.is_valid(value) == parsed, (option.name, value)


scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=30)
hostile = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=st.fixed_dictionaries({"content": hostile}, optional={
    name: hostile for name in ("tokenizer", "return_tokens", "return_chunks", "max_chunk_length", "max_chunk_tokens",
                               "head", "tail")}), path=st.sampled_from(["/v1/segment", "/invocations", "/v1/tokenize"]))
def test_any_body_gets_an_answer_or_the_contracts_error(app, body, path):
    if path == "/v1/tokenize":
        body = {"input": body.pop("content"), **body}
    answer = app.post(path, data=json.dumps(body))  # the standard library writes integers past 64 bits too
    assert answer.status_code in (200, 400, 413, 422), answer.text
    if answer.status_code != 200:
        assert set(answer.json()) == {"detail", "code", "request_id"}


# --- README ---------------------------------------------------------------------------------------------------------


def readme_calls() -> list[tuple[str, dict]]:
    """The (path, body) of each curl in README's "Tokenize and segment" section."""
    section = README.read_text(encoding="utf-8").split("## Tokenize and segment", 1)[1].split("\n## ", 1)[0]
    return [(path, json.loads(body)) for path, body in
            re.findall(r"curl -s localhost:8080(\S+) .*?\n\s*-d '(.*?)'", section, flags=re.S)]


def test_readme_curls_answer_on_a_real_server(server):
    import requests

    calls = readme_calls()
    assert [path for path, _ in calls] == ["/v1/tokenize", "/v1/segment", "/invocations", "/v1/segment"]
    answers = [requests.post(server.url + path, json=body, timeout=30) for path, body in calls]
    counted, segmented, invoked, refused = answers
    assert counted.status_code == 200 and counted.json()["data"][0]["tokens"][0] == "[CLS]"
    assert segmented.status_code == 200 and "".join(segmented.json()["chunks"]) == calls[1][1]["content"]
    assert all(len(chunk) <= calls[1][1]["max_chunk_length"] for chunk in segmented.json()["chunks"])
    assert invoked.status_code == 200 and invoked.json()["num_chunks"] >= 2
    assert refused.status_code == 422 and refused.json()["code"] == "UNKNOWN_TOKENIZER"
