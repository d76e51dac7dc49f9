"""The ground-truth scorecard before and after the one-engine refactor: equal numbers.

`data/scorecard_02c736b.json` is `jaxcirc bench ground-truth` (13 tracr cases × 8 methods,
32 pairs, seed 0, zero ablation) as written at commit 02c736b, before the forward engine, the
`Circuit` type and the method values. This script runs the same scorecard on the working tree
and compares every (case, method) row: edge AUROC to 1e-6, node AUROC and faithfulness to 1e-6,
SHD at k exactly. It exits 1 on any difference and otherwise writes its section of RESULTS.md.
Usage: `python benchmarks/bench_scorecard_equal.py [--new scorecard.json] [--quick]`.

CircuitLasso's rows are the exception (`CHANGED`): the reference ran it with λ at the true edge
count (knowledge of the truth); the scorecard now chooses λ on held-out examples (issue 13), so
its numbers legitimately differ. They are reported side by side (per case and the mean), not
compared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

REFERENCE = c.HERE / "data" / "scorecard_02c736b.json"
TOL = 1e-6
CLOSE = ("edge_auroc", "node_auroc", "faithfulness")
CHANGED = ("CircuitLasso",)  # methods whose setting changed since the reference (see above)


def compare(old: list[dict], new: list[dict]) -> tuple[dict, list[str]]:
    """Largest difference per field over the shared rows (methods in `CHANGED` left out), and
    every row that differs."""
    key = lambda r: (r["case"], r["method"])
    old_rows = {key(r): r for r in old if r["method"] not in CHANGED}
    new_rows = {key(r): r for r in new if r["method"] not in CHANGED}
    problems = [f"row {k} only in {side}" for side, a, b in (
        ("the reference", old_rows, new_rows), ("the new run", new_rows, old_rows)
    ) for k in a if k not in b]  # fmt: skip
    worst = dict.fromkeys((*CLOSE, "shd_at_k"), 0.0)
    for k in old_rows.keys() & new_rows.keys():
        a, b = old_rows[k], new_rows[k]
        for field in worst:
            if (a[field] is None) != (b[field] is None):
                problems.append(f"{k} {field}: {a[field]} before, {b[field]} now")
                continue
            if a[field] is None:
                continue
            d = abs(a[field] - b[field])
            worst[field] = max(worst[field], d)
            if d > (TOL if field in CLOSE else 0):
                problems.append(f"{k} {field}: {a[field]} before, {b[field]} now")
    return worst, problems


def changed(old: list[dict], new: list[dict]) -> list[list[str]]:
    """Rows of the `CHANGED` methods, before and after, per case and the mean."""
    rows = []
    for m in CHANGED:
        a = {r["case"]: r for r in old if r["method"] == m}
        b = {r["case"]: r for r in new if r["method"] == m}
        shared = [case for case in a if case in b]
        for k in shared:
            rows.append([m, k, f"{a[k]['edge_auroc']:.3f}", f"{b[k]['edge_auroc']:.3f}",
                         str(a[k]["shd_at_k"]), str(b[k]["shd_at_k"])])  # fmt: skip
        if shared:
            mean = lambda rs, f: sum(rs[k][f] for k in shared) / len(shared)
            rows.append([f"**{m}**", "**mean**", f"**{mean(a, 'edge_auroc'):.3f}**",
                         f"**{mean(b, 'edge_auroc'):.3f}**", f"{mean(a, 'shd_at_k'):.1f}",
                         f"{mean(b, 'shd_at_k'):.1f}"])  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new", help="a scorecard.json already written by the working tree")
    p.add_argument("--quick", action="store_true", help="print only, do not write RESULTS.md")
    args = p.parse_args()
    info = c.machine()
    old = json.loads(REFERENCE.read_text())
    start = time.perf_counter()
    if args.new:
        new = json.loads(Path(args.new).read_text())
    else:
        from jaxcirc.bench import scorecard

        new, _ = scorecard()
    seconds = time.perf_counter() - start
    worst, problems = compare(old, new)
    for line in problems:
        print("DIFFERS:", line)
    rows = [[field, f"{value:.1e}", "1e-06" if field in CLOSE else "0"] for field, value in
            worst.items()]  # fmt: skip
    verdict = "equal" if not problems else f"{len(problems)} differences"
    n_other = sum(r["method"] not in CHANGED for r in old)
    body = "\n\n".join([
        "## Scorecard before and after the one-engine refactor (CPU)",
        c.machine_markdown(info),
        f"`jaxcirc bench ground-truth` defaults (13 tracr cases × 8 methods = {len(old)} rows, "
        f"32 pairs, seed 0, zero ablation) on the working tree, against "
        f"`benchmarks/data/scorecard_02c736b.json` written at commit 02c736b (before the shared "
        f"forward engine, `Circuit` and method values); the new run took {seconds:.0f} s"
        f"{' (read from ' + args.new + ')' if args.new else ''}. Largest difference over the "
        f"rows of every method but {', '.join(CHANGED)} ({n_other} rows):",
        c.table(["field", "largest difference", "tolerance"], rows),
        f"**Every row {verdict}.**" if not problems else f"**MISSED: {verdict}** (printed above).",
        f"{', '.join(CHANGED)} changed on purpose (issue 13): the reference chose λ at the true "
        f"edge count (knowledge of the truth); λ is now chosen on held-out examples. Before and "
        f"after:",
        c.table(["method", "case", "edge AUROC before", "now", "SHD at k before", "now"],
                changed(old, new)),
    ])  # fmt: skip
    c.publish("scorecard_equal", body, record=not args.quick and not problems)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
