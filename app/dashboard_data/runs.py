"""Training runs: the HF Trainer `trainer_state.json` of each run (local `runs/` and the shipped models' runs kept
in `bench/results/runs/`), its logged history as curves, and one summary row per run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .files import RUN_DIRS, read_json


def find_runs(root: Path) -> dict[str, Path]:
    """Run name -> its trainer_state.json with the largest global_step (local runs and the shipped ones)."""
    runs: dict[str, tuple[int, Path]] = {}
    found = [
        (base, state)
        for base in (Path(root, d) for d in RUN_DIRS)
        for state in sorted(base.glob("*/**/trainer_state.json")) + sorted(base.glob("*/trainer_state.json"))
    ]
    for base, state in found:
        name = state.relative_to(base).parts[0]
        data = read_json(state)
        if not isinstance(data, dict):
            continue
        step = int(data.get("global_step", 0) or 0)
        if name not in runs or step > runs[name][0]:
            runs[name] = (step, state)
    return {name: path for name, (_, path) in sorted(runs.items())}


def run_history(state_file: Path) -> pd.DataFrame:
    """`log_history` as a frame indexed by step; train and eval entries merged on their step."""
    history = json.loads(Path(state_file).read_text()).get("log_history", [])
    frame = pd.DataFrame([h for h in history if "step" in h])
    if frame.empty:
        return frame
    return frame.groupby("step").last().sort_index()


def run_best_step(state_file: Path) -> int | None:
    """The step of the checkpoint the run judged best (HF Trainer's `best_global_step`), if it kept one."""
    step = json.loads(Path(state_file).read_text()).get("best_global_step")
    return int(step) if step is not None else None


_NOT_CURVES = ("runtime", "per_second", "unix_time", "epoch", "learning_rate", "grad_norm")


def curve_columns(history: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(loss columns, validation metric columns) of a run's history."""
    numeric = [c for c in history.columns if pd.api.types.is_numeric_dtype(history[c])]
    numeric = [c for c in numeric if not any(s in c for s in _NOT_CURVES)]
    losses = [c for c in numeric if "loss" in c]
    return losses, [c for c in numeric if c not in losses]


def runs_table(runs: dict[str, Path]) -> pd.DataFrame:
    """One row per run: steps, epochs, the best metric and its step, and the last value of each validation metric."""
    rows = {}
    for name, state_file in runs.items():
        state = json.loads(Path(state_file).read_text())
        history = run_history(state_file)
        row = {
            "steps": state.get("global_step"),
            "epochs": round(float(state.get("epoch") or 0), 1),
            "best metric": state.get("best_metric"),
            "best step": state.get("best_global_step"),
        }
        if not history.empty:
            losses, metrics = curve_columns(history)
            for column in losses + metrics:
                values = history[column].dropna()
                if len(values):
                    row[f"last {column}"] = float(values.iloc[-1])
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")
