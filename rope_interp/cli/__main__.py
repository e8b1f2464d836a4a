"""``python -m rope_interp.cli``."""

import sys

from . import main

sys.exit(main())
