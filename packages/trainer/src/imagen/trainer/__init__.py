"""imagen.trainer: not built yet.

This package is a placeholder with its pyproject; it exports nothing yet.
"""

__all__: list[str] = []
