"""The serving config of a model directory: `searchbox.json`, or what the directory itself says.

Pure file inspection, no torch: `serve` calls it in the gunicorn master to refuse a directory that
would not serve before any worker starts. Every JSON file is read through model_handlers/model_files.py (absent:
empty; not valid JSON, or not the object it must be: refused, naming the file).

`searchbox.json` (every key optional):

    {"kind": "embedding" | "reranker" | "generative-reranker" | "listwise-reranker" | "vision-language-reranker"
             | "multimodal" | "vision-language-embedding" | "multi-vector" | "sparse" | "bge-m3"
             (the registered kinds: model_handlers/kinds/__init__.py),
     "served_model_name": "jina-embeddings-v3",
     "max_length": 8192,
     "default_task": "text-matching",
     "tasks": {"retrieval.query": {"prompt": "query: "}, "retrieval.passage": "passage: ",
               "classification": {"adapter": "classification"}},
     "matryoshka_dimensions": [32, 64, 128, 256, 512, 768, 1024],
     "score_activation": "sigmoid" | "tanh" | "none",
     "rerank_window_tokens": 256, "rerank_window_overlap": 64, "max_query_tokens": 128,
     "metering": {"unit": "request" | "input" | "tokens", "tokens_per_unit": 1000},
     "backend": "torch" | "onnx", "onnx_file": "onnx/model_int8.onnx",
     "image_tile_size": 224, "image_tile_tokens": 1000,
     "default_input_type": "query" | "document",
     "adapters": {"legal": "adapters/legal"},
     "model_code": "native" | "remote"}

`backend` ("torch" or "onnx") and `onnx_file` (default onnx/model.onnx) choose the compute path; packaging writes
them (model_handlers/onnx_runtime.py). `metering` (model_handlers/metering.py): sold per inference on AWS
Marketplace, each 2xx reports the units it consumed; without it the model is priced per hour.

Plus the keys a kind reads itself (its `read_settings`; the multi-vector kind's are in
model_handlers/kinds/multi_vector.py).
`default_input_type` is the `input_type` of requests that give none (batch transform CSV rows give none), for
a whole job; the operator's SEARCHBOX_DEFAULT_INPUT_TYPE wins over it.

Tasks (README "Task adapters"): `tasks` maps a task name to a prompt and/or an adapter; without it, the tasks
config.json declares (`lora_adaptations`, each with its `task_instructions` prompt and its LoRA adapter:
jina-embeddings-v3, read natively, or any model whose own code takes `adapter_mask`; a directory declaring tasks
neither way applies is refused), else one PEFT LoRA adapter per task in `adapters/<task>/` for the tasks config.json
names in `task_names` (jina-embeddings-v5-text: a task matrix, each task's adapter with the side's `query` or
`document` prompt; some tasks without their adapter is refused, none at all is a pre-merged single-task model, served
plainly), else the prompts a sentence-transformers model declares. `adapters` names PEFT LoRA directories inside the
model directory, held from the start (besides those of `task_names`); a task or a request's `adapter` selects them.
A request naming a task the model does not have is refused when the model's tasks select adapters (the model's
own code refuses it: a typo must not answer other vectors); on a model whose tasks are prompts only, it falls back
to the default task (contract §2a). `model_code`: "remote" serves a checkpoint searchbox knows natively (v3) with
the code the directory ships instead (it must be allowed to run: README "Model code").

Rerank windows (README "Rerank"): a document longer than fits beside the query is scored in windows of
`rerank_window_tokens` (default: all the room the query leaves) overlapping by `rerank_window_overlap`
(default: a quarter of the window); a cross-encoder keeps at most `max_query_tokens` of the query
(default: half of the room in one input). `score_activation` defaults to what sentence-transformers'
CrossEncoder would apply: the activation saved in config.json (Sigmoid, Tanh or Identity; any other class is
refused rather than served as something else), else sigmoid.

Image usage (multimodal models, Jina's published rule): an image is covered by square tiles of
`image_tile_size` pixels, a partial tile counting whole, and each tile costs `image_tile_tokens` tokens.
The defaults are clip-v1's (224 px x 1000 tokens); clip-v2-style models set 512 and 4000.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from model_handlers import jina_v3, jina_v4, kinds, model_code
from model_handlers.classifiers import TrainedClassifier, read_classifiers
from model_handlers.adapters import declared_adapters
from model_handlers.errors import InvalidOption, ModelDirectoryError
from model_handlers.kinds import Kind, ModelFiles
from model_handlers.metering import Metering, parse_metering
from model_handlers.model_files import read_object
from model_handlers.onnx_runtime import BACKENDS, DEFAULT_ONNX_FILE
from model_handlers.types import INPUT_TYPE_TASKS, TASK_INPUT_TYPES

CONFIG_FILE = "searchbox.json"

# A task matrix's prompt names end in the side they embed (jina-code-embeddings: `nl2code_query`, `nl2code_document`):
# the `input_type` each suffix answers.
_SIDE_SUFFIXES = {"query": "query", "document": "document", "passage": "document"}
# The tasks clients send whatever the model (the jina-sagemaker client's defaults, searchbox's own rerank path): on a
# model with a task matrix they fall back to the default task, as an unknown task does on a model of prompts.
_GENERIC_TASKS = frozenset({"retrieval.query", "retrieval.passage"})

# Common prompt names in sentence-transformers configs, mapped to the task names clients send.
_TASK_ALIASES = {
    "retrieval.query": ("retrieval.query", "query", "search_query"),
    "retrieval.passage": ("retrieval.passage", "document", "passage", "search_document"),
}


@dataclass(frozen=True)
class TaskSpec:
    """What a task selects: a text prompt prepended to each input, and/or a named adapter."""

    prompt: str = ""
    adapter: str | None = None


@dataclass(frozen=True)
class ServingConfig:
    kind: Kind
    served_model_name: str
    max_length: int | None = None
    default_task: str | None = None
    tasks: Mapping[str, TaskSpec] = field(default_factory=dict)
    matryoshka_dimensions: tuple[int, ...] = ()
    score_activation: str = "sigmoid"
    rerank_window_tokens: int | None = None
    rerank_window_overlap: int | None = None
    max_query_tokens: int | None = None
    # AWS Marketplace per-inference pricing: what one unit is; None: priced per hour, no metering header
    metering: Metering | None = None
    # the compute path: "torch" (the model's own code), or "onnx" (ONNX Runtime on `onnx_file`, exported at build)
    backend: str = "torch"
    onnx_file: str = DEFAULT_ONNX_FILE
    image_tile_size: int = 224
    image_tile_tokens: int = 1000
    default_input_type: str | None = None
    # What the kind's own `read_settings` made of the directory (None for kinds without settings of their own).
    kind_settings: Any = None
    # PEFT LoRA directories inside the model directory, by adapter name, held from the start
    adapters: Mapping[str, Path] = field(default_factory=dict)
    # "remote": run the directory's own code even where searchbox knows the architecture; None: native where known
    model_code: str | None = None
    # few-shot classifiers trained into the artifact (classifiers/<name>.json), by name
    classifiers: Mapping[str, TrainedClassifier] = field(default_factory=dict)

    @property
    def adapter_tasks(self) -> bool:
        """Whether the model's tasks select adapters (then an unknown task is refused, not defaulted)."""
        return any(spec.adapter for spec in self.tasks.values())

    def task_spec(self, task: str | None) -> TaskSpec:
        """The spec for `task`; an unknown or missing task falls back to the default (contract §2a)."""
        if task is not None and task in self.tasks:
            return self.tasks[task]
        if self.default_task is not None and self.default_task in self.tasks:
            return self.tasks[self.default_task]
        return TaskSpec()

    @cached_property
    def task_matrix(self) -> dict[str, dict[str, str]]:
        """{task: {input_type: prompt name}} of a model whose prompts are named `<task>_<side>` (jina-code-embeddings'
        `nl2code_query` and `nl2code_document`): a task embeds queries and documents with prompts of their own."""
        matrix: dict[str, dict[str, str]] = {}
        for name in self.tasks:
            base, _, suffix = name.rpartition("_")
            if base and suffix in _SIDE_SUFFIXES:
                matrix.setdefault(base, {})[_SIDE_SUFFIXES[suffix]] = name
        return matrix

    def resolve_task(self, task: str | None, input_type: str | None = None, adapter: str | None = None) -> TaskSpec:
        """What a request selects: its `task`, else the retrieval task of its `input_type`, else the default; a
        request's `adapter` takes the place of the adapter the task selects. On a model with a task matrix, `task`
        names a row (`nl2code`, or with its side: `nl2code.query`, `nl2code.passage`) and `input_type` the side.

        Raises:
            InvalidOption: a `task` this model does not have, on a model whose tasks select adapters or form a matrix;
                a task of a matrix without its side.
        """
        if self.task_matrix and task not in self.tasks:
            spec = self._matrix_task(task, input_type)
            return spec if adapter is None else TaskSpec(prompt=spec.prompt, adapter=adapter)
        if task is not None and task not in self.tasks and self.adapter_tasks:
            raise InvalidOption(f"model {self.served_model_name} has no task {task!r}; its tasks are "
                                f"{', '.join(sorted(self.tasks))} (or no task: the base model)", code="UNKNOWN_TASK")
        spec = self.task_spec(task if task is not None else INPUT_TYPE_TASKS.get(input_type or ""))
        return spec if adapter is None else TaskSpec(prompt=spec.prompt, adapter=adapter)

    def _matrix_task(self, task: str | None, input_type: str | None) -> TaskSpec:
        """The prompt of a task matrix's row and side (`resolve_task`); no task, or a generic retrieval task, is the
        default task's row, and no default task is no prompt. An `input_type` without a task asks for its retrieval
        task (`retrieval.query` / `retrieval.passage`), which a matrix with a `retrieval` row answers from that row."""
        if task is None and input_type in INPUT_TYPE_TASKS:
            task = INPUT_TYPE_TASKS[input_type]
        if task is None or (task in _GENERIC_TASKS and _split_side(task)[0] not in self.task_matrix):
            if self.default_task not in self.task_matrix:
                return self.task_spec(None)
            base, side = self.default_task, input_type or TASK_INPUT_TYPES.get(task or "")
        else:
            base, side = _split_side(task)
            # a task without its side: the request's, else the directory's default (jina-embeddings-v4: queries, as
            # its own encode_text does)
            side = side or input_type or self.default_input_type
        if base not in self.task_matrix:
            table = ", ".join(sorted(self.task_matrix))
            raise InvalidOption(f"model {self.served_model_name} has no task {task!r}; its tasks are {table}, each "
                                "for queries and documents (`input_type` query or document, or the task as "
                                f"{next(iter(sorted(self.task_matrix)))}.query)", code="UNKNOWN_TASK")
        sides = self.task_matrix[base]
        if side not in sides:
            raise InvalidOption(f"task {base} of model {self.served_model_name} embeds queries and documents with "
                                f"prompts of their own: send `input_type` {' or '.join(sorted(sides, reverse=True))} "
                                f"(or the task as {base}.query)", code="UNKNOWN_TASK")
        return self.tasks[sides[side]]


