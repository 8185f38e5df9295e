"""The package's architecture as tests: layers that only import downward, no import circles,
TensorFlow-free flag parsing, and short functions."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aftt_tf"
# Lowest first; a module may import modules of its own layer or of layers below it.
LAYERS = (
    ("aftt_tf", "aftt_tf.vocabulary", "aftt_tf.io_utils", "aftt_tf.progress", "aftt_tf.checks"),
    ("aftt_tf.data",),
    ("aftt_tf.faults",),
    ("aftt_tf.runtimes",),
    ("aftt_tf.campaigns",),
    ("aftt_tf.sensitivity",),
    ("aftt_tf.training",),
    ("aftt_tf.deploy",),
    ("aftt_tf.reproduce",),
    ("aftt_tf.cli",),
)
MAX_FUNCTION_LINES = 60
# Functions allowed to be longer, each with the reason.
LONG_FUNCTIONS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(path): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def _imports(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """Package modules `name` imports, at top level or inside functions (lazy imports count)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            targets = [f"{base}.{alias.name}" for alias in node.names]
            # `from package import name` runs the package's __init__ for its attributes;
            # importing a submodule that way is an arrow to the submodule alone.
            if any(f"{base}.{alias.name}" not in modules for alias in node.names):
                targets.append(base)
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("aftt_tf") and target != name:
                found.add(target)
    return found


def _layer(name: str) -> int:
    best, rank = -1, None
    for index, members in enumerate(LAYERS):
        for member in members:
            matches = name == member or name.startswith(member + ".")
            if matches and len(member) > best:
                best, rank = len(member), index
    assert rank is not None, f"{name} is in no layer of tests/architecture_test.py"
    return rank


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    names = set(modules)
    # A package's __init__ is imported with any of its modules; it counts as its own node.
    return {name: _imports(name, tree, names) - {"aftt_tf"} for name, tree in modules.items()}


def test_imports_point_down():
    upward = [
        f"{name} -> {target}"
        for name, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(name)
    ]
    assert not upward, "imports that run up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_check_sees_a_circle_and_an_upward_import():
    """The two checks above can fail: a made-up graph with both defects trips them."""
    assert _layer("aftt_tf.cli.faults") > _layer("aftt_tf.campaigns.engine")
    tree = ast.parse(
        "from aftt_tf.cli import faults\nimport aftt_tf.campaigns.engine as c\n"
        "from aftt_tf.faults import FaultSpec\n"
    )
    names = {"aftt_tf.cli.faults", "aftt_tf.cli", "aftt_tf.faults", "aftt_tf.campaigns.engine"}
    assert _imports("aftt_tf.x", tree, names) == {
        "aftt_tf.cli.faults",
        "aftt_tf.campaigns.engine",
        "aftt_tf.faults",  # `FaultSpec` is an attribute of the package: its __init__ runs.
    }


def test_functions_are_short():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                key = f"{_module_name(path)}.{node.name}"
                if length > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                    long.append(f"{key}: {length} lines")
    assert not long, "functions over 60 lines:\n" + "\n".join(sorted(long))


def test_every_package_says_what_it_owns():
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent.name == "cli":
            continue
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


