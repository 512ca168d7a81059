import sys

from scaling.cli import main

if __name__ == "__main__":  # spawned worker processes import this module; only the real entry point runs the CLI
    sys.exit(main())
