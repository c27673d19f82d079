"""``python -m jmeta`` is the ``jmeta`` command."""

import sys

from jmeta.cli import main

sys.exit(main())
