"""Regenerate the README gallery: the eight schools' figures, drawn by hierjax itself.

    python scripts/make_gallery.py [--out docs/gallery]

Computes in float64 (uniform tau, flat mu; BDA3's choices) and writes impact.png,
shrinkage.png, densities.png and forest.png; ``docs/gallery/README.md`` holds the
markdown block the main README includes.
"""

import argparse
import os
import sys

import jax

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        default=os.path.join(HERE, os.pardir, "docs", "gallery"),
        help="output directory (default: docs/gallery)",
    )
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")

    import hierjax
    from hierjax.datasets import SCHOOLS
    from hierjax.io.plotting import plot_all

    y, sigma = hierjax.eight_schools()
    paths = plot_all(y, sigma, os.path.normpath(args.out), labels=SCHOOLS, units="points")
    for kind, path in paths.items():
        print(f"{kind:10s} {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
