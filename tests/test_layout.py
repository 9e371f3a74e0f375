"""The package's layout (docs/architecture.md): every module imports only its own folder, the folders below it,
and the ground floor; and no module grows past 500 lines."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = [  # lowest first
    {
        "wpatch.sites",
        "wpatch.sides",
        "wpatch.rows",
        "wpatch.text",
        "wpatch.errors",
        "wpatch.atomic",
        "wpatch.faults",
        "wpatch.run_summary",
        "wpatch.allocator",
    },
    {"wpatch.models"},
    {"wpatch.patching"},
    {"wpatch.stimuli"},
    {"wpatch.analysis"},
    {"datamodules"},
    {"wpatch.run_folder"},
    {"wpatch.cli", "wpatch", "wpatch.__main__", "wpatch.api", "wpatch.one_off", "wpatch.benchmark", "wpatch.quiet"},
]


def floor_of(module: str) -> int:
    """The floor of a dotted module name: that of its longest prefix listed in FLOORS."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        for floor, names in enumerate(FLOORS):
            if prefix in names:
                return floor
    raise AssertionError(f"{module} is on no floor of tests/test_layout.py")


def modules():
    for path in sorted([*ROOT.glob("wpatch/**/*.py"), *ROOT.glob("datamodules/*.py")]):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        yield path, name


def test_no_module_imports_a_folder_above_its_own():
    for path, name in modules():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        ours = {m for m in imported if m.split(".")[0] in ("wpatch", "datamodules")}
        upward = sorted(m for m in ours if floor_of(m) > floor_of(name))
        assert not upward, f"{name} imports {upward}, above its floor"


def test_the_package_imports_no_script_or_test():
    """scripts/ and tests/ use the package, never the other way round (an installed wpatch has neither): no import
    of them, and no name of them handed to `importlib.import_module`."""
    for path, name in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            found = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found += [a.value for a in node.args if isinstance(a, ast.Constant)] if isinstance(node, ast.Call) else []
            outside = [m for m in found if isinstance(m, str) and m.split(".")[0] in ("scripts", "tests")]
            assert not outside, f"{name} imports {outside}"


def test_no_module_is_over_500_lines():
    long = {name: n for path, name in modules() if (n := len(path.read_text().splitlines())) > 500}
    assert not long, long
