"""Stand-in for Hugging Face ``datasets``: imagen-pytorch 2.1.0 imports one helper at import time."""
