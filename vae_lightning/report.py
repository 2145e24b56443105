"""Offline review of runs, no dashboard needed.

``MetricHistory`` is a Lightning logger that every run gets (whatever ``logger=`` says): it
appends each logged scalar to ``<run_dir>/history.jsonl``. From that file, ``metrics.json``
and the last image panels, ``write_report`` draws ``<run_dir>/report.png``: −ELBO, recon
and KL curves (train and validation), the last reconstructions and prior samples, and the
test numbers. ``python -m vae_lightning.report RUN_DIR [RUN_DIR ...]`` (a multirun folder
counts as its jobs) overlays the curves of several runs and writes their final metrics as
a table, ``runs.md`` and ``runs.csv``.
"""

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger

HISTORY = "history.jsonl"
CURVES = ("nelbo", "recon", "kl")
TABLE_KEYS = ("val/nelbo", "test/nelbo", "test/recon", "test/kl", "test/nll", "test/bpd", "val/active_units")


class MetricHistory(Logger):
    """Appends ``{"step": s, "key": value, ...}`` lines to ``<save_dir>/history.jsonl``."""

    def __init__(self, save_dir: str):
        super().__init__()
        self.path = Path(save_dir) / HISTORY

    @property
    def name(self) -> str:
        return "history"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def resume_at(self, step: int, unlogged: dict[str, float] | None = None) -> None:
        """A run resumed from a checkpoint logs again from ``step`` (its global step): drop
        the lines a killed run wrote from there on, and a line cut by the kill, so that no
        step is in the file twice. ``unlogged``: the line of the checkpoint's own step, when
        the checkpoint was written before it (a step checkpoint) and the run was killed in
        between; the resumed run does not train that step again, so it is written here."""
        rows = []
        for line in self.path.read_text().splitlines() if self.path.is_file() else []:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step") is None or row["step"] < step:
                rows.append(row)
        if unlogged and not any(
            row.get("step") == unlogged["step"] and unlogged.keys() <= row.keys() for row in rows
        ):
            rows.append(unlogged)
        kept = [json.dumps(row) + "\n" for row in rows]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        part = self.path.with_name(f".{HISTORY}.tmp")
        part.write_text("".join(kept))
        part.replace(self.path)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) or hasattr(v, "item")}
        if not values:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")


def read_history(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``key -> (steps, values)``; a later line for the same step wins (resumed runs)."""
    series: dict[str, dict[int, float]] = {}
    path = run_dir / HISTORY
    if not path.is_file():
        return {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        step = row.pop("step", None)
        for key, value in row.items():
            if step is not None and math.isfinite(value):
                series.setdefault(key, {})[int(step)] = value
    return {k: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for k, v in series.items()}


def read_metrics(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def last_panel(run_dir: Path, name: str) -> np.ndarray | None:
    """The latest ``images/<name>/epoch_NNN.png`` as an array, if any."""
    files = sorted((run_dir / "images" / name).glob("epoch_*.png"))
    if not files:
        return None
    import matplotlib.image as mpimg

    return mpimg.imread(files[-1])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(run_dir: str | Path) -> Path:
    """``<run_dir>/report.png``: curves, last panels and final numbers of one run."""
    run_dir = Path(run_dir)
    plt = _pyplot()
    history, metrics = read_history(run_dir), read_metrics(run_dir)
    panels = [(n, last_panel(run_dir, n)) for n in ("reconstructions", "prior_samples")]
    panels = [(n, p) for n, p in panels if p is not None]
    fig = plt.figure(figsize=(15, 8.5), dpi=100)
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.3])
    for i, term in enumerate(CURVES):
        ax = fig.add_subplot(grid[0, i])
        train = history.get(f"train/{term}")
        if train is not None:
            ax.plot(*train, lw=0.8, alpha=0.7, label=f"train/{term}")
        if f"val/{term}" in history:
            ax.plot(*history[f"val/{term}"], "o-", lw=1.5, label=f"val/{term}")
        ax.set_title(f"{term} (nats per image)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
            _robust_ylim(ax, [line.get_ydata() for line in ax.lines])
    for i, (name, image) in enumerate(panels[:2]):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(image, cmap="gray", interpolation="nearest")
        ax.set_title(f"last {name.replace('_', ' ')}")
        ax.axis("off")
    ax = fig.add_subplot(grid[1, 2])
    ax.axis("off")
    rows = [f"{k:<18}{metrics[k]:10.3f}" for k in TABLE_KEYS if k in metrics]
    ax.text(
        0, 1, "final numbers\n\n" + ("\n".join(rows) or "(no metrics.json yet)"), va="top", family="monospace"
    )
    fig.suptitle(f"run {run_dir}", fontsize=10)
    fig.tight_layout()
    out = run_dir / "report.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def _robust_ylim(ax, series: list) -> None:
    """Ignore the first steps' huge values so that the curves' ends are readable."""
    values = np.concatenate([np.asarray(s, float) for s in series if len(s)])
    if len(values) > 4:
        low, high = np.percentile(values, [0, 95])
        pad = 0.05 * (high - low) or 1.0
        ax.set_ylim(low - pad, high + pad)


def expand_runs(paths: list[str]) -> list[Path]:
    """Run directories named by ``paths``: a folder with metrics.json or history.jsonl is a
    run; otherwise its sub-folders that are runs (a multirun folder), in job order."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.json").is_file() or (p / HISTORY).is_file():
            runs.append(p)
            continue
        jobs = [
            d
            for d in p.iterdir()
            if d.is_dir() and ((d / "metrics.json").is_file() or (d / HISTORY).is_file())
        ]
        if not jobs:
            raise SystemExit(f"error: {p} is neither a run directory (metrics.json) nor a multirun folder")
        runs += sorted(jobs, key=lambda d: (len(d.name), d.name))
    return runs


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    lines = path.read_text().splitlines() if path.is_file() else []
    items = [line[2:].strip() for line in lines if line.startswith("- ")]
    return dict(item.partition("=")[::2] for item in items)


