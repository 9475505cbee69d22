"""Build `model.tar.gz` for SageMaker's `/opt/ml/model` from a local Hugging Face / sentence-transformers directory.

    python packaging/build_artifact.py MODEL_DIR -o dist/model.tar.gz [--served-name NAME] [--kind embedding]
        [--remote-code other-org/repo=/path/to/its/files] [--no-check]
    python packaging/build_artifact.py --catalog packaging/catalog.example.yaml [--product NAME] -o dist/model.tar.gz

What goes in: safetensors weights, tokenizer and configs, `searchbox.json`, the `trust_remote_code` modules
an `auto_map` points at in another repository (copied in, `auto_map` rewritten to the local copy: a model
package runs without network), and `searchbox-manifest.json` with the SHA-256 of every other file. The manifest
declares every `.py` file under `remote_code` (path and SHA-256): `serve` runs a directory's remote code only when
that declaration pins it (model_handlers/model_code.py), so the load check below already loads it that way.
Before anything is written, the staged directory is loaded through `model_handlers` and answers one
request; a directory that would not serve is refused with the reason. Same input, same bytes.

With --catalog, the product's pricing decides searchbox.json's `metering`: per_inference writes it (each 2xx
then reports its units in X-Amzn-Inference-Metering), hourly leaves it out; the manifest and the report say
which, and what the sample request consumed.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _catalog  # noqa: E402
import _classifiers  # noqa: E402
import _files  # noqa: E402
import _onnx  # noqa: E402
from model_handlers import kinds, model_code  # noqa: E402
from model_handlers.metering import Metering  # noqa: E402

MANIFEST = model_code.MANIFEST
SERVING_CONFIG = "searchbox.json"
# Every entry of the archive gets these: the bytes depend on the model, never on the machine or the clock.
FIXED_MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
FILE_MODE = 0o644
DIR_MODE = 0o755
PROGRESS_MIN_BYTES = 32 * 1024 * 1024
_CHUNK = 1024 * 1024

# Weight formats the image never reads (TensorFlow, Flax, ONNX, GGUF): left out of the artifact.
_UNUSED_SUFFIXES = {".h5", ".msgpack", ".ot", ".onnx", ".gguf"}
# Pickled torch weights: left out where safetensors of the same weights sit beside them (a transformers checkpoint's
# pytorch_model*.bin beside its model*.safetensors, or a file beside its own .safetensors twin), refused otherwise: a
# pickle of other tensors (BGE-M3's colbert_linear.pt and sparse_linear.pt beside the encoder) would be lost.
_PICKLED_SUFFIXES = model_code.PICKLED_SUFFIXES
_TRANSFORMERS_PICKLE = "pytorch_model"
_NOT_WEIGHTS = model_code.NOT_WEIGHTS
_UNUSED_DIRS = {"onnx", "openvino", "__pycache__", ".cache"}
_RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.(\w[\w.]*)\s+import|import\s+\.(\w[\w.]*))", re.MULTILINE)


# build_artifact(metering=KEEP_METERING): searchbox.json keeps whatever `metering` the model directory's own says
# (a build from a bare directory); a catalog build passes its pricing's value, None for hourly, which removes it.
KEEP_METERING = "keep"


class BuildRefused(Exception):
    """The directory cannot become an artifact; the message says why and what to do."""


@dataclass(frozen=True)
class SampleFigures:
    """What the kind's sample request consumed on the staged model, counted by the server's own code.

    `units` are what the answer reports in X-Amzn-Inference-Metering (0 when the model is priced per hour).
    """

    inputs: int
    tokens: int
    units: int


@dataclass
class BuildReport:
    output: Path
    sha256: str
    size: int
    files: int
    served_name: str
    kind: str
    check: str
    vendored: dict[str, str] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)  # the .py files the manifest declares (remote_code)
    skipped: list[str] = field(default_factory=list)
    backend: str = "torch"
    quality: "_onnx.Quality | None" = None
    metering: Metering | None = None  # searchbox.json's `metering`; None: priced per hour, no header
    sample: SampleFigures | None = None  # None with --no-check
    classifiers: list[dict] = field(default_factory=list)  # the few-shot classifiers shipped: name, labels, accuracy

    @property
    def billing(self) -> str:
        """How AWS bills this artifact's real-time answers, in a line."""
        if self.metering is None:
            return "hourly (searchbox.json has no metering key: no X-Amzn-Inference-Metering header)"
        return f"per inference, 1 unit = {self.metering.describe()} (searchbox.json metering)"


