import sys

from lightdvae.cli import main

sys.exit(main())
