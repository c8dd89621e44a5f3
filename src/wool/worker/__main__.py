import sys

from wool.worker._main import main

sys.exit(main())