def build_artifact(model_dir: str | Path, output: str | Path, *, served_name: str | None = None,
                   kind: str | None = None, tasks: Mapping[str, Any] | None = None,
                   remote_code: Mapping[str, str | Path] | None = None,
                   metering: Mapping[str, Any] | None | str = KEEP_METERING, check: bool = True,
                   compresslevel: int = 6, device: str = "auto", backend: str = "torch", quantize: str | None = None,
                   gate: "_onnx.Gate | None" = None, classifiers: Mapping[str, str | Path] | None = None,
                   classifier_min_accuracy: float = 0.0) -> BuildReport:
    """Stage, check and archive `model_dir` into `output` (written atomically; a refusal leaves no trace).

    `backend` "onnx" exports the model (packaging/_onnx.py) and serves it with ONNX Runtime; `quantize` "int8"
    serves the int8 file instead of fp32, both only if they pass `gate`. `classifiers` (name -> examples.jsonl) are
    fitted on the staged model and shipped in it (packaging/_classifiers.py), each refused below
    `classifier_min_accuracy` held out.

    Raises:
        BuildRefused: the directory would not serve, a remote-code file cannot be found locally, or the ONNX export
            fails or misses its quality gate.
    """
    if quantize is not None and backend != "onnx":
        raise BuildRefused("--quantize needs --backend onnx (it quantizes the exported graph)")
    model_dir = Path(model_dir).resolve()
    output = Path(output).resolve()
    if not model_dir.is_dir():
        raise BuildRefused(f"{model_dir} is not a directory")
    if output.is_dir():
        raise BuildRefused(f"-o: {output} is a directory; give the file to write, e.g. {output / 'model.tar.gz'}")
    # The output's missing parents are made here and removed again when the build is refused.
    with _files.created_dirs(output.parent), \
            _staged_model(model_dir, output.parent, served_name=served_name, kind=kind, tasks=tasks,
                          remote_code=remote_code, metering=metering) as (staged, config, vendored, skipped):
        quality = None
        if backend == "onnx":
            quality = _export_onnx(staged, config, quantize, gate or _onnx.Gate(), device)
            config = _write_serving_config(staged, served_name=None, default_name=config.served_model_name, kind=None,
                                           tasks=None, backend={"backend": "onnx", "onnx_file": quality.backend_file})
        trained = _build_classifiers(staged, classifiers, classifier_min_accuracy, device)
        check_summary, sample, _ = _smoke_test(staged, config, device) if check else ("skipped (--no-check)", None, b"")
        files = _list_files(staged)
        manifest = _manifest(staged, files, config, vendored, sample, quality, trained)
        (staged / MANIFEST).write_bytes(manifest)
        partial = output.with_name(output.name + ".partial")
        _write_tar(staged, sorted(files + [MANIFEST]), partial, compresslevel)
        os.replace(partial, output)
    return BuildReport(output=output, sha256=_sha256_file(output), size=output.stat().st_size,
                       files=len(files) + 1, served_name=config.served_model_name, kind=config.kind.name,
                       check=check_summary, vendored=vendored, skipped=skipped, metering=config.metering,
                       pinned=[name for name in files if name.endswith(".py")],
                       sample=sample, backend=config.backend, quality=quality,
                       classifiers=[classifier.describe() for classifier in trained])


def _build_classifiers(staged: Path, sources: Mapping[str, str | Path] | None, min_accuracy: float, device: str):
    """The few-shot classifiers, fitted on the staged model and written into it (packaging/_classifiers.py)."""
    if not sources:
        return []
    try:
        return _classifiers.build(staged, {name: Path(path) for name, path in sources.items()}, min_accuracy, device)
    except _classifiers.ClassifierRefused as exc:
        raise BuildRefused(str(exc)) from exc


