"""``torchrun -m core.train --config clip.toml [section.key=value ...]``: one training worker."""

import sys

from core.cli.train import main

sys.exit(main())