@pytest.mark.parametrize("binary", ["train", "faults", "export", "reproduce", "repair"])
def test_flags_parse_and_validate_without_tensorflow(binary):
    """Defining, parsing and validating a binary's flags imports no TensorFlow or Keras."""
    validate = {
        "train": "module.train_flags.config_from_flags().validate()",
        "reproduce": "module.config_from_flags().validate()",
        "faults": "module._spec_from_flags().validate()",
        "export": "assert module.FLAGS.formats",
        "repair": "module.config_from_flags().validate()",
    }[binary]
    script = textwrap.dedent(
        f"""
        import sys
        from absl import flags
        from aftt_tf.cli import {binary} as module
        flags.FLAGS(["prog", "--out=/tmp/unused"])
        {validate}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not loaded, loaded[:5]
        print("NO_TF_OK")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
        timeout=120,
    )
    assert "NO_TF_OK" in result.stdout, result.stderr[-3000:]


_NOT_MODULES = {"tf_keras"}  # Snake-case words of the layout that name no module.


def _layout_block() -> str:
    import re

    text = (PACKAGE.parent / "README.md").read_text()
    match = re.search(r"<!-- layout -->\n```\n(.*?)```", text, flags=re.S)
    assert match, "README has no block marked layout"
    return match.group(1)


def test_the_readme_layout_names_every_package_and_module():
    """The README's layout lists each package in the import order of LAYERS (highest
    first), every module of the tree under its package, and no module that is gone."""
    import re

    entries: dict[str, str] = {}
    current = None
    for line in _layout_block().splitlines():
        head = re.match(r"^(\S+/)\s", line + " ")
        if head:
            current = head.group(1)
            entries[current] = line[len(current) :]
        elif current:
            entries[current] += " " + line.strip()
    packages = [p for p in entries if p.startswith("aftt_tf/")]
    expected = [
        "aftt_tf/" + layer[0].split(".", 1)[1].replace(".", "/") + "/"
        for layer in reversed(LAYERS[1:])
    ] + ["aftt_tf/"]
    assert packages == expected, packages
    for package in packages:
        folder = PACKAGE.parent / package
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
        words = set(re.findall(r"[a-z_][a-z0-9_]*", entries[package]))
        missing = sorted(modules - words)
        assert not missing, f"{package}: the layout does not name {missing}"
        # Words shaped like module names (snake_case) that are none: a module that is gone.
        named = set(re.findall(r"\b([a-z0-9]+_[a-z0-9_]+)\b", entries[package]))
        gone = sorted(named - modules - _NOT_MODULES)
        assert not gone, f"{package}: the layout names {gone}, which are no modules"
    for folder in ("flags", "export", "docs", "benchmarks", "tests"):
        assert f"{folder}/" in entries and (PACKAGE.parent / folder).is_dir(), folder


def test_no_module_compares_a_fault_kinds_name_outside_its_definition():
    """Fault kinds are objects (aftt_tf/faults/kinds.py): code asks a kind for its traits
    and never compares its name, so a new kind needs no edit elsewhere. fault_map.py is
    left out: a map entry's 'stuck_value' is the map format's own vocabulary."""
    from aftt_tf.faults import kinds

    pattern = _name_comparisons(kinds.names())
    found = _lines_matching(pattern, {"aftt_tf/faults/kinds.py", "aftt_tf/faults/fault_map.py"})
    assert not found, "\n".join(found)
    assert pattern.search('if spec.kind in ("bit", "activation_bit"):')  # It can fail.
    assert pattern.search('if "node" in config.fault_kinds:')
    assert pattern.search('rates = {"bit": a, "activation_bit": b}.get(kind, c)')


def test_every_runtime_implements_the_whole_interface_and_the_engine_probes_nothing():
    """The engine calls `spec.CampaignModel` and `spec.CellRunner` methods only; every
    runtime subclasses them with nothing abstract left, and the engine never asks whether
    a method exists (a missing one would skip a check silently)."""
    import inspect

    from aftt_tf.campaigns import ray_executor
    from aftt_tf.faults import spec
    from aftt_tf.runtimes import keras_runner, tflite_runner
    from aftt_tf.training import repair

    models = [
        keras_runner.KerasModel,
        tflite_runner.TFLiteModel,
        tflite_runner.PerRateTFLiteModel,
        repair.RepairingModel,
    ]
    runners = [
        keras_runner.CampaignRunner,
        tflite_runner.TFLiteRunner,
        tflite_runner._PerRateRunner,
        repair.RepairCellRunner,
        ray_executor._Group,
    ]
    for cls in models:
        assert issubclass(cls, spec.CampaignModel) and not inspect.isabstract(cls), cls
    for cls in runners:
        assert issubclass(cls, spec.CellRunner) and not inspect.isabstract(cls), cls
    for module in ("engine.py", "cell_log.py", "shards.py", "outputs.py", "campaign_lib.py"):
        source = (PACKAGE / "campaigns" / module).read_text()
        probes = re.findall(r"(?:getattr|hasattr)\((?:adapter|runner|model|first)\b", source)
        assert not probes, (module, probes)


def test_no_module_compares_a_training_methods_name_outside_its_definition():
    """Training methods are objects (aftt_tf/methods.py): code asks a method for its
    traits. 'none' is left out of the search: it also names penalties, scopes and plain
    model labels. Penalty names ('l1', 'l2') are a method's `penalty` values, defined
    once in trainers.PENALTIES."""
    from aftt_tf import methods

    pattern = _name_comparisons([name for name in methods.names() if name != "none"])
    found = _lines_matching(pattern, {"aftt_tf/methods.py"})
    assert not found, "\n".join(found)
    assert pattern.search('if config.method in ("fat", "aftt_fat"):')  # It can fail.


def _name_comparisons(names) -> re.Pattern:
    """A name compared (==, !=, in, is), tested for membership, or a dispatch dict's key."""
    names, quote = "|".join(names), "[\"']"
    return re.compile(
        rf"(==|!=|\bin|\bis)\s*[\(\[\{{]?\s*{quote}({names}){quote}"
        rf"|{quote}({names}){quote}\s*(==|!=|\bin\b|\bnot\s+in\b)"
        rf"|\{{\s*{quote}({names}){quote}\s*:[^}}]*\}}\.get\("
    )


def _lines_matching(pattern: re.Pattern, allowed: set[str]) -> list[str]:
    return [
        f"{path}:{number}: {line.strip()}"
        for path in sorted(Path("aftt_tf").rglob("*.py"))
        if str(path) not in allowed
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
