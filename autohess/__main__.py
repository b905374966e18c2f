"""Command line: ``python -m autohess demo``."""

import sys

USAGE = "usage: python -m autohess demo"


def main(argv: list[str]) -> int:
    if argv[:1] != ["demo"] or len(argv) > 1:
        print(USAGE, file=sys.stderr)
        return 2
    import autohess  # noqa: F401  (sets float64 before anything else touches JAX)
    from autohess._demo import run

    run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
