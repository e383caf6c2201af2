"""``python -m dlaas`` is the ``dlaas`` command."""

import sys

from dlaas.cli import main

sys.exit(main())
