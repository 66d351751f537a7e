"""The package's layering, checked so that it stays the way the restructure left it.

Dependencies point one way::

    cli -> experiments -> train / evaluate / generation / report -> runs / data / fdsd / metrics / figures
        -> models / audio -> ops -> _ext

(``errors``, ``_io``, ``runtime``, ``resultdir`` and the package root's ``__version__`` are leaves anyone may import).
The import checks read every module's source with ``ast`` (imports at module level and inside functions), so they
need no GPU, no native extension and no data; the import-time checks run in fresh interpreters.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightdvae"

#: The layer of each top-level part of the package: an import must go to the same layer or a lower one, and the
#: parts of one layer must not import each other in a circle.
LAYERS: dict[str, int] = {
    "_C": 0,
    "_ext": 0,
    "ops": 1,
    "models": 2,
    "audio": 2,
    "runs": 3,
    "data": 3,
    "fdsd": 3,
    "metrics": 3,
    "figures": 3,
    "train": 4,
    "evaluate": 4,
    "generation": 4,
    "report": 4,
    "enhance": 4,
    "experiments": 5,
    "cli": 6,
    "__main__": 6,
}
#: Leaves: anyone may import them, and they import no other part of the package (``lightdvae`` is the root
#: package, imported for ``__version__``).
LEAVES = {"", "errors", "_io", "runtime", "resultdir"}
#: Private modules whose names others may import.
PRIVATE_MODULES = {"_ext", "_io", "_C"}
#: The goal shape, outside ops/ and models/.
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 90


# ----------------------------------------------------------------------------------------------------------------
# Reading the sources
# ----------------------------------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _sources() -> dict[str, tuple[Path, ast.Module]]:
    """Every module of the package: name -> (path, syntax tree)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        out[_module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return out


def _is_module(name: str) -> bool:
    return name in _sources() or name == "lightdvae._C"


def _is_package(name: str) -> bool:
    path = _sources().get(name, (None,))[0]
    return path is not None and path.name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` reads from, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if _is_package(module) else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _inside_getattr(tree: ast.Module) -> set[int]:
    """Line numbers of a module-level ``__getattr__`` (PEP 562): its imports are compatibility re-exports made on
    first use, not dependencies of the module."""
    lines: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def _imports(module: str, tree: ast.Module | None = None, *, skip_getattr: bool = True) -> list:
    """Every ``lightdvae`` import of ``module`` (module level and in functions): ``(line, module, name)``;
    ``name`` is the imported name of ``from M import name`` (None for ``import M``)."""
    tree = tree if tree is not None else _sources()[module][1]
    skipped = _inside_getattr(tree) if skip_getattr else set()
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "lightdvae")
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source.split(".")[0] == "lightdvae":
                out.extend((node.lineno, source, a.name) for a in node.names)
    return out


def _targets(module: str) -> list[tuple[int, str]]:
    """The lightdvae modules ``module`` imports: ``from lightdvae.x import y`` counts as ``lightdvae.x.y`` when
    that is a module."""
    out = []
    for line, source, name in _imports(module):
        if name is not None and _is_module(f"{source}.{name}"):
            source = f"{source}.{name}"
        out.append((line, source))
    return out


def _unit(module: str) -> str:
    """The top-level part of the package a module belongs to (``""`` for the root package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _where(module: str, line: int) -> str:
    path = _sources()[module][0].relative_to(PACKAGE.parent) if module in _sources() else module
    return f"{path}:{line}"


# ----------------------------------------------------------------------------------------------------------------
# Import time (fresh interpreters)
# ----------------------------------------------------------------------------------------------------------------
def _loaded_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint('\\n'.join(m for m in sys.modules if m.startswith('lightdvae')))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    return set(out.stdout.split())


def test_importing_the_data_layer_loads_neither_the_cli_nor_the_corpus_builder():
    loaded = _loaded_after("import lightdvae.data")
    assert not {m for m in loaded if m == "lightdvae.cli" or m.startswith("lightdvae.cli.")}
    assert not {m for m in loaded if m == "lightdvae.data.builtin" or m.startswith("lightdvae.data.builtin.")}


def test_importing_the_models_loads_no_run_training_evaluation_or_experiment_module():
    models = sorted(m for m in _sources() if m == "lightdvae.models" or m.startswith("lightdvae.models."))
    loaded = _loaded_after("import importlib\n" + "\n".join(f"importlib.import_module({m!r})" for m in models))
    above = {u for u, layer in LAYERS.items() if layer > LAYERS["models"]}
    assert not sorted(m for m in loaded if _unit(m) in above), "the models layer loads modules above it"


# ----------------------------------------------------------------------------------------------------------------
# Imports, read from the source
# ----------------------------------------------------------------------------------------------------------------
def test_every_part_of_the_package_has_a_layer():
    unknown = sorted({_unit(m) for m in _sources()} - set(LAYERS) - LEAVES)
    assert not unknown, f"add these parts of lightdvae to LAYERS in {Path(__file__).name}: {unknown}"


def test_dependencies_point_one_way():
    wrong = []
    edges: dict[str, set[str]] = {}
    for module in _sources():
        here = _unit(module)
        if here == "":
            continue  # the root package imports _ext and ops, once, for everyone
        for line, target in _targets(module):
            there = _unit(target)
            if there == here or there in LEAVES:
                continue
            if here in LEAVES:
                if LAYERS.get(there) != 0:
                    wrong.append(f"{_where(module, line)}: the leaf {module} imports {target}")
            elif there not in LAYERS or here not in LAYERS:
                continue  # reported by test_every_part_of_the_package_has_a_layer
            elif LAYERS[there] > LAYERS[here]:
                wrong.append(f"{_where(module, line)}: {module} (layer {here}) imports {target} (above it)")
            else:
                edges.setdefault(here, set()).add(there)
    wrong += [f"circle between parts of one layer: {' -> '.join(c)}" for c in _cycles(edges)]
    assert not wrong, "\n".join(wrong)


def test_no_circle_in_the_data_layer():
    """The built-in corpus imports the corpus layouts, never the reverse; resolving a spec sits above both."""
    edges: dict[str, set[str]] = {}
    wrong = []
    for module in _sources():
        if not module.startswith("lightdvae.data."):
            continue
        here = module.split(".")[2]
        for line, target in _targets(module):
            if target.startswith("lightdvae.data.") and target.split(".")[2] != here:
                edges.setdefault(here, set()).add(target.split(".")[2])
                if here == "corpora" and target.split(".")[2] in ("builtin", "resolve"):
                    wrong.append(f"{_where(module, line)}: the corpus layouts import {target}")
    wrong += [f"circle in lightdvae.data: {' -> '.join(c)}" for c in _cycles(edges)]
    assert not wrong, "\n".join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each node that lies on one (depth-first search)."""
    found, seen = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt) :] + [nxt]
                if not set(cycle) <= seen:
                    seen.update(cycle)
                    found.append(cycle)
            elif nxt not in seen:
                visit(nxt, path + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name not in PRIVATE_MODULES


def _module_aliases(module: str, tree: ast.Module) -> dict[str, str]:
    """Local names bound to lightdvae modules: ``import lightdvae.x as m`` -> {"m": "lightdvae.x"}, ..."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "lightdvae":
                    aliases[a.asname or "lightdvae"] = a.name if a.asname else "lightdvae"
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for a in node.names:
                if source.split(".")[0] == "lightdvae" and _is_module(f"{source}.{a.name}"):
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
    return aliases


def _attribute_chain(node: ast.Attribute) -> list[str] | None:
    """``a.b.c`` -> ``["a", "b", "c"]`` (None when the chain does not start at a name)."""
    names = [node.attr]
    value = node.value
    while isinstance(value, ast.Attribute):
        names.append(value.attr)
        value = value.value
    if not isinstance(value, ast.Name):
        return None
    return [value.id, *reversed(names)]


def _private_uses(module: str, tree: ast.Module) -> list[str]:
    """Where ``module`` imports or reads another lightdvae module's private name."""
    wrong = []
    for line, source, name in _imports(module, tree, skip_getattr=False):
        if name is not None and _private(name) and not _is_module(f"{source}.{name}") and source != module:
            wrong.append(f"{_where(module, line)}: from {source} import {name}")
    aliases = _module_aliases(module, tree)
    for node in ast.walk(tree):
        chain = _attribute_chain(node) if isinstance(node, ast.Attribute) else None
        if not chain or chain[0] not in aliases:
            continue
        owner = aliases[chain[0]]
        for i, attr in enumerate(chain[1:], start=1):
            if _is_module(f"{owner}.{attr}"):
                owner = f"{owner}.{attr}"
                continue
            if _private(attr) and owner != module:
                wrong.append(f"{_where(module, node.lineno)}: {'.'.join(chain[: i + 1])} ({owner}'s private name)")
            break
    return sorted(set(wrong))


def test_no_module_uses_another_modules_private_names():
    wrong = [w for module, (_, tree) in _sources().items() for w in _private_uses(module, tree)]
    assert not wrong, "\n".join(wrong)


def test_the_private_name_check_sees_both_forms():
    source = """
from lightdvae import _ext
from lightdvae.audio import spectral
import lightdvae.data.corpora.layouts as layouts
from lightdvae.data.corpora.layouts import _manifest_rows, read_manifest


def f():
    return spectral._WINDOWS, layouts._is_audio, spectral.stft, _ext.HAS_NATIVE, lightdvae.runs.__name__
"""
    found = _private_uses("lightdvae.example", ast.parse(source))
    assert [w.split(": ", 1)[1] for w in found] == [
        "from lightdvae.data.corpora.layouts import _manifest_rows",
        "layouts._is_audio (lightdvae.data.corpora.layouts's private name)",
        "spectral._WINDOWS (lightdvae.audio.spectral's private name)",
    ], found


# ----------------------------------------------------------------------------------------------------------------
# The goal shape
# ----------------------------------------------------------------------------------------------------------------
def _shaped(module: str) -> bool:
    return _unit(module) not in ("ops", "models")


def test_modules_are_a_few_hundred_lines():
    long = {}
    for module, (path, _) in _sources().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if _shaped(module) and n > MAX_MODULE_LINES:
            long[str(path.relative_to(PACKAGE.parent))] = n
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_fit_in_mind():
    long = {}
    for module, (path, tree) in _sources().items():
        if not _shaped(module):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
