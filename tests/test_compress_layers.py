"""compress/ is layered: interfaces at the bottom, numerics in the middle, the codecs and the pipeline
on top. No module may import, even from inside a function, one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

COMPRESS = Path(__file__).resolve().parent.parent / "compress"
PACKAGE = "adapters.compress"

# Modules that make up the bottom layer: none may import (directly or not) a codec or the pipeline.
INTERFACES = ("protocol", "errors", "peft_io", "stfile", "strict_json", "limits", "patterns")
TOP = ("codec", "nola", "pipeline")
# The middle layer (NOLA's configuration, fits, encoding and distillations): it uses the interfaces and
# other numerics, never the codecs or the pipeline that sit on top of it.
NUMERICS = (
    "nola_config",
    "nola_fit",
    "nola_format",
    "distill_config",
    "distill_loop",
    "distill",
    "distill_transform",
)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The compress/ modules `path` imports anywhere in its body (module level and inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name.removeprefix(PACKAGE + ".").split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith(PACKAGE):
                base = node.module.removeprefix(PACKAGE).lstrip(".")
            elif node.level == 1:
                base = node.module or ""
            else:
                continue
            if base:
                found.add(base.split(".")[0])
            else:  # `from . import a, b`
                found.update(alias.name for alias in node.names)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    files = {p.stem: p for p in COMPRESS.glob("*.py") if p.stem != "__init__"}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_checker_sees_imports_and_cycles(tmp_path):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .c import x\n")
    (tmp_path / "c.py").write_text("import adapters.compress.a\n")
    modules = {"a", "b", "c"}
    graph = {p.stem: imports_of(p, modules) for p in tmp_path.glob("*.py")}
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_compress_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and graph["nola"]  # the graph was really built
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in compress/: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", INTERFACES + NUMERICS)
def test_lower_layers_import_no_codec(module):
    graph = import_graph()
    assert module in graph, f"compress/{module}.py is listed in a layer but does not exist"
    assert not reachable(graph, module) & set(TOP)


def test_public_names_stay_where_callers_import_them():
    from adapters.compress.codec import (
        CONFIG_KEY,
        FORMAT_KEY,
        VERSION_KEY,
        CompressionReport,
        RawCodec,
        canonical_bytes,
        codec_class,
        config_metadata,
        make_codec,
        reconstruct,
        reconstruct_to_dir,
        register_codec,
    )
    from adapters.compress.nola import NolaCodec, NolaConfig, fit_adapter, lora_pairs, prepare, uses_transform
    from adapters.compress.pipeline import run, split_for_predictions

    assert codec_class("nola") is NolaCodec and codec_class("raw") is RawCodec
    assert isinstance(make_codec("nola", ratio=10), NolaCodec)
    assert all((CONFIG_KEY, FORMAT_KEY, VERSION_KEY, CompressionReport, canonical_bytes, config_metadata))
    assert all((reconstruct, reconstruct_to_dir, register_codec, NolaConfig, fit_adapter, lora_pairs))
    assert all((prepare, uses_transform, run, split_for_predictions))
