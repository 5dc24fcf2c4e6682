"""The package's shape: imports point one way (utilities, then data and model, then config and run
directories, then training, then the tools), there is no import cycle, and training does not pull
in plotting or the analysis tools."""
import subprocess
import sys
import typing

from tests.helpers.imports import cycles, import_graph

# lower layers never import higher ones; a module may import its own layer
LAYERS = [
    ("bdh_scale", "bdh_scale.errors", "bdh_scale.utils"),
    ("bdh_scale.model", "bdh_scale.data"),
    ("bdh_scale.config", "bdh_scale.rundir"),
    ("bdh_scale.train",),
    ("bdh_scale.generate", "bdh_scale.analysis", "bdh_scale.bench", "bdh_scale.experiments", "bdh_scale.harness"),
]


def layer(module: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (i, p)
    assert best is not None, f"{module} belongs to no layer"
    return best[0]


def test_no_import_cycle_among_the_package_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_imports_point_from_the_tools_down_to_the_utilities():
    upward = [(m, t) for m, targets in import_graph().items() for t in targets if layer(t) > layer(m)]
    assert upward == []


def test_training_imports_neither_matplotlib_nor_the_tools_nor_lm_eval():
    code = ("import sys, bdh_scale.train.loop, bdh_scale.train.cli; "
            "print(sorted(m for m in sys.modules if m == 'matplotlib' or m.startswith(("
            "'bdh_scale.analysis', 'bdh_scale.bench', 'bdh_scale.experiments', 'bdh_scale.generate', "
            "'bdh_scale.harness', 'lm_eval'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_architecture_a_recipe_may_name_is_registered():
    from bdh_scale.model import ARCHS, ModelConfig

    assert set(typing.get_args(typing.get_type_hints(ModelConfig, include_extras=True)["arch"])) == set(ARCHS)
    for name, arch in ARCHS.items():
        assert arch.model.arch == name
