"""Judge outcomes of two evaluations of the same models and prompts, e.g. exact vs quantized
arithmetic (docs/performance.md). Usage:

    python3 tools/bench/compare_arithmetic.py runs/default/eval runs/default-q/eval

Prints, overall and per variant and set: the prompts compared, the share whose judge
outcome differs (with a Wilson 95% interval), the share of identical responses, and the
refusal rates on both sides. Needs polars only.
"""

import math
import sys

import polars as pl

KEY = ["variant", "seed", "set", "attack", "prompt_id"]


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    z, p = 1.959964, k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def main(a_dir: str, b_dir: str) -> None:
    cols = KEY + ["response", "outcome", "refusal"]
    a = pl.read_parquet(f"{a_dir}/generations.parquet").select(cols)
    b = pl.read_parquet(f"{b_dir}/generations.parquet").select(cols)
    j = a.join(b, on=KEY, how="inner", suffix="_b", nulls_equal=True)
    if j.height != a.height or j.height != b.height:
        print(f"warning: {a.height} vs {b.height} rows, {j.height} matched")
    j = j.with_columns(
        (pl.col("outcome") != pl.col("outcome_b")).alias("differs"),
        (pl.col("response") == pl.col("response_b")).alias("same_text"),
    )
    print("| group | n | outcome differs | 95% CI | identical responses | refused (a) | refused (b) |")
    print("|---|---:|---:|---|---:|---:|---:|")

    def row(name: str, g: pl.DataFrame) -> None:
        n, k = g.height, int(g["differs"].sum())
        lo, hi = wilson(k, n)
        print(
            f"| {name} | {n} | {k} ({k / n:.3f}) | [{lo:.3f}, {hi:.3f}] "
            f"| {g['same_text'].mean():.3f} | {g['refusal'].mean():.3f} | {g['refusal_b'].mean():.3f} |"
        )

    row("all", j)
    for (v,), g in sorted(j.group_by(["variant"]), key=lambda t: t[0]):
        row(f"variant {v}", g)
    for (s,), g in sorted(j.group_by(["set"]), key=lambda t: t[0]):
        row(f"set {s}", g)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
