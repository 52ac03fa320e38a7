"""``python -m mesh.dashboard``: the same as ``mesh dashboard`` (options in mesh/dashboard/settings.py)."""

from __future__ import annotations

import sys

from mesh.dashboard.main import main

if __name__ == "__main__":
    sys.exit(main())
