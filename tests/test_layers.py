"""The module layout: every module states its one role, stays under about 700 lines, and imports
only from layers below its own (read from the source with ast, function-level imports included),
so the import graph has no cycle and ``from x import y`` is safe everywhere. The README's layer
table is this table."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

# layer -> modules; a module may import only from lower layers (README, "Layout")
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("camlab", "camlab.utils", "camlab.tables", "research"),
    1: ("camlab.synthetic", "camlab.transforms", "camlab.figures", "camlab.cams", "camlab.heads",
        "camlab.extractors", "camlab.images", "camlab.metrics", "camlab.runtime", "camlab.runs",
        "camlab.skeleton", "camlab.faithfulness"),
    2: ("camlab.boxeval", "camlab.crf", "camlab.formats", "camlab.methods", "camlab.stream"),
    3: ("camlab.boxes", "camlab.readers", "camlab.wsolmeta", "camlab.ddp", "camlab.affinity"),
    4: ("camlab.meters", "camlab.scoremaps", "research.evalbench"),
    5: ("dataloader", "model"),
    6: ("train", "research.streamscore"),
    7: ("visualize", "research.experiments", "research.databench"),
    8: ("research.wsol", "research.bench", "research.affinitynet"),
    9: ("research.semseg",),
    10: ("research.comparisons",),
    11: ("main", "iou", "bench"),
    12: ("research.publish",),
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}
MAX_LINES = 700


def module_files() -> dict[str, Path]:
    """Every module of the project: the top-level scripts, camlab/ and research/."""
    paths = [*ROOT.glob("*.py"), *(ROOT / "camlab").glob("*.py"), *(ROOT / "research").glob("*.py")]
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in paths}


def imports_of(source: str, known: set[str]) -> set[str]:
    """The project modules ``source`` imports, anywhere in it (inside functions too): ``import a.b``,
    ``from a import b`` (module ``a.b`` where it is one, else ``a``), ``from a.b import c``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found.update(subs or {node.module})
    return found & known


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: imports_of(p.read_text(), set(files)) - {m} for m, p in files.items()}


def violations(graph: dict[str, set[str]], layer_of: dict[str, int]) -> list[str]:
    """Each import that does not go to a strictly lower layer, and each module without a layer."""
    found = [f"{m} has no layer" for m in graph if m not in layer_of]
    found += [f"{m} (layer {layer_of[m]}) imports {d} (layer {layer_of[d]})" for m, deps in graph.items()
              for d in sorted(deps) if m in layer_of and d in layer_of and layer_of[d] >= layer_of[m]]
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path), or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None
    return next((c for n in sorted(graph) if n not in state and (c := visit(n, [n]))), None)


def test_every_import_goes_down_a_layer_and_none_forms_a_cycle() -> None:
    graph = import_graph()
    assert set(graph) == set(LAYER_OF), "every module is in exactly one layer"
    assert violations(graph, LAYER_OF) == []
    assert cycle(graph) is None


def test_the_check_catches_an_injected_upward_import_and_cycle() -> None:
    """The layer test fails when a module reaches up: camlab.metrics importing train (lazily, in a
    function), and iou <-> visualize."""
    graph = import_graph()
    lazy = "def f():\n    import train\n    from research.wsol import wsol_report\n"
    injected = {**graph, "camlab.metrics": graph["camlab.metrics"] | imports_of(lazy, set(graph))}
    assert violations(injected, LAYER_OF) == ["camlab.metrics (layer 1) imports research.wsol (layer 8)",
                                              "camlab.metrics (layer 1) imports train (layer 6)"]
    circular = {**graph, "visualize": graph["visualize"] | {"iou"}}
    assert "visualize (layer 7) imports iou (layer 11)" in violations(circular, LAYER_OF)
    assert cycle(circular) in (["iou", "visualize", "iou"], ["visualize", "iou", "visualize"])


@pytest.mark.parametrize("module", sorted(module_files()))
def test_each_module_states_its_role_and_stays_small(module: str) -> None:
    path = module_files()[module]
    source = path.read_text()
    doc = ast.get_docstring(ast.parse(source))
    assert doc and doc.splitlines()[0].strip(), f"{path} has no first docstring line stating its role"
    assert len(source.splitlines()) <= MAX_LINES, f"{path}: {len(source.splitlines())} lines"


def test_the_readme_layer_table_is_this_table() -> None:
    """README, "Layout": one row per layer, naming its modules in the order above."""
    text = (ROOT / "README.md").read_text()
    text = text[text.index("\n## Layout"):]
    text = text[:text.index("\n## ", 1)]
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", text, flags=re.M)
    assert {int(layer): tuple(m.strip(" `") for m in names.split(",")) for layer, names in rows} == LAYERS


def test_the_package_installs_camlab_alone(tmp_path) -> None:
    """``pip install .`` installs the package ``camlab`` with every module of camlab/ and nothing
    else: no generic top-level names (model, train, utils) in site-packages. The wheel is built from
    a copy of the checkout's packaging files, so the checkout is left as it was."""
    import shutil
    import subprocess
    import sys
    import zipfile
    src = tmp_path / "src"
    shutil.copytree(ROOT / "camlab", src / "camlab", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("camlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"camlab"}
    assert {n for n in names if n.startswith("camlab/")} == {
        f"camlab/{p.name}" for p in (ROOT / "camlab").glob("*.py")}