def run_labels(runs: list[Path]) -> list[str]:
    """Each run named by the overrides in which the runs differ (e.g. ``model.beta=4``),
    else by its folder name."""
    overrides = [_overrides(r) for r in runs]
    keys = sorted({k for o in overrides for k in o})
    varying = [k for k in keys if len({o.get(k) for o in overrides}) > 1]
    labels = [",".join(f"{k}={o[k]}" for k in varying if k in o) for o in overrides]
    return [label or run.name for label, run in zip(labels, runs, strict=True)]


def compare_runs(runs: list[Path], out_dir: Path) -> tuple[Path, Path, Path]:
    """Overlaid curves (``runs.png``) and tables (``runs.md``, ``runs.csv``) in ``out_dir``."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), dpi=100)
    labels = run_labels(runs)
    for run, label in zip(runs, labels, strict=True):
        history = read_history(run)
        for ax, term in zip(axes, CURVES, strict=True):
            if f"val/{term}" in history:
                ax.plot(*history[f"val/{term}"], "o-", ms=3, label=label)
    for ax, term in zip(axes, CURVES, strict=True):
        ax.set_title(f"val/{term} (nats per image)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    figure = out_dir / "runs.png"
    fig.savefig(figure)
    plt.close(fig)
    metrics = [read_metrics(r) for r in runs]
    keys = [k for k in TABLE_KEYS if any(k in m for m in metrics)]
    table = out_dir / "runs.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "dir", *keys])
        for run, label, m in zip(runs, labels, metrics, strict=True):
            writer.writerow([label, str(run), *(m.get(k, "") for k in keys)])
    lines = ["| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for label, m in zip(labels, metrics, strict=True):
        cells = [f"{m[k]:.2f}" if k in m else "" for k in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    markdown = out_dir / "runs.md"
    markdown.write_text("\n".join(lines) + "\n")
    return figure, markdown, table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vae_lightning.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("runs", nargs="+", help="run directories or multirun folders")
    parser.add_argument("--out", help="where runs.png/.md/.csv go (default: the first folder given)")
    args = parser.parse_args(argv)
    runs = expand_runs(args.runs)
    for run in runs:
        write_report(run)
    figure, markdown, table = compare_runs(runs, Path(args.out or args.runs[0]))
    print(markdown.read_text(), end="")
    print(
        f"wrote {figure}, {markdown}, {table} and report.png in each of {len(runs)} run(s)", file=sys.stderr
    )


if __name__ == "__main__":
    main()