def read_serving_config(model_dir: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                        fallback_name: str | None = None) -> ServingConfig:
    """Read and check the serving config of `model_dir`.

    The served name is `searchbox.json`'s, else `fallback_name`, else the directory's name. `allow_pickle` and
    `trust_remote_code` are the operator's word on the code a directory may run (model_handlers/model_code.py).

    Raises:
        ModelDirectoryError: the directory would not serve; the message says why and what to do.
    """
    model_dir = Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise ModelDirectoryError(
            f"{model_dir} is a file, not a model directory; give the directory that holds the model's config.json "
            "(`serve` also takes a .tar.gz, .tgz or .tar archive of it and unpacks it)")
    if not model_dir.is_dir():
        raise ModelDirectoryError(f"model directory {model_dir} does not exist")
    explicit = read_object(model_dir / CONFIG_FILE)
    _check_model_files(model_dir)
    model_code.check(model_dir, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    files = ModelFiles.read(model_dir)
    kind = _kind(files, explicit)
    tasks = {name: _task_spec(name, value) for name, value in (explicit.get("tasks") or {}).items()}
    hf_config = files.config
    lora_tasks = jina_v3.declares_tasks(hf_config)
    if lora_tasks:
        _check_tasks_apply(model_dir, hf_config, explicit.get("model_code"))
    if not tasks and lora_tasks:
        declared = jina_v3.read_tasks(hf_config)
        tasks = {name: TaskSpec(prompt=declared.instructions[name], adapter=jina_v3.adapter_name(name))
                 for name in declared.names}
    if not tasks and jina_v4.is_v4(hf_config):
        tasks = {name: TaskSpec(prompt, adapter) for name, (prompt, adapter) in jina_v4.tasks(hf_config).items()}
    folder_adapters = _task_adapter_folders(model_dir, hf_config)
    if not tasks and folder_adapters:
        tasks = _adapter_matrix(folder_adapters, files.sentence_transformers)
    if not tasks:
        tasks = _tasks_from_sentence_transformers(files.sentence_transformers)
    default_task = explicit.get("default_task")
    if default_task is None:
        default_task = files.sentence_transformers.get("default_prompt_name")
    if default_task is None and jina_v4.is_v4(hf_config):
        default_task = jina_v4.DEFAULT_TASK
    activation = explicit.get("score_activation") or _saved_activation(hf_config)
    if activation not in SCORE_ACTIVATIONS.values():
        raise ModelDirectoryError(f"{CONFIG_FILE}: score_activation must be one of "
                                  f"{', '.join(sorted(SCORE_ACTIVATIONS.values()))}, not {activation!r}")
    max_length = explicit.get("max_length")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 8):
        raise ModelDirectoryError(f"{CONFIG_FILE}: max_length must be an integer >= 8, not {max_length!r}")
    default_input_type = explicit.get("default_input_type")
    if default_input_type is None and jina_v4.is_v4(hf_config):
        default_input_type = jina_v4.DEFAULT_INPUT_TYPE
    if default_input_type is not None and default_input_type not in INPUT_TYPE_TASKS:
        raise ModelDirectoryError(f"{CONFIG_FILE}: default_input_type must be one of {', '.join(INPUT_TYPE_TASKS)}, "
                                  f"not {default_input_type!r}")
    return ServingConfig(
        kind=kind,
        served_model_name=str(explicit.get("served_model_name") or fallback_name or model_dir.name),
        max_length=max_length,
        default_task=default_task,
        tasks=tasks,
        matryoshka_dimensions=tuple(int(d) for d in explicit.get("matryoshka_dimensions")
                                    or (hf_config.get("matryoshka_dimensions") if lora_tasks else None)
                                    or (hf_config.get("matryoshka_dims") if jina_v4.is_v4(hf_config) else None) or ()),
        score_activation=activation,
        metering=parse_metering(explicit.get("metering"), CONFIG_FILE),
        backend=_backend(explicit.get("backend")),
        onnx_file=_relative_file(explicit.get("onnx_file", DEFAULT_ONNX_FILE), "onnx_file"),
        default_input_type=default_input_type,
        kind_settings=kind.read_settings(model_dir, explicit) if kind.read_settings else None,
        adapters={**folder_adapters, **_adapters(model_dir, explicit.get("adapters"))},
        model_code=_model_code(explicit.get("model_code")),
        classifiers=read_classifiers(model_dir),
        **_window_settings(explicit),
        **_image_usage(explicit),
    )


