"""``python -m salt_exp``: the same as the ``salt-exp`` command."""

import sys

from salt_exp.cli import main

sys.exit(main())
