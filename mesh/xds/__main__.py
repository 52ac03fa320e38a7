"""``python -m mesh.xds``: the same as ``mesh xds`` (see :mod:`mesh.xds.main`)."""

from __future__ import annotations

import sys

from mesh.xds.main import main

if __name__ == "__main__":
    sys.exit(main())
