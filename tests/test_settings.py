"""Settings come from a given environment mapping, read once; the model directory rules of issue 2."""

from __future__ import annotations


import pytest

from container import settings as settings_module
from container.settings import Settings, SettingsError, embedded_model_dir


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
