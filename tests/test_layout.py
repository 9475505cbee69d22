"""The layout keeps its seams: no import cycles between the project's modules, and no branching on an operation or
a request type outside the operation's own modules (its model_handlers/operations/ and container/dialects/ plug-ins).

The operations, their modules and their typed requests and results are read from the registries, so a new operation
is guarded as soon as it is registered."""

from __future__ import annotations

import ast
import importlib
import re
import typing
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model_handlers", "container", "bench")
SCANNED = ("model_handlers", "container", "packaging")
# The registries themselves: they list the plug-ins and read their specs, never name one operation.
REGISTRIES = ("model_handlers/operations/__init__.py", "container/dialects/__init__.py")
# Strings spelled like an operation that are something else, each with what it is.
ALLOWED_LITERALS = {
    ("model_handlers/types.py", "rerank"): "RerankRequest's `operation`, declared beside the inputs it shares with "
                                           "embeddings; operations/rerank.py reads its name from it",
    ("model_handlers/kinds/bge_m3.py", "sparse"): "FlagEmbedding's name of BGE-M3's lexical-weight score",
    ("container/dialects/elastic.py", "rerank"): "the key of Elasticsearch's rerank answer",
    ("packaging/_samples.py", "sparse"): "the sparse kind's name, a key of the listing's samples per kind",
    ("packaging/_samples.py", "multi-vector"): "the multi-vector kind's name, a key of the listing's samples per kind",
}
ALLOWED = {"the rank of a result's arrays": ("container/encodings.py",)}


def _path(module: str) -> str:
    return module.replace(".", "/") + ".py"


@lru_cache(maxsize=1)
def own_modules() -> dict[str, set[str]]:
    """Each operation's name -> the files that are its own: its operation module and its dialect module."""
    from container import dialects
    from model_handlers import operations

    own: dict[str, set[str]] = {}
    for module in operations.OPERATION_MODULES:
        own.setdefault(importlib.import_module(module).SPEC.name, set()).add(_path(module))
    for module in dialects.DIALECT_MODULES:
        own.setdefault(importlib.import_module(module).WIRE.name, set()).add(_path(module))
    return own


@lru_cache(maxsize=1)
def typed() -> tuple[str, ...]:
    """The names of every operation's typed request and result (what its `run` takes and returns)."""
    from model_handlers import operations

    found = set()
    for spec in operations.registered():
        found |= {spec.request_type.__name__, typing.get_type_hints(spec.run)["return"].__name__}
    return tuple(sorted(found))


def branches() -> dict[str, re.Pattern]:
    from model_handlers import operations

    types = "|".join(typed())
    names = "|".join(re.escape(name) for name in operations.names())
    return {
        "isinstance of a typed request or result": re.compile(rf"isinstance\([^)]*\b({types})\b"),
        "a comparison with an operation": re.compile(
            rf"\boperation\s*(==|!=|is(?! (not )?None)\b|in\s*\()|(==|!=)\s*[\"']({names})[\"']"),
        "a kind asked about one named operation": re.compile(r"answers\(\s*(Operation\.|[A-Z_]+\))"),
        # an answer's form sniffed from its arrays' rank (encodings.py encodes a matrix row by row, whatever made it)
        "the rank of a result's arrays": re.compile(r"\bndim\b"),
    }