def _check_tasks_apply(model_dir: Path, hf_config: Mapping[str, Any], code: Any) -> None:
    """Refuse a directory whose declared tasks (config.json `lora_adaptations`) nothing here could apply: neither read
    natively as jina-embeddings-v3 nor shipping code of its own (whose forward must then take `adapter_mask`, checked
    when the model loads). Served anyway, every task would answer the base model's vectors.

    Raises:
        ModelDirectoryError: naming the tasks and why they cannot apply.
    """
    if (jina_v3.is_v3(hf_config) and code != "remote") or model_code.needed(model_dir):
        return
    tasks = ", ".join(str(name) for name in hf_config["lora_adaptations"])
    architectures = ", ".join(str(name) for name in hf_config.get("architectures") or ()) or "none named"
    raise ModelDirectoryError(
        f"{model_dir}: config.json declares tasks (lora_adaptations: {tasks}) that searchbox cannot apply: its "
        f"architecture ({architectures}) is not jina-embeddings-v3's {jina_v3.ARCHITECTURE} on a rotary XLM-RoBERTa "
        "flash layout, read natively, and the directory ships no code of its own whose forward takes adapter_mask; "
        "served, every task would answer the base model's vectors")


def _task_adapter_folders(model_dir: Path, hf_config: Mapping[str, Any]) -> dict[str, Path]:
    """{task: its PEFT LoRA directory} of a checkpoint that ships one adapter per task beside the base weights
    (jina-embeddings-v5-text: config.json `task_names`, each task's adapter in `adapters/<task>/`); empty for any other
    directory, and for one that names tasks but holds no adapters folder (a pre-merged single-task repository, served
    as the plain model it is).

    Raises:
        ModelDirectoryError: some tasks have their adapter and others not (served, those would answer the base model).
    """
    names = hf_config.get("task_names")
    if not isinstance(names, list) or not names or not (model_dir / "adapters").is_dir():
        return {}
    folders = {str(name): model_dir / "adapters" / str(name) for name in names}
    missing = [name for name, folder in folders.items() if not (folder / "adapter_config.json").is_file()]
    if len(missing) == len(folders):
        return {}
    if missing:
        raise ModelDirectoryError(f"{model_dir}: config.json names tasks {', '.join(folders)}, but adapters/ holds no "
                                  f"adapter (adapter_config.json) for {', '.join(missing)}; served, those tasks would "
                                  "answer the base model's vectors")
    return folders


