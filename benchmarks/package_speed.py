"""A package's speed-up over its teacher at about 256 atoms (one MD step's energy, forces and
stress through ASE, the student as a user gets it), written into its card.json (``speed``).

    python benchmarks/package_speed.py calculators/mgo-chgnet-v2 --threads 2
"""

from __future__ import annotations

import argparse
import json

from orbdistill.validation.throughput import package_speedup


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("package")
    p.add_argument("--n-atoms", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--structure", default=None, help="default: the first seed of the package's recipe")
    p.add_argument("--dry-run", action="store_true", help="print, do not write the card")
    args = p.parse_args()
    out = package_speedup(args.package, args.structure, args.n_atoms, args.repeats, args.threads, write=not args.dry_run)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