def _export_onnx(staged: Path, config, quantize: str | None, gate: "_onnx.Gate", device: str) -> "_onnx.Quality":
    """The ONNX files in staged/onnx/, checked against the model on torch (packaging/_onnx.py)."""
    from model_handlers.errors import ModelDirectoryError

    try:
        return _onnx.build_onnx(staged, config.kind, quantize, gate, device)
    except ModelDirectoryError as exc:
        raise BuildRefused(f"--backend onnx: {exc.detail}".replace(str(staged), "the model directory")) from exc
    except _onnx.GateFailed as exc:
        raise BuildRefused(f"--backend onnx: the export misses its quality gate: {exc}") from exc


def measure_sample(model_dir: str | Path, *, served_name: str | None = None, kind: str | None = None,
                   tasks: Mapping[str, Any] | None = None, remote_code: Mapping[str, str | Path] | None = None,
                   metering: Mapping[str, Any] | None | str = KEEP_METERING, device: str = "cpu") -> SampleFigures:
    """What the kind's sample request consumes on the model as build_artifact would package it, nothing written.

    The model is staged exactly as for the artifact (a catalog's tasks change prompts, hence tokens), loaded,
    and answers the sample: for a listing's worked example when no build report is at hand.

    Raises:
        BuildRefused: the directory would not serve.
    """
    model_dir = Path(model_dir).resolve()
    if not model_dir.is_dir():
        raise BuildRefused(f"{model_dir} is not a directory")
    with _staged_model(model_dir, None, served_name=served_name, kind=kind, tasks=tasks, remote_code=remote_code,
                       metering=metering) as (staged, config, _, _):
        return _smoke_test(staged, config, device)[1]


@contextlib.contextmanager
def _staged_model(model_dir: Path, parent: Path | None, *, served_name: str | None, kind: str | None,
                  tasks: Mapping[str, Any] | None, remote_code: Mapping[str, str | Path] | None,
                  metering: Mapping[str, Any] | None | str):
    """A temporary copy of what the artifact holds (under `parent`; the system's temp dir when None), removed after.

    Yields (staged directory, its serving config, vendored remote code, files left out).
    """
    with tempfile.TemporaryDirectory(prefix=".stage-", dir=parent) as tmp:
        staged = Path(tmp) / "model"
        skipped = _stage(model_dir, staged)
        vendored = _vendor_remote_code(staged, {k: Path(v) for k, v in (remote_code or {}).items()})
        # declared before anything loads: the staged directory is checked and loaded as the container will
        (staged / MANIFEST).write_text(json.dumps({"format": 1, "remote_code": model_code.declaration(staged)}))
        config = _write_serving_config(staged, served_name=served_name, default_name=_default_name(model_dir),
                                       kind=kind, tasks=tasks, metering=metering)
        yield staged, config, vendored, skipped


def _default_name(model_dir: Path) -> str:
    """The source directory's name; the embedded default model's own name for it (its folder is called `model`)."""
    from model_handlers.embedded import DEFAULT_MODEL_NAME, EmbeddedModelMissing, embedded_model_dir

    try:
        if model_dir == embedded_model_dir().resolve():
            return DEFAULT_MODEL_NAME
    except EmbeddedModelMissing:
        pass
    return model_dir.name


def _stage(model_dir: Path, staged: Path) -> list[str]:
    """Copy what serving needs; returns what was left out."""
    everything = sorted(p for p in model_dir.rglob("*") if p.is_file())
    relative = [p.relative_to(model_dir) for p in everything]
    with_safetensors = {p.parent for p in relative if p.suffix == ".safetensors"}
    safetensors = {p for p in relative if p.suffix == ".safetensors"}
    skipped = []
    for source, rel in zip(everything, relative):
        pickled = rel.suffix in _PICKLED_SUFFIXES
        duplicate = pickled and (rel.with_suffix(".safetensors") in safetensors
                                 or (rel.name.startswith(_TRANSFORMERS_PICKLE) and rel.parent in with_safetensors))
        if (any(part.startswith(".") or part in _UNUSED_DIRS for part in rel.parts)
                or rel.suffix in _UNUSED_SUFFIXES or rel.name in _NOT_WEIGHTS or rel.name == MANIFEST or duplicate):
            skipped.append(str(rel))
            continue
        if pickled and rel.parent in with_safetensors:
            raise BuildRefused(
                f"{rel} holds pickled tensors that no safetensors file beside it holds (BGE-M3's colbert_linear.pt "
                "and sparse_linear.pt are such); the artifact ships safetensors only (unpickling runs code). Convert "
                f"it: safetensors.torch.save_file(torch.load('{rel}', weights_only=True), "
                f"'{rel.with_suffix('.safetensors')}'), and build again.")
        if pickled:
            raise BuildRefused(
                f"{rel} holds pickled weights and no safetensors file sits beside it; the artifact ships "
                "safetensors only (unpickling runs code). Convert with "
                "model.save_pretrained(dir, safe_serialization=True) (or safetensors.torch.save_file for a "
                "sentence-transformers module) and build from that directory.")
        target = staged / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return skipped


