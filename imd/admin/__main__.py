"""``python -m imd.admin``: the same as ``imd-admin``."""

import sys

from imd.admin.console import main

sys.exit(main())
