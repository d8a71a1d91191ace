"""`python -m ferry_devcluster` = `devcluster/devcluster`."""

import sys

from ferry_devcluster import cli

sys.exit(cli.main())
