import sys

from data_fetch.cli import main

sys.exit(main())
