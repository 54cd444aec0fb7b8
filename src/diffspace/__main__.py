import sys

from diffspace.cli.main import main

sys.exit(main())
