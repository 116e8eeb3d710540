import sys

from ldisc.demo import main

sys.exit(main())
