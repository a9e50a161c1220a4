import sys

from tvmbits.cli import main

sys.exit(main())