def _adapter_matrix(folders: Mapping[str, Path], st_config: Mapping[str, Any]) -> dict[str, TaskSpec]:
    """A task matrix over per-task adapters: each task embeds queries and documents with its own adapter and the
    side's prompt (config_sentence_transformers.json `query` / `document`, or `passage`), as the model's own
    `encode(texts, task=..., prompt_name=...)` does."""
    prompts = st_config.get("prompts") or {}
    sides = {"query": prompts.get("query"), "document": prompts.get("document", prompts.get("passage"))}
    return {f"{task}_{side}": TaskSpec(prompt=prompt if isinstance(prompt, str) else "", adapter=task)
            for task in folders for side, prompt in sides.items()}


def _adapters(model_dir: Path, value: Any) -> Mapping[str, Path]:
    try:
        return declared_adapters(model_dir, value, CONFIG_FILE)
    except ValueError as exc:
        raise ModelDirectoryError(str(exc)) from None


def _model_code(value: Any) -> str | None:
    if value is not None and value not in ("native", "remote"):
        raise ModelDirectoryError(f"{CONFIG_FILE}: model_code must be 'native' or 'remote', not {value!r}")
    return value


def _backend(value: Any) -> str:
    if value is None:
        return "torch"
    if value not in BACKENDS:
        raise ModelDirectoryError(f"{CONFIG_FILE}: backend must be one of {', '.join(BACKENDS)}, not {value!r}")
    return value


