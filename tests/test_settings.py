"""Settings come from a given environment mapping, read once; the model directory rules of issue 2."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from container import settings as settings_module
from container.settings import Settings, SettingsError
from model_handlers.embedded import EmbeddedModelMissing, embedded_model_dir
from model_handlers.options import HandlerOptions


@pytest.fixture(autouse=True)
def no_sagemaker_dir(monkeypatch, tmp_path):
    """Point the SageMaker mount at an empty folder, whatever this machine has at /opt/ml/model."""
    empty = tmp_path / "opt-ml-model"
    empty.mkdir()
    monkeypatch.setattr(settings_module, "SAGEMAKER_MODEL_DIR", empty)
    return empty


def test_defaults_serve_the_embedded_model_on_8080():
    settings = Settings.from_env({})
    assert settings.model_dir == embedded_model_dir()
    assert (settings.model_dir / "model.safetensors").is_file()
    assert settings.model_name == "all-MiniLM-L6-v2"
    assert settings.port == 8080
    assert settings.max_payload_bytes == 6 * 1024 * 1024
    assert settings.max_inputs == 2048


def test_model_dir_precedence(tmp_path, no_sagemaker_dir):
    explicit, azure = tmp_path / "explicit", tmp_path / "azure"
    explicit.mkdir(), azure.mkdir()
    (azure / "config.json").write_text("{}")
    (no_sagemaker_dir / "config.json").write_text("{}")
    assert Settings.from_env({"SEARCHBOX_MODEL_DIR": str(explicit), "AZUREML_MODEL_DIR": str(azure)}).model_dir == explicit
    assert Settings.from_env({"AZUREML_MODEL_DIR": str(azure)}).model_dir == azure
    chosen = Settings.from_env({})
    assert chosen.model_dir == no_sagemaker_dir and chosen.model_name is None


def test_azure_single_subdirectory_holding_the_model(tmp_path):
    root = tmp_path / "azureml-models" / "embedder" / "1"
    (root / "my-model").mkdir(parents=True)
    (root / "my-model" / "config.json").write_text("{}")
    assert Settings.from_env({"AZUREML_MODEL_DIR": str(root)}).model_dir == root / "my-model"


def test_port_payload_and_names_from_env():
    settings = Settings.from_env({"SAGEMAKER_BIND_TO_PORT": "9001", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
                                  "SEARCHBOX_MODEL_NAME": "my-embedder", "SEARCHBOX_ALLOW_PICKLE": "true"})
    assert settings.port == 9001
    assert settings.max_payload_bytes == 20 * 1024 * 1024
    assert settings.model_name == "my-embedder"
    assert settings.allow_pickle is True
    assert Settings.from_env({"SEARCHBOX_MAX_PAYLOAD_MB": "1", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"}).max_payload_bytes == 1024 * 1024


def test_sagemaker_unbounded_payload_is_batch_transforms_ceiling():
    """MaxPayloadInMB=0 means bodies of any size; the server must start and take up to 100 MB."""
    settings = Settings.from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"})
    assert settings.max_payload_bytes == 100 * 1024 * 1024
    assert settings.transform_max_payload_mb == 100


@pytest.mark.parametrize("name,value", [("SAGEMAKER_BIND_TO_PORT", "http"), ("SEARCHBOX_THREADS", "0"),
                                        ("SEARCHBOX_MAX_BATCH_TOKENS", "-5")])
def test_bad_numbers_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_library_environment_is_offline_and_keeps_the_users_choices():
    env = {"HF_HUB_OFFLINE": "0", "OMP_WAIT_POLICY": "ACTIVE"}
    settings_module.apply_library_environment(env)
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"
    fresh = {}
    settings_module.apply_library_environment(fresh)
    assert fresh["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("name,value,fragment", [("SAGEMAKER_BIND_TO_PORT", "70000", "1 to 65535"),
                                                 ("SEARCHBOX_LOG_LEVEL", "loud", "DEBUG, INFO")])
def test_port_range_and_log_level_are_checked(name, value, fragment):
    with pytest.raises(SettingsError, match=name) as raised:
        Settings.from_env({name: value})
    assert fragment in str(raised.value)
    assert Settings.from_env({"SEARCHBOX_LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_a_model_archive_is_only_named_by_the_settings(tmp_path):
    """Reading the settings stays pure: `serve` unpacks an archive at start, from_env only names it."""
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"not read here")
    before = sorted(tmp_path.rglob("*"))
    assert Settings.from_env({"SEARCHBOX_MODEL_DIR": str(archive)}).model_dir == archive
    assert sorted(tmp_path.rglob("*")) == before


def test_every_variable_is_in_the_settings_table_and_the_readme():
    """`serve --help` and the README's Configuration table are made from SETTINGS: it must name every variable the
    server reads, and the README must hold the table as SETTINGS makes it (`python -m container.settings --readme`)."""
    constants = {value for name, value in vars(settings_module).items() if name.startswith("ENV_")}
    documented = [setting.name for setting in settings_module.SETTINGS]
    assert sorted(documented) == sorted(constants)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    configuration = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    assert [name for name in documented if f"`{name}`" not in configuration] == []
    assert settings_module.markdown_table() in configuration, "run: .venv/bin/python -m container.settings --readme"


def test_settings_are_read_without_the_embedded_model(monkeypatch, tmp_path):
    """Only a server that nothing else names a model for looks for the embedded one."""
    def missing():
        raise EmbeddedModelMissing("not installed here")

    monkeypatch.setattr(settings_module, "embedded_model_dir", missing)
    settings = Settings.from_env({"SEARCHBOX_MODEL_DIR": str(tmp_path), "SEARCHBOX_MAX_INPUTS": "7"})
    assert (settings.model_dir, settings.model_name, settings.max_inputs) == (tmp_path, None, 7)
    with pytest.raises(SettingsError, match="no model to serve"):
        Settings.from_env({})


def test_the_handlers_options_are_the_tables():
    """A setting the handler takes has the handler's default, and reaches it under the name the table gives."""
    assert Settings.from_env({"SEARCHBOX_MODEL_DIR": "/models/x"}).handler_options() == HandlerOptions()
    options = Settings.from_env({"SEARCHBOX_MODEL_DIR": "/models/x", "SEARCHBOX_MAX_RERANK_WINDOWS": "7",
                                 "SEARCHBOX_IMAGE_FETCH_MAX_MB": "2", "SEARCHBOX_DEFAULT_INPUT_TYPE": "Query",
                                 "SEARCHBOX_MODEL_NAME": "mine", "SEARCHBOX_BACKEND": "ONNX",
                                 "SEARCHBOX_REQUEST_TIMEOUT_S": "5"}).handler_options()
    assert (options.max_rerank_windows, options.images.fetch_max_bytes, options.default_input_type,
            options.served_model_name, options.backend, options.request_timeout_s) == (
        7, 2 * 1024 * 1024, "query", "mine", "onnx", 5.0)
    attributes = {field.name for field in dataclasses.fields(Settings)}
    assert {setting.attribute for setting in settings_module.SETTINGS if setting.attribute} == attributes - {
        "model_dir", "model_source"}



