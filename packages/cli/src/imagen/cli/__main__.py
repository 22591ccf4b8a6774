"""``python -m imagen.cli`` (and ``accelerate launch -m imagen.cli``): the cascade-cli command."""

from .main import main

raise SystemExit(main())
