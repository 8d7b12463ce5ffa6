"""The shape of the repository: what cites what, who imports whom, what is installed.

These are the rules of docs/design.md §11 and the documents the sources point to, checked
from the files themselves (``ast`` and text), without importing anything of mcjax.
"""

from __future__ import annotations

import ast
import collections
import os
import pathlib
import re
import subprocess

import setuptools

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mcjax"
DESIGN_DOC = ROOT / "docs/design.md"

# Without git: directories that hold build outputs, caches or runs (see .gitignore).
_SKIPPED_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "build",
    "_build",
    "dist",
    "runs",
    "workdirs",
    ".whl",
    ".gl",
}
# The command-line entry points live in mcjax/ beside the core but may import the program.
ENTRY_POINTS = {"main.py", "cost_table.py", "sweep.py", "__init__.py"}
PROGRAM = ("mcjax.training", "mcjax.figures", "mcjax.sweeps")
ENTRY_MODULES = ("mcjax.main", "mcjax.cost_table", "mcjax.sweep")

# Built from parts so that this file does not cite what it forbids.
_OLD_CITATION = re.compile("DESIGN" + r"\s*§")
# A Markdown document named by path (``docs/design.md``, ``launch/README.md``).
_DOCUMENT = re.compile(r"[\w.:/-]*\w\.md\b")
# Markdown files the programs and benchmarks write (named as outputs, not cited).
_WRITTEN_BY_RUNS = ("table.md", "summary.md")
_DESIGN_SECTION = re.compile(r"docs/design\.md\s*§\s*(\d+)(?:\s*-\s*(\d+))?")


