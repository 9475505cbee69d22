"""What code a model directory may run: the one policy, stated once. Every loader asks here.

A model directory is data. Two things in one execute code when it is loaded:
- remote code: Python modules that an `auto_map` in its JSON files (transformers' `trust_remote_code`), or a
  module of its own in `modules.json` (sentence-transformers), names;
- pickled weights (`pytorch_model.bin`, `.pt` ...): unpickling runs code.

The policy:
1. An architecture searchbox reads natively runs none of the directory's modules, whatever it holds (Jina's
   XLM-RoBERTa flash checkpoints: model_handlers/jina_layout.py; jina-reranker-v3: model_handlers/jina_ranking.py;
   jina-embeddings-v3 with its task adapters: model_handlers/jina_v3.py; jina-embeddings-v5-text as published:
   model_handlers/jina_v5.py; each unless searchbox.json says `"model_code": "remote"`; and always jina-reranker-m0 and
   jina-embeddings-v4 on transformers' Qwen2-VL classes: model_handlers/qwen_vl.py). A directory that needs no
   remote code is never loaded with `trust_remote_code=True`.
2. Remote code runs only where the artifact declares and pins it: `searchbox-manifest.json` (written by
   packaging/build_artifact.py) lists every `.py` file of the directory under `remote_code` with its SHA-256, and
   every one still matches; or where the operator sets SEARCHBOX_TRUST_REMOTE_CODE=1 (local use: code read and
   trusted).
3. Pickled weights load only where the operator sets SEARCHBOX_ALLOW_PICKLE=1 (artifacts ship safetensors only).

Anything else is refused when the serving config is read (`check`: in `serve`'s gunicorn master, before any worker
starts), naming the file. Loaders pass `trusts(model_dir, options)` as `trust_remote_code`. Pinning guards against
code changed or added after the build; the manifest itself is as trusted as the artifact that carries it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Protocol

from model_handlers import jina_layout, jina_ranking, jina_v3, jina_v5, qwen_vl
from model_handlers.errors import ModelDirectoryError

logger = logging.getLogger(__name__)

MANIFEST = "searchbox-manifest.json"
ENV_TRUST_REMOTE_CODE = "SEARCHBOX_TRUST_REMOTE_CODE"
ENV_ALLOW_PICKLE = "SEARCHBOX_ALLOW_PICKLE"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Files that end in .bin but hold no weights.
NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.bin", "scheduler.bin"})
# Module types in modules.json that name installed libraries, not code in the directory.
_LIBRARY_MODULES = ("sentence_transformers.", "pylate.", "torch.", "transformers.")
# JSON files read for an auto_map: tokenizer.json and vocabularies can be large and never hold one.
_NEVER_AUTO_MAP = frozenset({"tokenizer.json", "vocab.json", MANIFEST})
_MAX_CONFIG_BYTES = 4 * 1024 * 1024


class CodeOptions(Protocol):
    """What the operator allowed (HandlerOptions, the server's Settings)."""

    allow_pickle: bool
    trust_remote_code: bool


def check(model_dir: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
    """Refuse a directory whose code the policy does not let run (pickles, remote code); nothing is imported.

    Raises:
        ModelDirectoryError: naming the file and what would let it load.
    """
    _check_pickles(model_dir, allow_pickle)
    allowed_by = _remote_code_allowed(model_dir, trust_remote_code)
    if allowed_by:
        logger.warning("%s runs remote code (%s): %s", model_dir, allowed_by, ", ".join(_code_files(model_dir)))


def trusts(model_dir: Path, options: CodeOptions) -> bool:
    """What a loader passes as `trust_remote_code` for `model_dir` (the model's root directory): True only for a
    directory that runs remote code and is allowed to.

    Raises:
        ModelDirectoryError: the directory needs remote code the policy does not let run.
    """
    return _remote_code_allowed(Path(model_dir), options.trust_remote_code) is not None


def needed(model_dir: Path) -> list[str]:
    """What in `model_dir` asks for remote code, one line each ("config.json: auto_map.AutoModel ->
    modeling_x.py"); empty when nothing does, or when searchbox reads the architecture natively."""
    return [f"{source}: {what} -> {module}" for source, what, module, _ in _references(Path(model_dir))]


def declaration(model_dir: Path) -> list[dict[str, str]]:
    """Every `.py` file of `model_dir` with its SHA-256: the manifest's `remote_code` (packaging writes it)."""
    return [{"path": name, "sha256": _sha256(model_dir / name)} for name in _code_files(model_dir)]


def _remote_code_allowed(model_dir: Path, operator_trusts: bool) -> str | None:
    """Why the directory's remote code may run; None when it has none to run.

    Raises:
        ModelDirectoryError: it has remote code the policy does not let run (or that is not there).
    """
    references = _references(model_dir)
    if not references:
        return None
    files = _code_files(model_dir)
    # code of another repository: the operator's local Hugging Face cache may hold it, a model package never does
    absent = [(source, what, name) for source, what, name, elsewhere in references
              if name not in files and not (elsewhere and operator_trusts)]
    if absent:
        source, what, name = absent[0]
        raise ModelDirectoryError(
            f"{model_dir}: {source} {what} names {name}, which is not in the directory: a model package runs without "
            "network, so its remote code must travel with it (packaging/build_artifact.py --remote-code copies it in)")
    try:
        _check_pinned(model_dir, references[0], files)
    except ModelDirectoryError:
        if not operator_trusts:
            raise
        return f"{ENV_TRUST_REMOTE_CODE}=1"
    return f"pinned in {MANIFEST}"


def _check_pinned(model_dir: Path, reference: tuple[str, str, str, bool], files: list[str]) -> None:
    """Refuse unless the manifest declares every .py file of the directory and each still matches its SHA-256."""
    source, what, module, _ = reference
    declared = _declared(model_dir)
    why = f"({source} {what} runs it)"
    if declared is None:
        raise ModelDirectoryError(
            f"{model_dir}: remote code {module} {why} is declared by no {MANIFEST}; searchbox runs a model "
            "directory's code only when the artifact pins it (packaging/build_artifact.py records every .py with "
            f"its SHA-256) or when the operator sets {ENV_TRUST_REMOTE_CODE}=1 (local use, code you have read)")
    for name in files:
        if name not in declared:
            raise ModelDirectoryError(
                f"{model_dir}: {name} is not declared in {MANIFEST}, and remote code runs here {why}: a file added "
                "after the artifact was built; remove it or rebuild the artifact")
        if _sha256(model_dir / name) != declared[name]:
            raise ModelDirectoryError(
                f"{model_dir}: {name} does not match the SHA-256 {MANIFEST} pins for it: the remote code changed "
                "after the artifact was built; restore it or rebuild the artifact")
    missing = sorted(set(declared) - set(files))
    if missing:
        raise ModelDirectoryError(f"{model_dir}: {missing[0]} is declared in {MANIFEST} but not in the directory")


def _references(model_dir: Path) -> list[tuple[str, str, str, bool]]:
    """(file, entry, module file, whether another repository holds it) for each module the directory's JSON files
    name: auto_maps (but those of a config.json searchbox reads natively) and modules.json's own modules (but those
    beside a jina-embeddings-v3 or v5-text config.json read natively: that path never reads modules.json)."""
    found = []
    root_config = _json(model_dir / "config.json")
    native_root = (isinstance(root_config, dict) and (jina_v3.is_v3(root_config) or jina_v5.is_v5(root_config))
                   and _read_natively(model_dir, root_config))
    for path in sorted(model_dir.rglob("*.json")):
        rel = path.relative_to(model_dir)
        if (path.name in _NEVER_AUTO_MAP or any(part.startswith(".") for part in rel.parts)
                or path.stat().st_size > _MAX_CONFIG_BYTES):
            continue
        document = _json(path)
        if path.name == "modules.json" and isinstance(document, list) and not (native_root and rel == Path(path.name)):
            found += [(str(rel), f"module {module.get('type')}", _module_file(rel.parent, str(module.get("type"))),
                       False) for module in document if isinstance(module, dict) and _own_module(module.get("type"))]
        if not isinstance(document, dict) or not isinstance(document.get("auto_map"), dict):
            continue
        if path.name == "config.json" and _read_natively(model_dir, document):
            continue  # read natively: its auto_map is never followed
        for key, value in document["auto_map"].items():
            for ref in value if isinstance(value, list) else [value]:
                if isinstance(ref, str) and "." in ref:
                    found.append((str(rel), f"auto_map.{key}", _module_file(rel.parent, ref.split("--")[-1]),
                                  "--" in ref))
    return found


def _read_natively(model_dir: Path, config: Mapping[str, Any]) -> bool:
    """Whether searchbox reads this config.json's architecture itself: a Jina flash checkpoint, jina-reranker-v3
    (model_handlers/jina_ranking.py), jina-reranker-m0 or jina-embeddings-v4 (model_handlers/qwen_vl.py), or a
    jina-embeddings-v3 or published v5-text one (model_handlers/jina_v3.py, jina_v5.py) unless searchbox.json asks
    for its own code (`"model_code": "remote"`)."""
    if jina_layout.layout(config) is not None or jina_ranking.is_listwise(config) or qwen_vl.read_natively(config):
        return True
    if not (jina_v3.is_v3(config) or jina_v5.is_v5(config)):
        return False
    explicit = _json(model_dir / "searchbox.json")
    return not (isinstance(explicit, dict) and explicit.get("model_code") == "remote")


def _own_module(module_type: Any) -> bool:
    return isinstance(module_type, str) and "." in module_type and not module_type.startswith(_LIBRARY_MODULES)


def _module_file(folder: Path, reference: str) -> str:
    """"modeling_x.ModelClass" in `folder` -> "folder/modeling_x.py"."""
    return str(folder / (reference.rsplit(".", 1)[0].replace(".", "/") + ".py"))


def _code_files(model_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(model_dir)) for path in model_dir.rglob("*.py")
                  if path.is_file() and "__pycache__" not in path.parts)


def _declared(model_dir: Path) -> dict[str, str] | None:
    """{path: sha256} of the manifest's `remote_code`; None when no manifest declares any."""
    manifest = _json(model_dir / MANIFEST)
    entries = manifest.get("remote_code") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        return None
    return {str(entry.get("path")): str(entry.get("sha256")) for entry in entries if isinstance(entry, Mapping)}


def _check_pickles(model_dir: Path, allow_pickle: bool) -> None:
    files = [path for path in model_dir.rglob("*") if path.is_file()]
    if allow_pickle or any(path.suffix == ".safetensors" for path in files):
        return
    pickled = [path for path in files if path.suffix in PICKLED_SUFFIXES and path.name not in NOT_WEIGHTS]
    if pickled:
        names = ", ".join(str(path.relative_to(model_dir)) for path in pickled[:3])
        raise ModelDirectoryError(
            f"{model_dir} holds only pickled weights ({names}); pickles can run arbitrary code when loaded. "
            "Convert them to safetensors (model.save_pretrained(dir, safe_serialization=True)), "
            f"or set {ENV_ALLOW_PICKLE}=1 if you trust this file.")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None  # the serving config reports unreadable files itself


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
