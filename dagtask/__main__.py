"""``python -m dagtask``: the same as the ``dagtask`` command."""

from __future__ import annotations

import sys

from dagtask.cli import main

if __name__ == "__main__":
    sys.exit(main())
