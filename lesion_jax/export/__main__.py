"""`python -m lesion_jax.export`: see lesion_jax/export/cli.py."""
import sys

from lesion_jax.export.cli import main

if __name__ == "__main__":
  sys.exit(main())
