"""`python -m lesion_jax.report`: see lesion_jax/report/cli.py."""
import sys

from lesion_jax.report.cli import main

if __name__ == "__main__":
  sys.exit(main())
