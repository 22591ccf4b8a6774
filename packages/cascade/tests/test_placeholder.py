"""The placeholder package imports through the imagen namespace and exports nothing yet."""

import importlib


def test_imports_through_the_namespace():
    module = importlib.import_module("imagen.cascade")
    assert module.__all__ == []
