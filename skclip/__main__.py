"""``python -m skclip`` runs the ``skclip`` command."""

import sys

from .cli import main

sys.exit(main())
