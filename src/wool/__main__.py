import sys

from wool._cli import main

sys.exit(main())
