"""``python -m attnsae`` is the ``attnsae`` command."""

import sys

from attnsae.cli import main

sys.exit(main())