def _vendor_remote_code(staged: Path, sources: Mapping[str, Path]) -> dict[str, str]:
    """Copy every module an `auto_map` takes from another repository, and point the `auto_map` at the copy.

    Returns {vendored file (relative to the artifact): the repository it came from}.
    """
    vendored: dict[str, str] = {}
    for json_path in sorted(staged.rglob("*.json")):
        try:
            document = json.loads(json_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BuildRefused(f"{json_path.relative_to(staged)} is not valid JSON: {exc}") from exc
        if not isinstance(document, dict) or not isinstance(document.get("auto_map"), dict):
            continue
        rel_json = json_path.relative_to(staged)
        changed = False
        for key, value in document["auto_map"].items():
            refs = value if isinstance(value, list) else [value]
            rewritten = []
            for ref in refs:
                if not isinstance(ref, str):
                    rewritten.append(ref)  # a tokenizer pair may hold null for the missing slow/fast class
                    continue
                repo, local_ref = ref.split("--", 1) if "--" in ref else (None, ref)
                module_file = local_ref.rsplit(".", 1)[0].replace(".", "/") + ".py"
                if repo is None:
                    if not (json_path.parent / module_file).is_file():
                        raise BuildRefused(f"{rel_json}: auto_map.{key} points at {module_file}, which is not "
                                           "in the model directory")
                else:
                    for copied in _copy_module(repo, module_file, json_path.parent, sources):
                        vendored[str(copied.relative_to(staged))] = repo
                    changed = True
                rewritten.append(local_ref)
            document["auto_map"][key] = rewritten if isinstance(value, list) else rewritten[0]
        if changed:
            json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return vendored


def _copy_module(repo: str, module_file: str, target_dir: Path, sources: Mapping[str, Path]) -> list[Path]:
    """Copy `module_file` of `repo` and the sibling modules it imports relatively."""
    copied, pending, done = [], [module_file], set()
    while pending:
        name = pending.pop()
        if name in done:
            continue
        done.add(name)
        source = _find_remote_file(repo, name, sources)
        target = target_dir / name
        data = source.read_bytes()
        if target.exists() and target.read_bytes() != data:
            raise BuildRefused(f"{target.name} from {repo} differs from the file of the same name already in the "
                               "model directory; rename one of them")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        copied.append(target)
        for match in _RELATIVE_IMPORT.finditer(data.decode("utf-8", errors="replace")):
            sibling = (match.group(1) or match.group(2)).replace(".", "/") + ".py"
            pending.append(str(Path(name).parent / sibling) if Path(name).parent != Path(".") else sibling)
    return copied


def _find_remote_file(repo: str, name: str, sources: Mapping[str, Path]) -> Path:
    """`name` of `repo` from the vendor's local checkout, else from the local Hugging Face cache; never the network."""
    if repo in sources:
        candidate = sources[repo] / name
        if candidate.is_file():
            return candidate
        raise BuildRefused(f"remote code {repo}/{name}: not found in {sources[repo]}")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, name)
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    raise BuildRefused(
        f"remote code {repo}/{name} is needed by auto_map but is neither given nor in the local Hugging Face "
        f"cache; pass --remote-code {repo}=DIR (a checkout of {repo}), or add remote_code to the catalog. "
        "A model package runs without network, so it must be inside the artifact.")


