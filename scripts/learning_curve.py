"""The learning curve of a run: a validation metric against steps, epochs and minutes.

    python scripts/learning_curve.py runs/arcface-cpu --json bench/results/arcface_cpu_curve.json \
        --png bench/results/arcface_cpu_curve.png --keep-state bench/results/runs/arcface-cpu
    python scripts/learning_curve.py runs/dual-encoder --metrics t2i_r1,t2i_r10,i2t_r1 --json bench/results/dual_curve.json

`--metrics`: the `eval_<name>` keys of the log, the first one plotted (ArcFace: one-shot `recall_at_1`,
`recall_at_5`, `map`; dual encoder: `t2i_r1`, `t2i_r5`, `t2i_r10`, `i2t_r1`, ..., `recall_mean`).

Reads the run's newest `checkpoints/*/trainer_state.json` (HF Trainer's `log_history`). Minutes come from
the `unix_time` that `compute_recall_metrics` logs with every evaluation: the time since the first
evaluation of the run, with the pauses of a resumed run (a gap over 5x the usual one) left out.
`--keep-state` copies the trainer_state.json there, so the dashboard shows the curve in any clone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from model_pkg.fileio import atomic_write_json


def newest_state(run: Path) -> Path:
    if run.is_file():
        return run
    states = [p for p in run.glob("checkpoints/checkpoint-*/trainer_state.json")] + list(run.glob("trainer_state.json"))
    if not states:
        raise SystemExit(f"no trainer_state.json under {run} (looked in checkpoints/checkpoint-*/)")
    return max(states, key=lambda p: json.loads(p.read_text()).get("global_step", 0))


def curve(state: dict, metrics: list[str]) -> list[dict]:
    evals = [e for e in state.get("log_history", []) if f"eval_{metrics[0]}" in e]
    rows, elapsed, last = [], 0.0, None
    gaps = sorted(
        b["eval_unix_time"] - a["eval_unix_time"]
        for a, b in zip(evals, evals[1:])
        if "eval_unix_time" in a and "eval_unix_time" in b
    )
    usual = gaps[len(gaps) // 2] if gaps else 0.0
    for e in evals:
        t = e.get("eval_unix_time")
        if t is not None and last is not None:
            gap = t - last
            elapsed += gap if gap <= 5 * usual else usual  # a resumed run's pause is not training time
        last = t if t is not None else last
        rows.append(
            {
                "step": e["step"],
                "epoch": round(e.get("epoch", 0.0), 2),
                **{m: e.get(f"eval_{m}") for m in metrics},
                "minutes": round(elapsed / 60, 1) if t is not None else None,
            }
        )
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder (runs/arcface-cpu) or a trainer_state.json")
    parser.add_argument("--json", default=None)
    parser.add_argument("--png", default=None)
    parser.add_argument("--metrics", default="recall_at_1,recall_at_5,map", help="eval metrics; the first is plotted")
    parser.add_argument("--label", default="val one-shot rank-1 (%)", help="y-axis label of the plot")
    parser.add_argument("--keep-state", default=None, help="folder to copy trainer_state.json into")
    args = parser.parse_args(argv)
    path = newest_state(Path(args.run))
    state = json.loads(path.read_text())
    metrics = args.metrics.split(",")
    rows = curve(state, metrics)
    print(f"| step | epoch | minutes | {' | '.join(metrics)} |\n|---|---|---|{'---|' * len(metrics)}")
    for r in rows:
        values = " | ".join("-" if r[m] is None else f"{r[m]:.2f}" for m in metrics)
        print(f"| {r['step']} | {r['epoch']} | {r['minutes']} | {values} |")
    if args.json:
        atomic_write_json(
            {"source": os.path.relpath(path), "best_global_step": state.get("best_global_step"), "rows": rows}, args.json
        )
    if args.png and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        ax.plot([r["step"] for r in rows], [r[metrics[0]] for r in rows], marker="o", label=args.label)
        ax.axhline(rows[0][metrics[0]], color="grey", ls="--", label=f"first evaluation (step {rows[0]['step']})")
        ax.set_xlabel("step")
        ax.set_ylabel(args.label)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(args.png)
    if args.keep_state:
        Path(args.keep_state).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(args.keep_state) / "trainer_state.json")
    return rows


if __name__ == "__main__":
    main()
