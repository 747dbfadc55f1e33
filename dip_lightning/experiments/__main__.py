"""``python -m dip_lightning.experiments NAME ...``: the same as ``dip experiment NAME ...``."""

import sys

from dip_lightning.cli import _configure_logging
from dip_lightning.errors import DIPError
from dip_lightning.experiments import main

_configure_logging()
try:
    main()
except DIPError as error:
    sys.stderr.write(f"error: {error}\n")
    raise SystemExit(2) from None
