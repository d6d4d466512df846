"""``python -m webui`` is ``emq-webui``."""

import sys

from webui.cli import main

sys.exit(main())