def _relative_file(value: Any, key: str) -> str:
    """A path inside the model directory (never absolute, never climbing out of it)."""
    if not isinstance(value, str) or not value or value.startswith("/") or ".." in Path(value).parts:
        raise ModelDirectoryError(f"{CONFIG_FILE}: {key} must be a path inside the model directory, not {value!r}")
    return value


# The torch.nn classes a CrossEncoder saves as its activation_fn, by the name score_activation gives each.
SCORE_ACTIVATIONS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Identity": "none"}


def _saved_activation(hf_config: Mapping[str, Any]) -> str:
    """The activation a CrossEncoder saved in config.json (`sentence_transformers.activation_fn`), as a name."""
    saved = (hf_config.get("sentence_transformers") or {}).get("activation_fn")
    if not isinstance(saved, str):
        return "sigmoid"  # CrossEncoder's own default for a single-label head
    name = SCORE_ACTIVATIONS.get(saved.rpartition(".")[2])
    if name is None:
        raise ModelDirectoryError(f"config.json: sentence_transformers.activation_fn {saved!r} is not one this "
                                  f"server computes ({', '.join(SCORE_ACTIVATIONS)}); set score_activation in "
                                  f"{CONFIG_FILE} to serve it anyway")
    return name


def _window_settings(explicit: Mapping[str, Any]) -> dict[str, int | None]:
    settings = {}
    for key, least in (("rerank_window_tokens", 8), ("rerank_window_overlap", 0), ("max_query_tokens", 1)):
        value = explicit.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ModelDirectoryError(f"{CONFIG_FILE}: {key} must be an integer >= {least}, not {value!r}")
        settings[key] = value
    window, overlap = settings["rerank_window_tokens"], settings["rerank_window_overlap"]
    if window is not None and overlap is not None and overlap * 2 > window:
        raise ModelDirectoryError(
            f"{CONFIG_FILE}: rerank_window_overlap ({overlap}) must be at most half of rerank_window_tokens ({window})")
    return settings


