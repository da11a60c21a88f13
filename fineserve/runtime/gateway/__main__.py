"""``python -m fineserve.runtime.gateway CONFIG``: serve until SIGTERM / SIGINT."""

import sys

from fineserve.runtime.gateway.server import main

sys.exit(main())
