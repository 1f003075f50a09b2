"""House rules of the code's layout, checked on the source: drivers talk to
clouds and import nothing of the launcher, and modules import each other
one way (a cycle makes import order matter and hides a missing seam)."""

import ast
import os

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "nodepool")


def modules() -> dict[str, str]:
    found = {}
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                module = "nodepool." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def runtime_imports(path: str, known: dict[str, str]) -> set[str]:
    """Modules imported anywhere in the file (a deferred import inside a
    function is still a dependency), except under TYPE_CHECKING; package
    re-exports left out."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    imported = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                imported.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    return {m for m in imported if m in known and not _is_package(known[m])}


def _is_package(path: str) -> bool:
    return path.endswith("__init__.py")


def test_drivers_import_nothing_from_the_launcher():
    offenders = []
    for module, path in modules().items():
        if module.startswith("nodepool.drivers"):
            source = open(path, encoding="utf-8").read()
            if "nodepool.launcher" in source:
                offenders.append(module)
    assert offenders == []


def test_no_import_cycles_between_modules():
    known = modules()
    graph = {m: runtime_imports(p, known) - {m} for m, p in known.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycles.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