def _image_usage(explicit: Mapping[str, Any]) -> dict[str, int]:
    settings = {}
    for key, default in (("image_tile_size", 224), ("image_tile_tokens", 1000)):
        value = explicit.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelDirectoryError(f"{CONFIG_FILE}: {key} must be a positive integer, not {value!r}")
        settings[key] = value
    return settings


def _check_model_files(model_dir: Path) -> None:
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", *model_code.PICKLED_SUFFIXES)
               and p.name not in model_code.NOT_WEIGHTS]
    if not weights and not any(p.name in ("config.json", "modules.json") for p in files):
        raise ModelDirectoryError(
            f"{model_dir} is not a model directory: no config.json, modules.json or weights found"
        )


def _kind(files: ModelFiles, explicit: Mapping[str, Any]) -> Kind:
    """The kind `searchbox.json` names, else the first registered kind that recognises the directory."""
    if "kind" in explicit:
        try:
            return kinds.named(str(explicit["kind"]))
        except KeyError as exc:
            raise ModelDirectoryError(f"{CONFIG_FILE}: {exc.args[0]}") from None
    return kinds.detect(files)


def _task_spec(name: str, value: Any) -> TaskSpec:
    if isinstance(value, str):
        return TaskSpec(prompt=value)
    if isinstance(value, dict) and set(value) <= {"prompt", "adapter"}:
        return TaskSpec(prompt=str(value.get("prompt") or ""), adapter=value.get("adapter"))
    raise ModelDirectoryError(
        f"{CONFIG_FILE}: task {name!r} must be a prompt string or an object with 'prompt' and/or 'adapter'"
    )


def _split_side(task: str) -> tuple[str, str | None]:
    """`nl2code.query` -> ("nl2code", "query"); `nl2code.passage` -> ("nl2code", "document"); `nl2code` -> (.., None)."""
    base, dot, suffix = task.rpartition(".")
    if dot and suffix in _SIDE_SUFFIXES:
        return base, _SIDE_SUFFIXES[suffix]
    return task, None


def _tasks_from_sentence_transformers(st_config: Mapping[str, Any]) -> dict[str, TaskSpec]:
    """Tasks from the prompts a sentence-transformers model declares (config_sentence_transformers.json), with the
    usual aliases."""
    prompts = st_config.get("prompts") or {}
    tasks = {name: TaskSpec(prompt=prompt) for name, prompt in prompts.items() if isinstance(prompt, str)}
    for task, candidates in _TASK_ALIASES.items():
        for candidate in candidates:
            if task not in tasks and candidate in tasks:
                tasks[task] = tasks[candidate]
    return tasks
