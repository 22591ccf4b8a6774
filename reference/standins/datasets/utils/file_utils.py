"""The one name imagen-pytorch 2.1.0 imports from ``datasets`` (used only to fetch URLs)."""


def get_datasets_user_agent() -> str:
    return "imagen-reference-tests"
