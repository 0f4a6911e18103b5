"""``python -m provisioner``: the same as the ``provisioner`` command."""

from __future__ import annotations

import sys

from provisioner._cli.main import main

sys.exit(main())