def scanned() -> list[tuple[str, Path]]:
    """Every module that may not branch on an operation: all but the operations' own and the registries."""
    own = set().union(*own_modules().values())
    return [(relative, path) for package in SCANNED for path in sorted((ROOT / package).rglob("*.py"))
            if (relative := path.relative_to(ROOT).as_posix()) not in own | set(REGISTRIES)]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if any(part.startswith(".") for part in parts):
                continue  # a venv made beside the code (make bench's bench/.peer-venv) holds other projects' modules
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Every project module `path` imports, at module level, in functions or under TYPE_CHECKING alike."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            edges |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                edges.add(target if target in known else base)
    return {edge for edge in edges if edge in known and edge != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycles():
    known = modules()
    graph = {name: imports(path, name, known) for name, path in known.items()}
    assert cycles(graph) == []


def test_the_guard_knows_every_registered_operation_and_its_types():
    """The names and types come from the registries: eight operations, each with its own two modules, and the typed
    requests and results of all of them (four were listed by hand before, and three operations went unguarded)."""
    assert sorted(own_modules()) == ["classify", "embed", "multi-vector", "rerank", "segment", "sparse", "tokenize",
                                    "train"]
    assert all(len(files) == 2 and all((ROOT / file).is_file() for file in files) for files in own_modules().values())
    assert set(typed()) == {"EmbedRequest", "EmbedResult", "RerankRequest", "RerankResult", "TokenizeRequest",
                            "TokenizeResult", "SegmentRequest", "SegmentResult", "ClassifyRequest", "ClassifyResult",
                            "TrainRequest", "TrainResult"}


def test_no_branching_on_operations_outside_their_own_modules():
    found = []
    for relative, path in scanned():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            found += [f"{relative}:{number}: {what}: {line.strip()}" for what, pattern in branches().items()
                      if pattern.search(line) and not line.lstrip().startswith("#")
                      and relative not in ALLOWED.get(what, ())]
    assert found == []


def operation_literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    """The string constants of `source` spelled as an operation's name (not a docstring's words, nor a kind's own
    `Kind(name=...)`, which may share its operation's word)."""
    tree = ast.parse(source)
    kind_names = {id(keyword.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and getattr(node.func, "id", None) == "Kind" for keyword in node.keywords if keyword.arg == "name"}
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in names and id(node) not in kind_names)


def test_no_operation_is_named_by_a_string_outside_its_own_modules():
    """A module that needs an operation imports its name (EMBED, SPARSE) or reads it from a spec: a literal "classify"
    elsewhere is a branch on the operation that the registries cannot see (`kind.answers("classify")`)."""
    from model_handlers import operations

    names = set(operations.names())
    literals = {(relative, line, value) for relative, path in scanned()
                for line, value in operation_literals(path.read_text(encoding="utf-8"), names)}
    assert sorted(f"{relative}:{line}: {value!r}" for relative, line, value in literals
                  if (relative, value) not in ALLOWED_LITERALS) == []
    # every exception is still there: one that is not would let the next such literal in unseen
    assert {(relative, value) for relative, _, value in literals} >= set(ALLOWED_LITERALS)


def test_the_literal_guard_catches_a_named_operation():
    """What the guard above reads, on sources of its own: a literal of any registered operation is found, in a call, a
    comparison or a mapping key; a kind's own name and a word inside a longer string are not."""
    names = {"embed", "classify", "sparse"}
    assert operation_literals('kind.answers("classify")\nx = {"sparse": 1}\nif op == "embed": pass\n', names) == [
        (1, "classify"), (2, "sparse"), (3, "embed")]
    assert operation_literals('KIND = Kind(name="sparse", summary="sparse embeddings")\ns = "embed it"\n',
                              names) == []


# The scaffold under every kind: where each of these is written, and the one place it may be.
SCAFFOLD = {
    "a JSON file read by hand (model_handlers/model_files.py reads a model directory's)": (
        re.compile(r"\bjson\.loads?\("),
        # model_code scans every *.json for code references; adapters (run-time API) and classifiers (artifact
        # files) check their own formats with their own errors; so does the store of classifiers trained on the
        # endpoint (documents it writes itself, not a model directory's)
        ("model_handlers/model_files.py", "model_handlers/model_code.py", "model_handlers/adapters.py",
         "model_handlers/classifiers.py", "model_handlers/classifier_store.py")),
    "a 'no limit' sentinel (model_handlers/lengths.py's NO_LIMIT)": (
        re.compile(r"\b1_?000_?000\b|VERY_LARGE_INTEGER"), ("model_handlers/lengths.py",)),
    "an ONNX session opened by hand (OnnxSession.of)": (
        re.compile(r"\bOnnxSession\(|InferenceSession\("), ("model_handlers/onnx_runtime.py",)),
    "torch's threads set by a kind (the loader sets them: HandlerOptions.set_torch_threads)": (
        re.compile(r"\bset_num_threads\("), ("model_handlers/options.py",)),
}


def test_kinds_stand_on_one_scaffold_and_know_no_wire():
    """Every kind reads its files, its length and its ONNX session through the shared modules, leaves torch's threads
    to the loader, and the model layer holds no HTTP path (a kind's samples are wire text: packaging/_samples.py)."""
    found = []
    for path in sorted((ROOT / "model_handlers").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            found += [f"{relative}:{number}: {what}: {line.strip()}" for what, (pattern, allowed) in SCAFFOLD.items()
                      if pattern.search(line) and not line.lstrip().startswith("#") and relative not in allowed]
        found += [f"{relative}:{node.lineno}: an HTTP path: {node.value!r}" for node in ast.walk(ast.parse(text))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and re.match(r"/(v1/|invocations\b|score\b|ping\b)", node.value)]
    assert found == []
