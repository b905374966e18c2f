#!/usr/bin/env python
"""NIST StRD nonlinear regression: autohess from both NIST starts on all 27 problems.

Run from the repository root::

    python benchmarks/nist_table.py                  # writes benchmarks/results/nist.{md,json}
    python benchmarks/nist_table.py --maxiter 5000   # the same with a higher iteration limit
    python benchmarks/nist_table.py --output-dir /tmp/nist

Each problem (data and certified values in ``tests/data/nist_strd/``, parsed and modelled by
``tests/nist.py``) is fitted with::

    model = ah.least_squares(residual_fn, {"y": y, "x": x}, {"b": start1})
    res = ah.fit(model, start={"b": start}, cov_type="gauss-newton", warn=False)

from Start 1 and Start 2 (54 fits; solver defaults, ``maxiter=200`` unless ``--maxiter``),
then, as a control, from the certified estimates (27 fits). For each fit the table gives the
status, the iterations, and the digits of agreement with the certified values:
``-log10(max_i |x_i - c_i| / |c_i|)`` over the estimates, over the standard deviations, and
for the residual sum of squares (``model.rss``), clipped to [0, 11] (the certified values have
11 digits; 0 also stands for a NaN standard deviation). A case "passes" at >= 6 digits for the
estimates and the RSS and >= 4 for the standard deviations, the tolerances of
``tests/test_nist.py``.

Headline (2-core VM, jax 0.10.2, maxiter=200; ~25 s): 43 of 54 fits converge and pass; all 43
agree to >= 9.1 digits in estimates, SDs and RSS (the lowest: Hahn1's SDs). The 11 failures
are the optimiser's path, not the answer's accuracy (from the certified estimates 26 of 27
re-converge to >= 9.5 digits; Lanczos1 stalls at its double-precision floor with estimates at
~10 digits): Lanczos1/2/3 from both starts end at the coalesced-exponential saddle b2 == b4
(SINGULAR); MGH09 start 1 heads for its minimum at infinity; MGH17 start 1, MGH10 both starts
and Bennett5 start 1 run out of iterations in slow valleys (with ``--maxiter 5000``, 47 of 54
pass: MGH17-1, MGH10-2 and Bennett5-1 converge after 1138, 251 and 725 iterations).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (HERE, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import autohess as ah  # noqa: E402
import nist  # noqa: E402  (tests/nist.py)
from _harness import machine_info  # noqa: E402

RESULTS = HERE / "results"
CAP = 11.0
NEED = {"estimates": 6.0, "sds": 4.0, "rss": 6.0}


def digits(estimate, certified) -> float:
    """``-log10`` of the largest per-component relative error, clipped to [0, CAP]."""
    e, c = np.atleast_1d(np.asarray(estimate, np.float64)), np.atleast_1d(np.asarray(certified, np.float64))
    err = np.max(np.abs(e - c) / np.abs(c))
    if not np.isfinite(err):
        return 0.0
    if err == 0.0:
        return CAP
    return float(min(CAP, max(0.0, -math.log10(err))))


def run_fit(model, prob, start_label: str, maxiter: int, method: str = "trust-region") -> dict:
    b0 = prob.certified if start_label == "certified" else prob.start(int(start_label))
    t0 = time.perf_counter()
    res = ah.fit(model, start={"b": jnp.asarray(b0)}, cov_type="gauss-newton", warn=False, maxiter=maxiter, method=method)
    b = np.asarray(res.params_flat)
    sd = np.asarray(res.bse_flat)
    rss = model.rss(res.params)
    seconds = time.perf_counter() - t0
    # Lanczos: the same optimum with its exponential terms relabelled compares equal
    mine, cert = nist.canonical_order(prob.name, b), nist.canonical_order(prob.name, prob.certified)
    row = {
        "dataset": prob.name,
        "difficulty": prob.difficulty,
        "start": start_label,
        "converged": bool(res.converged),
        "status": ah.Status(int(res.status_code)).name,
        "iterations": int(res.iterations),
        "digits_estimates": digits(b[mine], prob.certified[cert]),
        "digits_sds": digits(sd[mine], prob.certified_sd[cert]),
        "digits_rss": digits(rss, prob.rss),
        "estimates": b.tolist(),
        "sds": [None if not np.isfinite(v) else float(v) for v in sd],
        "rss": rss,
        "certified_rss": prob.rss,
        "seconds": seconds,  # the first fit of a problem includes compiling its solver
    }
    row["passes"] = bool(
        row["converged"]
        and row["digits_estimates"] >= NEED["estimates"]
        and row["digits_sds"] >= NEED["sds"]
        and row["digits_rss"] >= NEED["rss"]
    )
    return row


def markdown(rows: list[dict], control: list[dict], info: dict, maxiter: int, summary: dict) -> str:
    def table(rs):
        out = [
            "| dataset | difficulty | start | converged | status | digits: estimates | digits: SDs | digits: RSS | iterations |",
            "|---|---|---|---|---|---:|---:|---:|---:|",
        ]
        for r in rs:
            mark = "" if r["passes"] else " **x**"
            out.append(
                f"| {r['dataset']} | {r['difficulty']} | {r['start']} | {'yes' if r['converged'] else 'no'} | "
                f"{r['status']}{mark} | {r['digits_estimates']:.1f} | {r['digits_sds']:.1f} | "
                f"{r['digits_rss']:.1f} | {r['iterations']} |"
            )
        return "\n".join(out)

    failing = [r for r in rows if not r["passes"]]
    lines = [
        "# NIST StRD nonlinear regression: autohess",
        "",
        "Generated by `benchmarks/nist_table.py` (do not edit by hand). "
        f"`ah.least_squares` + `ah.fit(cov_type=\"gauss-newton\", maxiter={maxiter})`; certified "
        "values from `tests/data/nist_strd/`.",
        "",
        f"Machine: {info['platform']}, {info['cpu']}, {info['cpu_count']} CPUs; Python {info['python']}, "
        f"jax {info['jax']}, numpy {info['numpy']}; autohess at {(info.get('git_commit') or '?')[:10]} "
        f"({'with uncommitted changes' if info.get('autohess_uncommitted_changes') else 'clean'}); {info['date']}.",
        "",
        "Digits of agreement: `-log10(max_i |x_i - c_i| / |c_i|)` against the certified values, "
        f"clipped to [0, {CAP:.0f}] (0 also for NaN standard deviations). A case passes at "
        f">= {NEED['estimates']:.0f} digits for estimates and RSS and >= {NEED['sds']:.0f} for SDs "
        "with status CONVERGED; failures are marked **x**.",
        "",
        f"**Summary:** {summary['passing']} of {summary['cases']} fits from the NIST starts converge and reach "
        f"6/4/6 digits (estimates/SDs/RSS); {summary['converged']} converge; the passing ones agree to "
        f">= {summary['min_digits_passing']:.1f} digits in all three. By level: "
        + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in summary["by_level"].items())
        + ". From the certified estimates (control): "
        f"{summary['control_passing']} of {len(control)} pass.",
        "",
        "## From the NIST starts",
        "",
        table(rows),
        "",
        "## Failing cases",
        "",
    ]
    for r in failing:
        b = ", ".join(f"{v:.6g}" for v in r["estimates"])
        lines.append(
            f"- {r['dataset']} start {r['start']}: {r['status']} after {r['iterations']} iterations at "
            f"b = ({b}), RSS {r['rss']:.4g} (certified {r['certified_rss']:.4g})."
        )
    lines += [
        "",
        "## Control: from the certified estimates",
        "",
        "Separates the optimiser's path from the accuracy of the answer. Lanczos1 (certified RSS "
        "1.4e-25) has residuals of ~100 ulps of the data, so its RSS can be matched to ~3 digits "
        "and its SDs (proportional to sqrt(RSS)) to ~3 in double precision; the solver reports "
        "STALLED there (its objective, log RSS, is rounding noise at that point).",
        "",
        table(control),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--maxiter", type=int, default=200, help="solver iteration limit (default 200, autohess's)")
    ap.add_argument("--output-dir", type=Path, default=RESULTS, help="where nist.md and nist.json go")
    ap.add_argument("--method", default="trust-region", choices=["trust-region", "gauss-newton"],
                    help="ah.fit method; gauss-newton writes nist_gauss-newton.md/.json")
    args = ap.parse_args(argv)

    info = machine_info(jax)
    t_start = time.perf_counter()
    rows, control = [], []
    for name in nist.NAMES:
        prob = nist.load(name)
        model = ah.least_squares(
            nist.residual_for(name), nist.data_for(prob), {"b": jnp.asarray(prob.start1)}, name=name
        )
        for start in ("1", "2"):
            r = run_fit(model, prob, start, args.maxiter, args.method)
            rows.append(r)
            print(
                f"{name:9s} {prob.difficulty:8s} start {start}  {r['status']:15s} it {r['iterations']:5d}  "
                f"digits est {r['digits_estimates']:4.1f} sd {r['digits_sds']:4.1f} rss {r['digits_rss']:4.1f}"
                f"{'' if r['passes'] else '   FAIL'}",
                flush=True,
            )
        control.append(run_fit(model, prob, "certified", args.maxiter, args.method))
    total = time.perf_counter() - t_start

    passing = [r for r in rows if r["passes"]]
    by_level = {}
    for level in ("Lower", "Average", "Higher"):
        rs = [r for r in rows if r["difficulty"] == level]
        by_level[level] = (sum(r["passes"] for r in rs), len(rs))
    summary = {
        "cases": len(rows),
        "passing": len(passing),
        "converged": sum(r["converged"] for r in rows),
        "min_digits_passing": min(
            (min(r["digits_estimates"], r["digits_sds"], r["digits_rss"]) for r in passing), default=float("nan")
        ),
        "by_level": by_level,
        "control_passing": sum(r["passes"] for r in control),
        "failing": [f"{r['dataset']} start {r['start']}: {r['status']}" for r in rows if not r["passes"]],
        "seconds_total": total,
    }
    print(f"\n{summary['passing']} of {summary['cases']} pass (6/4/6 digits); {total:.1f} s in all")
    for f in summary["failing"]:
        print("  failing:", f)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = "nist" if args.method == "trust-region" else f"nist_{args.method}"
    (args.output_dir / f"{stem}.md").write_text(markdown(rows, control, info, args.maxiter, summary).replace(
        'cov_type=\"gauss-newton\"', f'method=\"{args.method}\", cov_type=\"gauss-newton\"'))
    payload = {
        "benchmark": "nist_strd",
        "maxiter": args.maxiter,
        "requirements": NEED,
        "digits_cap": CAP,
        "machine": info,
        "summary": summary,
        "from_nist_starts": rows,
        "from_certified": control,
    }
    payload["method"] = args.method
    (args.output_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.output_dir / (stem + '.md')} and {args.output_dir / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
