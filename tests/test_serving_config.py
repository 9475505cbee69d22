"""searchbox.json and what a model directory says of itself (no torch involved)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from model_handlers.errors import ModelDirectoryError
from model_handlers.serving_config import TaskSpec, read_serving_config


@pytest.fixture
def model_copy(tmp_path, minilm_dir):
    target = tmp_path / "my-embedder"
    shutil.copytree(minilm_dir, target)
    return target


def test_sentence_transformers_directory_is_an_embedding_model(model_copy):
    config = read_serving_config(model_copy)
    assert config.kind.name == "embedding"
    assert config.served_model_name == "my-embedder"
    assert config.task_spec("retrieval.query") == TaskSpec()


def test_searchbox_json_wins(model_copy):
    (model_copy / "searchbox.json").write_text(json.dumps({
        "served_model_name": "e5-ish", "max_length": 128, "default_task": "retrieval.passage",
        "tasks": {"retrieval.query": {"prompt": "query: "}, "retrieval.passage": "passage: ",
                  "classification": {"adapter": "cls"}},
        "matryoshka_dimensions": [64, 128],
    }))
    config = read_serving_config(model_copy)
    assert config.served_model_name == "e5-ish" and config.max_length == 128
    assert config.task_spec("retrieval.query").prompt == "query: "
    assert config.task_spec("classification").adapter == "cls"
    # an unknown task falls back to the default task, it is not an error
    assert config.task_spec("separation").prompt == "passage: "
    assert config.matryoshka_dimensions == (64, 128)


def test_prompts_of_a_sentence_transformers_config_become_tasks(model_copy):
    st_config = model_copy / "config_sentence_transformers.json"
    st_config.write_text(json.dumps({"prompts": {"query": "query: ", "document": "passage: "},
                                     "default_prompt_name": None}))
    config = read_serving_config(model_copy)
    assert config.task_spec("retrieval.query").prompt == "query: "
    assert config.task_spec("retrieval.passage").prompt == "passage: "


def test_sequence_classification_config_is_a_reranker(model_copy):
    hf_config = json.loads((model_copy / "config.json").read_text())
    hf_config["architectures"] = ["BertForSequenceClassification"]
    (model_copy / "config.json").write_text(json.dumps(hf_config))
    assert read_serving_config(model_copy).kind.name == "reranker"


def test_pickled_weights_are_refused_unless_allowed(model_copy):
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    with pytest.raises(ModelDirectoryError, match="safetensors.*SEARCHBOX_ALLOW_PICKLE"):
        read_serving_config(model_copy)
    assert read_serving_config(model_copy, allow_pickle=True).kind.name == "embedding"


@pytest.mark.parametrize("content,message", [
    ({"kind": "colbert-ish"}, "unknown kind 'colbert-ish'"),
    ({"tasks": {"q": 5}}, "task 'q' must be"),
    ({"max_length": "long"}, "max_length must be"),
    ({"score_activation": "softmax"}, "score_activation"),
])
def test_bad_searchbox_json_names_the_key(model_copy, content, message):
    (model_copy / "searchbox.json").write_text(json.dumps(content))
    with pytest.raises(ModelDirectoryError, match=message):
        read_serving_config(model_copy)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        read_serving_config(tmp_path / "missing")
    with pytest.raises(ModelDirectoryError, match="not a model directory"):
        read_serving_config(tmp_path)



@pytest.mark.parametrize("name,content,message", [
    ("config.json", "{\"architectures\": [", r"config\.json is not valid JSON"),
    ("config_sentence_transformers.json", "{prompts", r"config_sentence_transformers\.json is not valid JSON"),
    ("modules.json", "{\"idx\": 0}", r"modules\.json must hold a JSON list of objects"),
    ("searchbox.json", "[1, 2]", r"searchbox\.json must hold a JSON object"),
])
def test_a_broken_file_is_refused_naming_it_not_read_as_absent(model_copy, name, content, message):
    """One policy for every JSON file of a model directory: a file that is there but broken is a load error naming
    it (an absent one reads as empty: the plain copy above serves)."""
    (model_copy / name).write_text(content)
    with pytest.raises(ModelDirectoryError, match=message):
        read_serving_config(model_copy)


@pytest.mark.unit
@pytest.mark.parametrize("files,served", [
    # sentence-transformers' max_seq_length wins over the tokenizer and the positions
    ({"sentence_bert_config.json": {"max_seq_length": 256}, "tokenizer_config.json": {"model_max_length": 512},
      "config.json": {"max_position_embeddings": 512}}, 256),
    # else the smaller of the tokenizer's and the positions
    ({"tokenizer_config.json": {"model_max_length": 8192}, "config.json": {"max_position_embeddings": 8194}}, 8192),
    ({"tokenizer_config.json": {"model_max_length": 128}, "config.json": {"max_position_embeddings": 130}}, 128),
    # transformers' "no limit" placeholder is no length: a 514-entry RoBERTa table alone holds 512
    ({"tokenizer_config.json": {"model_max_length": 1e30}, "config.json": {"max_position_embeddings": 514}}, 512),
    ({"tokenizer_config.json": {"model_max_length": 1000000000000000019884624838656},
      "config.json": {"max_position_embeddings": 512}}, 512),
    # a tokenizer alone, and nothing at all
    ({"tokenizer_config.json": {"model_max_length": 77}}, 77),
    ({}, 512),
])
def test_the_served_length_is_what_the_checkpoint_declares(tmp_path, files, served):
    from model_handlers.lengths import Lengths

    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    assert Lengths.read(tmp_path).served() == served
    assert Lengths.read(tmp_path).served(96) == 96  # searchbox.json's max_length wins over all of them



@pytest.mark.unit
def test_readme_names_every_registered_kind():
    """README's list of `kind` values is the registry's: a kind added (or renamed) there is one a user can name."""
    from model_handlers import kinds

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    sentence = re.search(r"^`kind` is (.*?) \(else it is told from the files[;)]", readme, re.MULTILINE)
    assert sentence, "README lost its sentence naming the kinds"
    assert sorted(re.findall(r"`([^`]+)`", sentence.group(1))) == sorted(kind.name for kind in kinds.registered())