def _write_serving_config(staged: Path, *, served_name: str | None, default_name: str, kind: str | None,
                          tasks: Mapping[str, Any] | None, metering: Mapping[str, Any] | None | str = KEEP_METERING,
                          backend: Mapping[str, str] | None = None):
    from model_handlers.errors import ModelDirectoryError
    from model_handlers.serving_config import read_serving_config

    path = staged / SERVING_CONFIG
    try:
        explicit = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as exc:
        raise BuildRefused(f"{SERVING_CONFIG} is not valid JSON: {exc}") from exc
    if not isinstance(explicit, dict):
        raise BuildRefused(f"{SERVING_CONFIG} must hold a JSON object")
    if served_name:
        explicit["served_model_name"] = served_name
    explicit.setdefault("served_model_name", default_name)
    if kind:
        explicit["kind"] = kind
    if tasks:
        explicit["tasks"] = dict(tasks)
    if metering != KEEP_METERING:
        # the catalog's pricing decides: a per-hour product must not report units it is not billed by
        explicit.pop("metering", None)
        if metering is not None:
            explicit["metering"] = dict(metering)
    if backend:
        explicit.update(backend)
    path.write_text(json.dumps(explicit, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    try:
        config = read_serving_config(staged)
    except ModelDirectoryError as exc:
        raise BuildRefused(str(exc).replace(str(staged), "the model directory")) from exc
    # The artifact says its own kind: the container must not guess it from the files again.
    explicit.setdefault("kind", config.kind.name)
    path.write_text(json.dumps(explicit, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return read_serving_config(staged)


def _smoke_test(staged: Path, config, device: str) -> tuple[str, SampleFigures, bytes]:
    """Load the staged directory exactly as the container will and answer its kind's sample request: (a line saying
    what it answered, what that consumed, the answer's body).

    The sample (the kind's, packaging/_samples.py) goes through the server's own engine, as `/invocations` answers it
    (container/engine.py: dialect parser, operation check, model, renderer); the answer must hold numbers, all finite,
    not all zero. What it consumed (inputs, tokens, metered units) is the engine's own count, as its
    X-Amzn-Inference-Metering says.
    """
    import math

    import orjson

    import _samples
    from container.dialects import decode_invocation
    from container.engine import Engine, Incoming
    from model_handlers import HandlerOptions, load_handler

    started = time.monotonic()
    handler = None
    answered = []
    try:
        handler = load_handler(staged, HandlerOptions(device=device, max_batch_items=8))
        sample = Incoming(decode_invocation, True, orjson.dumps(_samples.of(config.kind.name).request))
        reply = Engine.loaded(handler).answer(sample, lambda bound, results: answered.extend(zip(bound, results)))
        (bound, result), = answered
        summary = bound.spec.summary(bound.request, result)
        numbers = _numbers(orjson.loads(reply.body))
        if not numbers or not all(math.isfinite(n) for n in numbers) or not any(numbers):
            raise BuildRefused(f"the model's answer to its sample request is empty, zero or not finite: {summary}")
    except BuildRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here means the directory would not serve
        reason = str(exc).replace(str(staged), "the model directory") or type(exc).__name__
        raise BuildRefused(f"the model directory would not serve: {type(exc).__name__}: {reason}") from exc
    finally:
        if handler is not None:
            handler.close()
    figures = reply.figures
    sample_figures = SampleFigures(inputs=figures.inputs, tokens=figures.tokens, units=figures.units)
    return f"{summary} in {time.monotonic() - started:.1f} s", sample_figures, reply.body


def _numbers(value) -> list[float]:
    """Every number in a JSON answer (vectors, scores, token counts)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return []


def _list_files(staged: Path) -> list[str]:
    return sorted(str(p.relative_to(staged)) for p in staged.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.name != MANIFEST)


def _manifest(staged: Path, files: list[str], config, vendored: Mapping[str, str],
              sample: SampleFigures | None, quality=None, classifiers=()) -> bytes:
    entries = [{"path": name, "size": (staged / name).stat().st_size, "sha256": _sha256_file(staged / name)}
               for name in files]
    metering = config.metering
    document = {
        "format": 1,
        "served_model_name": config.served_model_name,
        "kind": config.kind.name,
        # how AWS bills the real-time answers: per the units each reports, or (null) per instance-hour
        "metering": None if metering is None else {"unit": metering.unit, "tokens_per_unit": metering.tokens_per_unit},
        "sample": None if sample is None else {"inputs": sample.inputs, "tokens": sample.tokens,
                                               "units": sample.units},
        "files": entries,
        # every .py file, pinned: `serve` runs remote code only as declared here (model_handlers/model_code.py)
        "remote_code": model_code.declaration(staged),
        "vendored_remote_code": dict(sorted(vendored.items())),
        "backend": config.backend,
    }
    if quality is not None:
        document["onnx"] = quality.as_dict()
    if classifiers:
        # each fitted here: its labels, examples and held-out accuracy (the fit: model_handlers/classifiers.py's file)
        document["classifiers"] = [classifier.describe() for classifier in classifiers]
    return (json.dumps(document, indent=2) + "\n").encode()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle, _progress(path, "sha256") as bar:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _write_tar(staged: Path, files: list[str], output: Path, compresslevel: int) -> None:
    directories = sorted({str(parent) for name in files for parent in Path(name).parents if str(parent) != "."})
    with output.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(directories + files):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "", ""
            if name in directories:
                info.type, info.mode = tarfile.DIRTYPE, DIR_MODE
                tar.addfile(info)
                continue
            path = staged / name
            info.size, info.mode = path.stat().st_size, FILE_MODE
            with path.open("rb") as handle, _progress(path, "archive") as bar:
                tar.addfile(info, _CountingReader(handle, bar))


class _CountingReader:
    def __init__(self, handle: BinaryIO, bar):
        self._handle, self._bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._bar.update(len(data))
        return data


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _progress(path: Path, what: str):
    """A tqdm bar on stderr for files worth waiting on; silent for small files and when stderr is not a TTY."""
    size = path.stat().st_size
    if size < PROGRESS_MIN_BYTES:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"{what} {path.name}",
                disable=None, leave=False, file=sys.stderr)


def read_manifest(artifact: Path) -> dict:
    """The manifest inside a built model.tar.gz, without unpacking the rest.

    Raises:
        BuildRefused: not an archive this script wrote.
    """
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise KeyError(MANIFEST)
            return json.loads(member.read())
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise BuildRefused(f"{artifact}: not a model artifact of build_artifact.py (no readable {MANIFEST}: "
                           f"{exc})") from exc


def iter_manifest_problems(unpacked: Path) -> Iterator[str]:
    """What differs between an unpacked artifact and its manifest (nothing when intact)."""
    manifest = json.loads((unpacked / MANIFEST).read_text(encoding="utf-8"))
    listed = {entry["path"]: entry for entry in manifest["files"]}
    present = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()} - {MANIFEST}
    for name in sorted(present - set(listed)):
        yield f"{name}: not in the manifest"
    for name, entry in sorted(listed.items()):
        path = unpacked / name
        if not path.is_file():
            yield f"{name}: missing"
        elif _sha256_file(path) != entry["sha256"]:
            yield f"{name}: SHA-256 differs from the manifest"


def _parse_remote_code(values: list[str]) -> dict[str, Path]:
    """--remote-code REPO=DIR values, each DIR checked up front (not only when an auto_map happens to need it)."""
    sources = {}
    for value in values:
        repo, sep, path = value.partition("=")
        if not sep or not repo or not path:
            raise _files.InputError(f"--remote-code: expected REPO=DIR, got {value!r}")
        sources[repo] = _files.require_dir(path, f"--remote-code {repo}", f"pass a local checkout of {repo}")
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", nargs="?", help="a local Hugging Face / sentence-transformers directory")
    parser.add_argument("-o", "--output", required=True, help="where to write model.tar.gz")
    parser.add_argument("--catalog", help="take model directory, name, kind, tasks and remote code from a catalog")
    parser.add_argument("--product", help="the catalog product (default: the only one)")
    parser.add_argument("--served-name", help="the name answered in `model` (searchbox.json served_model_name)")
    parser.add_argument("--kind", choices=kinds.names())
    parser.add_argument("--remote-code", action="append", default=[], metavar="REPO=DIR",
                        help="a local checkout holding the trust_remote_code files of REPO (repeatable)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip loading the staged model and running one inference (not recommended)")
    parser.add_argument("--device", default="auto",
                        help="where the check runs: auto (a GPU when there is one), cpu, cuda")
    parser.add_argument("--compresslevel", type=int, default=6, choices=range(0, 10), metavar="0-9")
    parser.add_argument("--backend", choices=("torch", "onnx"),
                        help="the compute path the artifact serves on: torch (default), or onnx (exported here, "
                             "checked against torch, served by ONNX Runtime)")
    parser.add_argument("--quantize", choices=("int8",),
                        help="with --backend onnx: serve dynamic int8 (faster, smaller) if it passes the quality gate")
    parser.add_argument("--classifier", action="append", default=[], metavar="NAME=EXAMPLES.jsonl",
                        help="fit a few-shot classifier on lines {\"text\"|\"image\", \"label\"} and ship it "
                             "(POST /v1/classify with classifier_id NAME); repeatable")
    parser.add_argument("--classifier-min-accuracy", type=float, default=0.0, metavar="0-1",
                        help="refuse a classifier whose held-out accuracy is below this (default 0: report only)")
    args = parser.parse_args(argv)
    model_dir = args.model_dir
    try:
        kwargs: dict[str, Any] = {"served_name": args.served_name, "kind": args.kind,
                                  "remote_code": _parse_remote_code(args.remote_code)}
        if model_dir is not None:
            _files.require_dir(model_dir, "MODEL_DIR", "give a Hugging Face / sentence-transformers directory")
        if args.catalog:
            product = _catalog.find_product(_catalog.load_catalog(args.catalog), args.product)
            model_dir = model_dir or product.model_dir
            kwargs = {"served_name": args.served_name or product.served_name, "kind": args.kind or product.kind,
                      "tasks": product.tasks, "remote_code": {**product.remote_code, **kwargs["remote_code"]},
                      "metering": product.pricing.serving_config(),
                      "backend": product.backend, "quantize": product.quantize,
                      "classifiers": dict(product.classifiers),
                      "classifier_min_accuracy": product.classifier_min_accuracy}
        if model_dir is None:
            parser.error("give MODEL_DIR or --catalog")
        kwargs["backend"] = args.backend or kwargs.get("backend") or "torch"
        kwargs["quantize"] = args.quantize or kwargs.get("quantize")
        # the command line's classifiers beside the catalog's (the same name: the command line's)
        kwargs["classifiers"] = {**kwargs.get("classifiers", {}),
                                 **dict(_classifiers.parse_option(value) for value in args.classifier)}
        kwargs["classifier_min_accuracy"] = max(args.classifier_min_accuracy, kwargs.get("classifier_min_accuracy", 0.0))
        report = build_artifact(model_dir, args.output, check=args.check, compresslevel=args.compresslevel,
                                device=args.device, **kwargs)
    except (_catalog.CatalogError, BuildRefused, _files.InputError, _classifiers.ClassifierRefused) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {report.output} ({report.size / 1e6:.1f} MB, {report.files} files)")
    print(f"  sha256 {report.sha256}")
    print(f"  {report.kind} model served as {report.served_name!r} on {report.backend}; check: {report.check}")
    if report.quality is not None:
        print(f"  onnx: {report.quality.summary()}")
    print(f"  billing: {report.billing}")
    if report.sample is not None and report.metering is not None:
        print(f"  the sample request: {report.sample.tokens} tokens, {report.sample.inputs} inputs -> "
              f"{report.sample.units} unit{'s' * (report.sample.units != 1)}")
    for classifier in report.classifiers:
        print(f"  classifier {classifier['name']}: {len(classifier['labels'])} labels, {classifier['examples']} "
              f"examples, held-out accuracy {classifier['held_out_accuracy']:.3f}")
    for name, repo in report.vendored.items():
        print(f"  vendored {name} from {repo}")
    if report.pinned:
        print(f"  remote code pinned in {MANIFEST} (SHA-256, the only code serve runs): {', '.join(report.pinned)}")
    if report.skipped:
        print(f"  left out (never read by the image): {', '.join(report.skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