def test_every_handler_option_is_a_setting_or_its_callers_own():
    """The model layer's options (model_handlers/options.py) and the table's rows name each other: an option added
    there without a row would never reach a server."""
    from model_handlers.options import ImageOptions

    set_by_rows = {setting.handler for setting in settings_module.SETTINGS if setting.handler}
    options = {field.name for field in dataclasses.fields(HandlerOptions)} - {"images"}
    options |= {f"images.{field.name}" for field in dataclasses.fields(ImageOptions)}
    # what no operator sets: the batcher's item bound (scripts choose it) and the metrics observer (the server's)
    assert set_by_rows == options - {"max_batch_items", "observer"}

# The words `shown` uses for a default: nothing is set here (the model directory, nginx's PATH, the libraries or
# SageMaker's job chooses), or a switch's state; anything else is a number (MiB for a variable in _MB) or a value.
NOTHING = {"none", "unset", "chosen", "dir name", "one per core", "searchbox.json's, else torch",
           "nginx on PATH, or /usr/sbin/nginx"}
SWITCH = {"off": False, "on": True}
PER_DEVICE = re.compile(r"(\d+) on CPU, (\d+) on a GPU")


def agrees(name: str, text: str, actual) -> bool:
    """Whether the default `text` says is the value read from an environment that does not set `name`."""
    if text in NOTHING:
        return actual is None or actual == () or actual is False
    if text in SWITCH:
        return actual is SWITCH[text]
    if text == "auto":  # passed on as auto, or left to `serve` to choose (None)
        return actual in ("auto", None)
    try:
        number = float(text)
    except ValueError:
        return actual == text
    return actual == number * (1024 * 1024 if name.endswith("_MB") else 1)


def test_every_shown_default_is_the_real_one():
    """`serve --help` and the README write each default as text: it must be what an empty environment gives."""
    base = {"SEARCHBOX_MODEL_DIR": "/models/x"}
    plain, asynchronous = Settings.from_env(base), Settings.from_env({**base, "SEARCHBOX_ASYNC": "1"})
    wrong = []
    for setting in settings_module.SETTINGS:
        if setting.attribute is None:  # the model directory's variables: test_model_dir_precedence
            continue
        name, actual, when_async = setting.name, getattr(plain, setting.attribute), None
        text = setting.shown
        if text not in NOTHING:
            text, _, when_async = text.partition("; ")
        per_device = PER_DEVICE.fullmatch(text)
        if per_device:
            options = plain.handler_options()
            found = (options.resolved_max_batch_tokens("cpu"), options.resolved_max_batch_tokens("cuda"))
            if found != tuple(int(number) for number in per_device.groups()):
                wrong.append(f"{name}: shown {text!r}, real {found}")
        else:
            text, _, instead = text.partition(", or ") if text not in NOTHING else (text, "", "")
            if not agrees(name, text, actual):
                wrong.append(f"{name}: shown {text!r}, real {actual!r}")
            # "or VARIABLE": that variable's value when it is set
            if instead and getattr(Settings.from_env({**base, instead: "20"}), setting.attribute) != 20 * 1024 * 1024:
                wrong.append(f"{name}: does not follow {instead}")
        in_async = getattr(asynchronous, setting.attribute)
        if when_async:
            expected, _, switch = when_async.partition(" when ")
            if switch != "SEARCHBOX_ASYNC" or not agrees(name, expected, in_async):
                wrong.append(f"{name}: shown {when_async!r}, real {in_async!r} when SEARCHBOX_ASYNC")
        elif in_async != actual and name != "SEARCHBOX_ASYNC":
            wrong.append(f"{name}: SEARCHBOX_ASYNC changes it to {in_async!r}, shown does not say so")
    assert wrong == []
