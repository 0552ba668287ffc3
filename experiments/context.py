"""Does the 2D model gain from its neighbouring slices (2.5D input, `--context-slices`) on CA1?

    python experiments/context.py --out results/ca1-ablation/context/context.json --contexts 0 1

For each K of `--contexts`, trains the `cpu` preset's 2D model with K neighbouring slices on each side as
input channels (0: the plain 2D model) and evaluates it exactly as `mitoseg compare --preset cpu` does
(`recipe.run_variant`), one after the other on the same machine, at equal wall time (the preset's 30
minutes). A run folder that already holds its evaluation (`row.json`) is kept. One seed each: a difference
under about 0.01-0.02 is within what another seed changes (results/ca1-ablation/ablation600.md: 0.04 at 600
iterations).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recipe import run_variant, table  # experiments/ is the script's folder, so on sys.path
from record import header, save

from mitoseg import compare


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON to write; the .md table goes beside it")
    p.add_argument("--contexts", type=int, nargs="+", default=[0, 1], help="neighbouring slices on each side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs/context", help="folder for the run folders")
    a = p.parse_args(argv)

    bench = compare.load_benchmark("lucchi", None)
    record = header(__file__, argv, bench.description, seed=a.seed, dims=2, epochs=None, rows={})
    for k in a.contexts:
        record["rows"][f"{k} on each side"] = run_variant({"context_slices": k},
                                                          Path(a.runs) / f"context{k}_seed{a.seed}", 2, a.seed, None)
    title = "The 2D model with neighbouring slices as input (2.5D) on CA1"
    save(a.out, record, table(record, title))
    print(table(record, title))


if __name__ == "__main__":
    main()
