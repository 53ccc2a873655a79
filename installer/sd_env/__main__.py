import sys

from sd_env.cli import main

sys.exit(main())
