"""The layout keeps its seams: no import cycles between the project's modules, and no branching on an operation or
a request type outside the operation registries (model_handlers/operations/, the dialects' WIRE modules)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model_handlers", "container", "bench")
# The plug-ins of the operation registries: the one place an operation is spelled out.
REGISTRIES = ("model_handlers/operations/", "container/dialects/embed.py", "container/dialects/multi_vector.py",
              "container/dialects/rerank.py")
TYPED = r"(EmbedRequest|RerankRequest|EmbedResult|RerankResult)"
BRANCHES = {
    "isinstance of a typed request or result": re.compile(rf"isinstance\([^)]*\b{TYPED}\b"),
    "a comparison with an operation": re.compile(
        r"\boperation\s*(==|!=|is(?! (not )?None)\b|in\s*\()|(==|!=)\s*[\"'](embed|multi-vector|rerank)[\"']"),
    "a kind asked about one named operation": re.compile(r"answers\(\s*(Operation\.|[A-Z_]+\))"),
    # an answer's form sniffed from its arrays' rank (encodings.py encodes a matrix row by row, whatever produced it)
    "the rank of a result's arrays": re.compile(r"\bndim\b"),
}
ALLOWED = {"the rank of a result's arrays": ("container/encodings.py",)}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
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


def test_no_branching_on_operations_outside_their_registries():
    found = []
    for package in ("model_handlers", "container", "packaging"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(REGISTRIES):
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                found += [f"{relative}:{number}: {what}: {line.strip()}" for what, pattern in BRANCHES.items()
                          if pattern.search(line) and not line.lstrip().startswith("#")
                          and relative not in ALLOWED.get(what, ())]
    assert found == []


# The scaffold under every kind: where each of these is written, and the one place it may be.
SCAFFOLD = {
    "a JSON file read by hand (model_handlers/model_files.py reads a model directory's)": (
        re.compile(r"\bjson\.loads?\("),
        # model_code scans every *.json for code references; adapters (run-time API) and classifiers (artifact
        # files) check their own formats with their own errors
        ("model_handlers/model_files.py", "model_handlers/model_code.py", "model_handlers/adapters.py",
         "model_handlers/classifiers.py")),
    "a 'no limit' sentinel (model_handlers/lengths.py's NO_LIMIT)": (
        re.compile(r"\b1_?000_?000\b|VERY_LARGE_INTEGER"), ("model_handlers/lengths.py",)),
    "an ONNX session opened by hand (OnnxSession.of)": (
        re.compile(r"\bOnnxSession\(|InferenceSession\("), ("model_handlers/onnx_runtime.py",)),
}


def test_kinds_stand_on_one_scaffold_and_know_no_wire():
    """Every kind reads its files, its length and its ONNX session through the shared modules, and the model layer
    holds no HTTP path (a kind's samples are wire text: packaging/_samples.py)."""
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
