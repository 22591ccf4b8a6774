"""The package plan holds: no imagen/__init__.py, dependencies point down, imports are declared."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import layout


def test_layout_has_no_breaches():
    assert layout.layout_errors() == []


def test_internal_dependencies_point_only_downward():
    for package in layout.PACKAGES:
        position = layout.PACKAGES.index(package)
        for dependency in layout.internal_dependencies(package):
            assert layout.PACKAGES.index(dependency) < position, (package, dependency)


def test_checker_catches_a_namespace_init(tmp_path, monkeypatch):
    fake = tmp_path / "packages" / "unets" / "src" / "imagen"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    monkeypatch.setattr(layout, "ROOT", tmp_path)
    monkeypatch.setattr(layout, "PACKAGES", [])
    assert any("breaks the imagen namespace" in e for e in layout.layout_errors())


def test_checker_catches_an_upward_import(tmp_path, monkeypatch):
    package = tmp_path / "packages" / "unets"
    (package / "src" / "imagen" / "unets").mkdir(parents=True)
    (package / "tests").mkdir()
    (package / "pyproject.toml").write_text('[project]\nname = "imagen-unets"\ndependencies = ["torch"]\n')
    (package / "src" / "imagen" / "unets" / "bad.py").write_text("from imagen.cascade import Imagen\nimport numpy\n")
    monkeypatch.setattr(layout, "ROOT", tmp_path)
    monkeypatch.setattr(layout, "PACKAGES", ["unets"])
    errors = layout.layout_errors()
    assert any("imports imagen.cascade" in e for e in errors)
    assert any("imports numpy" in e for e in errors)



def test_an_optional_dependency_is_imported_only_inside_functions(tmp_path, monkeypatch):
    package = tmp_path / "packages" / "unets"
    (package / "src" / "imagen" / "unets").mkdir(parents=True)
    (package / "tests").mkdir()
    (package / "pyproject.toml").write_text('[project]\nname = "imagen-unets"\ndependencies = ["torch"]\n'
                                            '[project.optional-dependencies]\nhf = ["datasets"]\ntest = ["pytest"]\n')
    source = package / "src" / "imagen" / "unets"
    (source / "lazy.py").write_text("def load():\n    import datasets\n    from datasets.naming import x\n")
    (source / "eager.py").write_text("try:\n    import datasets\nexcept ImportError:\n    pass\n")
    (source / "undeclared.py").write_text("def load():\n    import pandas\n")
    monkeypatch.setattr(layout, "ROOT", tmp_path)
    monkeypatch.setattr(layout, "PACKAGES", ["unets"])
    assert [e.split(":")[0] for e in layout.layout_errors()] == ["packages/unets/src/imagen/unets/eager.py",
                                                                 "packages/unets/src/imagen/unets/undeclared.py"]


def test_checker_catches_a_draw_with_a_generator_outside_its_home(tmp_path, monkeypatch):
    source = tmp_path / "packages" / "cascade" / "src" / "imagen" / "cascade"
    source.mkdir(parents=True)
    (source / "bad.py").write_text(
        "import torch\n"
        "def coin(g):\n"
        "    a = torch.rand((), generator=g)\n"  # line 3: a breach
        "    b = torch.empty(3).normal_(generator=g)\n"  # line 4: a breach (method form)
        "    return a, b, torch.randn(3)\n"  # no generator: fine
    )
    (source / "testing.py").write_text("import torch\nx = torch.randn(2, generator=torch.Generator())\n")
    monkeypatch.setattr(layout, "ROOT", tmp_path)
    errors = layout.draw_errors()
    assert [e.split(":")[0:2] for e in errors] == [["packages/cascade/src/imagen/cascade/bad.py", "3"],
                                                   ["packages/cascade/src/imagen/cascade/bad.py", "4"]]


def test_draw_allow_list_names_only_live_breaches():
    live = set()
    for path in layout.ROOT.glob("packages/*/src/**/*.py"):
        where = path.relative_to(layout.ROOT).as_posix()
        live.update(f"{where}::{function}" for _, function in layout.draws_with_generator(path))
    assert layout.DRAW_ALLOWED <= live
