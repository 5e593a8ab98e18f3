"""The package's layers (README, Layout): a module imports only from its own layer or below, the module graph has
no cycle (function-local imports included), and a function-local import is there only to keep a heavy library
out of start-up. The checks parse the source (ast), so they see imports no test happens to execute."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: layer of each module (a package's entry covers its submodules unless one is listed); higher may import lower
LAYERS = {
    0: ("errors", "accel", "flipcurve", "store", "images", "synthetic"),
    1: ("config",),
    2: ("typed",),
    3: ("datasets", "augment", "backbones", "encoders", "models", "esvm", "rankers", "external", "datamodels",
        "launch", "support", "support.search", "support.bank", "support.answer"),
    4: ("embedding", "scoring", "queries", "subsets", "trak", "lds", "export", "explain", "plan", "report",
        "support.stage"),
    5: ("settings", "pipeline"),
    6: ("cli", "__main__"),
}
#: what a function may import inside itself: libraries whose import costs a start-up far more than the 0.2 s of
#: numpy (measured with python -X importtime on 2 cores: torch 2.2 s, scikit-learn 3.0 s, matplotlib 1.4 s,
#: scipy 0.55 s, submitit 0.26 s, h5py 0.20 s, jsonschema 0.16 s; traker and pandas pull torch / are large)
HEAVY = ("torch", "torchvision", "sklearn", "scipy", "submitit", "matplotlib", "h5py", "jsonschema", "trak",
         "pandas")
#: modules `simattr explain`, `simattr --help` and the Snakefile import; none may pull a heavy library in
LIGHT = ("simattr.cli", "simattr.settings", "simattr.config", "simattr.store", "simattr.datasets",
         "simattr.encoders", "simattr.models", "simattr.external", "simattr.subsets", "simattr.typed",
         "simattr.pipeline", "simattr.scoring", "simattr.plan", "simattr.errors")


@dataclass(frozen=True)
class Import:
    module: str        # the importing module, without the "simattr." prefix ("" for the package itself)
    target: str        # what it imports: a simattr module (no prefix) or a top-level library
    internal: bool
    local: bool        # inside a function
    names: tuple[str, ...]
    line: int


def modules(src: Path) -> dict[str, Path]:
    root = src / "simattr"
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(src: Path) -> list[Import]:
    mods = modules(src)
    out = []
    for mod, f in mods.items():
        tree = ast.parse(f.read_text(), str(f))
        package = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        if mod == "":
            package = []
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}

        def local(node):
            p = parents.get(node)
            while p is not None:
                if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    return True
                p = parents.get(p)
            return False

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    top = a.name.split(".")
                    if top[0] == "simattr":
                        out.append(Import(mod, ".".join(top[1:]), True, local(node), (), node.lineno))
                    else:
                        out.append(Import(mod, top[0], False, local(node), (), node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                elif node.module.split(".")[0] == "simattr":
                    base = node.module.split(".")[1:]
                else:
                    out.append(Import(mod, node.module.split(".")[0], False, local(node), (), node.lineno))
                    continue
                names = tuple(a.name for a in node.names)
                # `from . import store` names a module; `from .store import fill` names a module's attribute
                for n in names:
                    target = ".".join(base + [n])
                    if target not in mods:
                        target = ".".join(base)
                    out.append(Import(mod, target, True, local(node), (n,), node.lineno))
    return out


def layer(mod: str) -> int | None:
    best = None
    for level, names in LAYERS.items():
        for n in names:
            if (mod == n or mod.startswith(n + ".")) and (best is None or len(n) > len(best[1])):
                best = (level, n)
    return None if best is None else best[0]


def upward(src: Path) -> list[str]:
    """Every import of a module from a higher layer, as 'file:line: a (L3) imports b (L5)'."""
    out = []
    for i in imports(src):
        if not i.internal or i.target == i.module:
            continue
        if i.target == "" and i.names == ("__version__",):
            continue           # the version string, not a module
        a, b = layer(i.module), layer(i.target)
        if b is not None and a is not None and b > a:
            out.append(f"simattr/{i.module.replace('.', '/') or '__init__'}.py:{i.line}: {i.module} (L{a}) imports "
                       f"{i.target} (L{b})")
    return out


def heavy_modules(src: Path) -> set[str]:
    """simattr modules whose top-level imports (transitively) load a heavy library."""
    top = [i for i in imports(src) if not i.local]
    heavy = {i.module for i in top if not i.internal and i.target in HEAVY}
    while True:
        more = {i.module for i in top if i.internal and i.target in heavy} - heavy
        if not more:
            return heavy
        heavy |= more


def needless_local_imports(src: Path) -> list[str]:
    """Function-local imports that keep nothing heavy out of start-up."""
    heavy = heavy_modules(src)
    out = []
    for i in imports(src):
        if not i.local or (i.target in HEAVY if not i.internal else i.target in heavy) or i.target == "":
            continue
        if i.module == "":     # the package root: `simattr.Attributor` on first use (PEP 562), so that importing
            continue           # any submodule does not load explain and what it imports
        out.append(f"simattr/{i.module.replace('.', '/')}.py:{i.line}: imports {i.target} inside a function")
    return out


def cycles(src: Path) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for i in imports(src):
        if i.internal and i.target != i.module and i.target:
            graph.setdefault(i.module, set()).add(i.target)
    found, state = [], {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return found


def test_every_module_has_a_layer():
    assert [m for m in modules(SRC) if m and layer(m) is None] == []


def test_no_module_imports_from_a_higher_layer():
    assert upward(SRC) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(SRC) == []


def test_function_local_imports_only_keep_heavy_libraries_out_of_start_up():
    assert needless_local_imports(SRC) == []


def test_a_planted_upward_import_and_cycle_fail(tmp_path):
    shutil.copytree(SRC / "simattr", tmp_path / "simattr")
    store = tmp_path / "simattr" / "store" / "files.py"
    store.write_text(store.read_text() + "\n\ndef _planted():\n    from ..cli import main\n\n    return main\n")
    assert cycles(SRC) == []                                 # the planted edge makes the cycle, nothing else
    assert any("store.files (L0) imports cli (L6)" in line for line in upward(tmp_path))
    assert any(("store.files", "cli") in zip(c, c[1:]) for c in cycles(tmp_path))
    assert any("imports cli inside a function" in line for line in needless_local_imports(tmp_path))


@pytest.mark.parametrize("module", LIGHT)
def test_start_up_modules_load_no_heavy_library(module):
    """What the Snakefile (workflow/rules/*.smk) and `simattr --help` import loads none of the heavy libraries:
    the Snakefile is re-read inside every cluster job."""
    code = (f"import sys, {module}\n"
            f"print(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "", f"importing {module} loads {r.stdout.strip()}"


def snakefile_imports(root: Path) -> set[str]:
    """The simattr modules the Snakefile and its rule files import (`from simattr import X` names module X)."""
    modules = set()
    for f in [root / "Snakefile", *sorted((root / "workflow" / "rules").glob("*.smk"))]:
        lines = [line for line in f.read_text().splitlines() if line.startswith(("from simattr", "import simattr"))]
        for n in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(n, ast.ImportFrom):
                modules |= {f"simattr.{a.name}" for a in n.names} if n.module == "simattr" else {n.module}
            elif isinstance(n, ast.Import):
                modules |= {a.name for a in n.names}
    return modules


def test_the_snakefile_imports_only_light_modules():
    used = snakefile_imports(SRC.parent)
    assert {"simattr.config", "simattr.settings", "simattr.scoring", "simattr.plan"} <= used
    assert used <= set(LIGHT), sorted(used - set(LIGHT))