def _repository_files() -> list[pathlib.Path]:
    """The files git tracks or would track (.gitignore applies); without git, a walk."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        return [ROOT / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for directory, subdirs, names in os.walk(ROOT):
            subdirs[:] = [
                d for d in subdirs if d not in _SKIPPED_DIRS and not d.endswith(".egg-info")
            ]
            files += [pathlib.Path(directory, name) for name in names]
        return files


def _text_files():
    """Every UTF-8 text file of the repository (outside build outputs and caches)."""
    for path in _repository_files():
        try:
            yield path, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary (or deleted) files cite nothing


def _cited_documents(path: pathlib.Path, text: str) -> list[str]:
    """The ``.md`` documents ``text`` names that exist neither from the root nor beside it."""
    missing = []
    for name in _DOCUMENT.findall(text):
        if "://" in name:
            continue  # a web address
        name = name.rstrip(".")
        if name.rsplit("/", 1)[-1] in _WRITTEN_BY_RUNS:
            continue
        if not (ROOT / name).exists() and not (path.parent / name).exists():
            missing.append(name)
    return missing


def test_no_file_cites_a_missing_document():
    problems = []
    for path, text in _text_files():
        where = path.relative_to(ROOT)
        if _OLD_CITATION.search(text):
            problems.append(f"{where}: cites the old design numbers; cite docs/design.md §n")
        problems += [
            f"{where}: cites {name}, not in the repository" for name in _cited_documents(path, text)
        ]
    assert not problems, "\n".join(problems)


def _design_sections() -> set[int]:
    headings = re.findall(r"^## (\d+)\. ", DESIGN_DOC.read_text(encoding="utf-8"), re.MULTILINE)
    return {int(number) for number in headings}


def test_design_citations_name_existing_sections():
    sections = _design_sections()
    assert sections == set(range(1, len(sections) + 1)), "sections are numbered 1..n"
    problems = []
    for path, text in _text_files():
        for first, last in _DESIGN_SECTION.findall(text):
            cited = range(int(first), int(last or first) + 1)
            missing = [n for n in cited if n not in sections]
            if missing or not cited:
                problems.append(f"{path.relative_to(ROOT)}: docs/design.md §{first} does not exist")
    assert not problems, "\n".join(problems)


def test_citation_checks_catch_a_missing_document(tmp_path):
    # The scanner itself: a name that resolves nowhere is reported, real ones are not.
    missing = "notes/PLAN" + ".md"  # in two parts, so that this file does not cite it
    text = f"see docs/design.md, launch/README.md and {missing} (https://x.org/a.md)."
    assert _cited_documents(tmp_path / "f.py", text) == [missing]
    assert _OLD_CITATION.search("as " + "DESIGN" + " §3 says")


# --- The import graph -----------------------------------------------------------------


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module that ``source`` (the module ``module``) imports, relative ones resolved.

    ``from a import b`` counts as importing ``a`` and ``a.b`` (``b`` may be a module).
    Imports inside functions count too.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = _imported_from(node, package)
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def _imported_from(node: ast.ImportFrom, package: str) -> str:
    """The module named by ``from X import ...`` in ``package``, a relative ``X`` resolved."""
    if not node.level:
        return node.module
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _violations(paths, forbidden: tuple[str, ...]) -> list[str]:
    problems = []
    for path in paths:
        module = _module_name(path)
        imports = imported_modules(
            path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py"
        )
        for name in sorted(imports):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                problems.append(f"{module} imports {name}")
    return problems


def _core_modules():
    return sorted(p for p in PACKAGE.glob("*.py") if p.name not in ENTRY_POINTS)


def test_core_imports_neither_data_nor_program():
    assert _core_modules(), "no core modules found"
    problems = _violations(_core_modules(), ("mcjax.data", *PROGRAM, *ENTRY_MODULES))
    assert not problems, "the core must not import these:\n" + "\n".join(problems)


def test_data_does_not_import_the_program():
    data_modules = sorted((PACKAGE / "data").rglob("*.py"))
    assert data_modules, "no data modules found"
    problems = _violations(data_modules, (*PROGRAM, *ENTRY_MODULES))
    assert not problems, "mcjax.data must not import these:\n" + "\n".join(problems)


def test_import_scanner_sees_every_form():
    source = (
        "import mcjax.training.loop\n"
        "from mcjax import figures\n"
        "from ..training import workdir\n"
        "def f():\n"
        "    from . import augment\n"
    )
    found = imported_modules(source, "mcjax.data.in_memory")
    assert {"mcjax.training.loop", "mcjax.figures", "mcjax.training.workdir"} <= found
    assert "mcjax.data.augment" in found
    assert "mcjax.data" in imported_modules("from . import x", "mcjax.data", is_package=True)


# --- No import circles ----------------------------------------------------------------


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """``{module: the modules of sources it imports}``, from ``{module: (source, is_package)}``.

    Imports inside functions count as module-level ones do (a circle through a function
    is a circle the reader has to follow). An import names the deepest module of
    ``sources`` it reaches: ``from a import b`` names ``a.b`` when that is a module and
    ``a`` otherwise; ``import a.b`` names ``a.b``. The ancestor packages that Python runs
    first are not edges unless named, so a package that imports its own modules is not
    a circle.
    """
    graph = {}
    for module, (source, is_package) in sources.items():
        package = module if is_package else module.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    name = alias.name
                    while name and name not in sources:
                        name = name.rpartition(".")[0]
                    found.add(name)
            elif isinstance(node, ast.ImportFrom):
                prefix = _imported_from(node, package)
                for alias in node.names:
                    name = f"{prefix}.{alias.name}"
                    found.add(name if name in sources else prefix)
        graph[module] = {name for name in found if name in sources and name != module}
    return graph


def find_import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: for each module on one, the shortest circle through
    it, each circle once, from its smallest module back to it (``[a, b, a]``)."""
    cycles = set()
    for start in sorted(graph):
        came_from: dict[str, str] = {}
        queue = collections.deque([start])
        while queue:
            node = queue.popleft()
            for imported in sorted(graph.get(node, ())):
                if imported == start:  # round: walk back to start
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    path.reverse()
                    first = path.index(min(path))
                    cycles.add(tuple(path[first:] + path[:first]))
                    queue.clear()
                    break
                if imported not in came_from:
                    came_from[imported] = node
                    queue.append(imported)
    return [[*cycle, cycle[0]] for cycle in sorted(cycles)]


def _package_sources() -> dict[str, tuple[str, bool]]:
    return {
        _module_name(path): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_no_import_circle_anywhere_in_the_package():
    graph = import_graph(_package_sources())
    assert "mcjax.data.registry" in graph and any(graph.values()), "no imports found"
    cycles = find_import_cycles(graph)
    assert not cycles, "import circles (imports inside functions count):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles
    )


# The rungs of mcjax.data, lowest first (mcjax/data/__init__.py says what each holds): a
# module imports only modules of its own rung or of a rung below it.
DATA_RUNGS = (
    ("types",),
    ("augment", "batch_order", "decode", "image_folder", "sources"),
    ("registry",),
    ("in_memory", "inputs", "streaming"),
)


