"""``python -m aoai_realtime``: the ``aoai-realtime`` command, for environments where the
script is not on ``PATH`` (a venv that is not activated, ``pipx run``, a container)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
