"""The shape of the package (issue 21): no import cycle, no long function, one text head.

Read from the source with :mod:`ast`, so imports inside functions count as much as those
at the top of a module (they hide cycles, not remove them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import skclip

PACKAGE = Path(skclip.__file__).resolve().parent
#: Lines of code of one function at most: docstrings, comments and blank lines not
#: counted, a nested function counted inside its parent too.
MAX_LINES_OF_CODE = 60
TEXT_HEAD_PARAMETERS = ("clip_model", "templates", "class_names", "text_features", "device")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source.

    ``from . import x`` imports the module ``x`` (not the package around it);
    ``from .x import y`` imports ``x`` (or ``x.y`` where that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    edges = set()
    for target in found:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imported_modules(name, path, set(mods)) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def lines_of_code(node: ast.AST, lines: list[str]) -> int:
    """Lines of ``node`` (decorators included) that are not blank, comments or docstrings."""
    docstrings = set()
    for inner in ast.walk(node):
        body = getattr(inner, "body", None)
        if (
            isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    first = min([d.lineno for d in node.decorator_list] + [node.lineno])
    return sum(
        1
        for number in range(first, node.end_lineno + 1)
        if number not in docstrings
        and lines[number - 1].strip()
        and not lines[number - 1].strip().startswith("#")
    )


def function_lengths(root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(lines of code, qualified name) of every function and method, nested ones too."""
    found = []
    for name, path in modules(root).items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((lines_of_code(node, lines), f"{name}.{node.name}:{node.lineno}"))
    return sorted(found, reverse=True)


# -- the tests -------------------------------------------------------------------------------
def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_imports_inside_functions(tmp_path):
    """A cycle closed by an import inside a function is found (the finder can fail)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from .high import g\n    return g\n")
    (package / "high.py").write_text("from . import low\n\ndef g():\n    return low\n")
    (package / "other.py").write_text("from .low import f\n")
    assert cycles(import_graph(package)) == [["pkg.high", "pkg.low"]]


def test_no_function_over_60_lines_of_code():
    long = [(n, where) for n, where in function_lengths() if n > MAX_LINES_OF_CODE]
    assert long == []


def test_the_line_counter_counts_nested_functions_and_skips_docstrings(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    body = "".join(f"        x{i} = {i}\n" for i in range(60))
    (package / "m.py").write_text(
        'def outer():\n    """Doc.\n\n    More.\n    """\n    # a comment\n\n'
        f"    def inner():\n{body}        return 0\n    return inner\n"
    )
    lengths = dict((where.split(":")[0], n) for n, where in function_lengths(package))
    assert lengths == {"pkg.m.inner": 62, "pkg.m.outer": 64}


HEADS = (
    "TipAdapterClassifier",
    "TipAdapterClassifierCV",
    "GDAClassifier",
    "APEClassifier",
    "ProKeRClassifier",
    "ProKeRClassifierCV",
    "CLAPClassifier",
    "LinearProbePPClassifier",
)


def head_modules() -> list[Path]:
    """The source files of the heads and of every class they derive from in skclip."""
    import inspect

    classes = {c for name in HEADS for c in getattr(skclip, name).__mro__}
    return sorted({Path(inspect.getfile(c)) for c in classes if c.__module__.startswith("skclip")})


@pytest.mark.parametrize("name", TEXT_HEAD_PARAMETERS)
def test_text_head_parameters_are_declared_once(name):
    """Each text-head parameter has one constraint, one ``__init__`` parameter, one
    assignment and one docstring entry in the heads' source, and every head has it."""
    constraints = parameters = assignments = docs = 0
    paths = head_modules()
    assert paths
    for path in paths:
        source = path.read_text(encoding="utf-8")
        docs += source.count(f"\n    {name} : ")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Dict):
                constraints += sum(
                    isinstance(k, ast.Constant) and k.value == name for k in node.keys
                )
            elif isinstance(node, ast.FunctionDef) and node.name == "__init__":
                parameters += sum(a.arg == name for a in node.args.kwonlyargs)
            elif isinstance(node, ast.Assign):
                assignments += sum(
                    isinstance(t, ast.Attribute)
                    and t.attr == name
                    and isinstance(t.value, ast.Name)
                    and t.value.id == "self"
                    for t in node.targets
                )
    assert (constraints, parameters, assignments, docs) == (1, 1, 1, 1)
    for head in HEADS:
        cls = getattr(skclip, head)
        assert name in cls._parameter_constraints
        assert name in cls().get_params()
        assert cls.__doc__.count(f"\n    {name} : ") == 1