def test_data_is_a_ladder():
    rung_of = {f"mcjax.data.{m}": i for i, rung in enumerate(DATA_RUNGS) for m in rung}
    sources = _package_sources()
    on_disk = {m for m in sources if m.startswith("mcjax.data.")}
    assert on_disk == set(rung_of), "every module of mcjax.data has a rung in DATA_RUNGS"
    graph = import_graph(sources)
    problems = [
        f"{module} (rung {rung_of[module]}) imports {imported} (rung {rung_of[imported]})"
        for module in sorted(on_disk)
        for imported in sorted(graph[module] & on_disk)
        if rung_of[imported] > rung_of[module]
    ]
    assert not problems, "mcjax.data imports up its ladder:\n" + "\n".join(problems)


def test_cycle_finder_names_a_planted_circle():
    sources = {
        "pkg": ("from pkg import a\n", True),  # a package importing its module: no circle
        "pkg.a": ("from pkg import b\nimport numpy\n", False),
        "pkg.b": ("def f():\n    from .c import thing\n", False),  # inside a function
        "pkg.c": ("import pkg.a\n", False),
        "pkg.d": ("from pkg.a import name\n", False),  # into the circle, not on it
    }
    assert find_import_cycles(import_graph(sources)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    sources["pkg.c"] = ("import numpy\n", False)  # a ladder: pkg.c no longer goes back up
    assert find_import_cycles(import_graph(sources)) == []
    sources["pkg.c"] = ("import pkg.d\n", False)
    sources["pkg.d"] = ("from pkg.b import f\n", False)  # another way round
    assert find_import_cycles(import_graph(sources)) == [["pkg.b", "pkg.c", "pkg.d", "pkg.b"]]


# --- What setup.py installs -----------------------------------------------------------


def _installed_packages() -> list[str]:
    """The packages setup.py installs, from its ``packages=`` argument, evaluated here."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    (setup_call,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    ]
    (packages,) = [kw.value for kw in setup_call.keywords if kw.arg == "packages"]
    if isinstance(packages, ast.Call) and getattr(packages.func, "id", None) == "find_packages":
        # find_packages(where=".", exclude=(), include=("*",)), where relative to setup.py.
        args = [ast.literal_eval(a) for a in packages.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in packages.keywords}
        where = kwargs.pop("where", args.pop(0) if args else ".")
        return setuptools.find_packages(str(ROOT / where), *args, **kwargs)
    return list(ast.literal_eval(packages))


def test_setup_installs_only_mcjax():
    packages = _installed_packages()
    assert "mcjax" in packages and "mcjax.training" in packages
    top_level = {name.split(".")[0] for name in packages}
    assert top_level == {"mcjax"}, f"setup.py installs top-level packages {sorted(top_level)}"


# --- The config's edge ----------------------------------------------------------------

# The modules that may read an ml_collections ConfigDict: the entry points, the module that
# turns it into the typed config once (mcjax.training.config), the configs shipped in the
# package, and the sweep's loading of config files with their overrides. Everything else
# takes the typed config.
CONFIG_EDGE = {
    "mcjax/main.py",
    "mcjax/sweep.py",
    "mcjax/cost_table.py",
    "mcjax/training/config.py",
    "mcjax/sweeps/resolve.py",
}
CONFIG_FILES = "mcjax/configs/"


def _config_dict_readings(source: str, module: str) -> list[str]:
    """How ``source`` reads a ConfigDict: imports of ``ml_collections`` or of the config
    files, or the name ``ConfigDict`` (as a name or an attribute)."""
    found = set()
    for name in imported_modules(source, module):
        if name.split(".")[0] == "ml_collections":
            found.add(f"imports {name}")
        elif name == "mcjax.configs" or name.startswith("mcjax.configs."):
            found.add("imports the config files (mcjax.configs)")
    for node in ast.walk(ast.parse(source)):
        name = getattr(node, "id", None) or getattr(node, "attr", None)
        if name == "ConfigDict":
            found.add("names ConfigDict")
    return sorted(found)


def test_no_module_below_the_config_edge_reads_a_config_dict():
    # The scanner itself first: each form is caught.
    sample = "import ml_collections\nfrom mcjax.configs import defaults\nx: cd.ConfigDict\n"
    assert _config_dict_readings(sample, "mcjax.training.loop") == [
        "imports ml_collections",
        "imports the config files (mcjax.configs)",
        "names ConfigDict",
    ]
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        if where in CONFIG_EDGE or where.startswith(CONFIG_FILES):
            continue
        module = _module_name(path)
        problems += [
            f"{where} {reading}"
            for reading in _config_dict_readings(path.read_text(encoding="utf-8"), module)
        ]
    assert not problems, "below the config's edge, take the typed config:\n" + "\n".join(problems)
