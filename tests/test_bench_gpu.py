"""bench/gpu.py's dry run: the GPU measurement runs end to end on the CPU (tiny models, fractions of a second per
figure), so that it still works on the day a GPU is lent. Its table must hold every row README's "Performance"
section names, and figures that agree with each other: what can rot in a script nobody runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]

# the rows README promises, written out here (never read from bench/gpu.py)
TEXT = ["1 client × 1 text", "32 clients × 1 text", "1 client × 32 texts", "4 clients × 32 texts",
        "4 clients × 8 long texts (~250 tokens)"]
EXPECTED_ROWS = (
    [("all-MiniLM-L6-v2", scenario, "texts/s") for scenario in TEXT]
    + [("BERT tiny (random)", scenario, "texts/s") for scenario in TEXT]
    + [("BERT tiny cross-encoder (random)", "rerank 1 client × 20 documents", "documents/s"),
       ("BERT tiny cross-encoder (random)", "rerank 4 clients × 20 documents", "documents/s"),
       ("CLIP tiny", "1 client × 16 images", "images/s"),
       ("CLIP tiny", "16 clients × 1 image", "images/s")]
)
# examples/tiny_clip.py's tiny CLIP: 32 px images in 8 px patches, so (32 / 8)² patches and the class token
TINY_CLIP_IMAGE_TOKENS = 17


def _tokens_per_input(tokens_per_s: float, per_s: float) -> tuple[float, float]:
    """Tokens per input from two printed figures, and how far the printed rounding (tokens/s to 1, inputs/s to 0.1)
    can move it."""
    estimate = tokens_per_s / per_s
    return estimate, (0.5 + estimate * 0.05) / (per_s - 0.05)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[str, str]:
    out = tmp_path_factory.mktemp("gpu") / "gpu.md"
    result = subprocess.run([sys.executable, "-m", "bench.gpu", "--dry-run", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out.read_text(), result.stdout


def _rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].split(" | ")[3:6] == ["limit (in-process)", "searchbox", "searchbox / limit"], lines[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_the_dry_run_prints_the_table_it_writes_with_every_scenario(dry_run):
    table, stdout = dry_run
    assert table.strip() in stdout
    assert "- device: cpu" in table and "float32" in table
    assert [tuple(row[:3]) for row in _rows(table)] == EXPECTED_ROWS


def test_every_figure_is_positive_and_the_ratios_are_those_of_the_printed_figures(dry_run):
    for model, scenario, _, limit, served, ratio, *_ in _rows(dry_run[0]):
        limit, served = float(limit), float(served)
        assert limit > 0 and served > 0, (model, scenario)
        # each printed figure is within 0.05 of the one the ratio was taken from, the ratio within 0.005 of its own
        slack = 0.005 + 0.05 * (1 + served / limit) / (limit - 0.05)
        assert ratio.endswith("×") and abs(float(ratio[:-1]) - served / limit) <= slack, (model, scenario, ratio)


def test_tokens_per_second_count_the_same_inputs_on_both_sides_and_as_many_tokens_as_they_hold(dry_run):
    for model, scenario, unit, limit, served, _, limit_tokens, served_tokens, *_ in _rows(dry_run[0]):
        by_limit, limit_error = _tokens_per_input(float(limit_tokens), float(limit))
        by_server, server_error = _tokens_per_input(float(served_tokens), float(served))
        assert abs(by_limit - by_server) <= limit_error + server_error, (model, scenario)
        if unit == "images/s":
            assert abs(by_server - TINY_CLIP_IMAGE_TOKENS) <= server_error, (scenario, by_server)
        elif "long texts" in scenario:
            # bench/texts.py cuts each long text to 250 word pieces at most; [CLS] and [SEP] come on top
            assert 240 <= by_server <= 252 + server_error, (model, scenario, by_server)
        elif unit == "texts/s":
            # the short texts are of 12-25 word pieces (bench/texts.py), and [CLS] and [SEP]
            assert 14 - server_error <= by_server <= 27 + server_error, (model, scenario, by_server)
        else:
            # a pair: the query's word pieces, a short text's, [CLS] and two [SEP]
            assert 20 <= by_server <= 45, (scenario, by_server)
