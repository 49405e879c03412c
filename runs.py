"""The runs under a save directory, read from their run directories: python runs.py list|show|diff|plot."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from utils.errors import UserError, did_you_mean, exit_cli
from utils.run_records import MISSING, STATUSES, Run, best_first, differences, find_run, find_runs, flatten, select

RUN_HELP = "a run directory (or its log directory, or a file in it), NAME/RUN_ID, or a run id, under --save-dir"


def build_parser() -> argparse.ArgumentParser:
    """The runs.py command line: list, show, diff and plot, each with --save-dir."""
    parser = argparse.ArgumentParser(description="List, show, compare and plot training runs from their run "
                                                 "directories (run.json, config.json, metrics.jsonl).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--save-dir", default="saved", metavar="DIR",
                        help="where the runs were written (their trainer.save_dir; default saved)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", parents=[common], help="a table of the runs, oldest first")
    listing.add_argument("--name", help="only the runs of configs with this name (a shell pattern: Digits*)")
    listing.add_argument("--status", help=f"only the runs with this status: {', '.join(STATUSES)}")
    listing.add_argument("--sort", action="store_true",
                         help="by the best monitored value, best first (runs monitoring other keys apart)")
    show = commands.add_parser("show", parents=[common], help="one run: its manifest and its final and best metrics")
    show.add_argument("run", metavar="RUN", help=RUN_HELP)
    show.add_argument("--json", action="store_true", help="print it as one JSON object")
    diff = commands.add_parser("diff", parents=[common], help="the config keys and environment entries two runs "
                                                              "differ in")
    diff.add_argument("runs", nargs=2, metavar="RUN", help=RUN_HELP)
    plot = commands.add_parser("plot", parents=[common], help="a PNG of one metric's curves, one line per run")
    plot.add_argument("runs", nargs="+", metavar="RUN", help=RUN_HELP)
    plot.add_argument("--metric", required=True, help="a key of metrics.jsonl's epoch rows, e.g. val_accuracy")
    plot.add_argument("--out", metavar="FILE", help="the PNG to write (default: METRIC.png here)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Read the run directories and print (or, for plot, draw) what the command asks."""
    args = build_parser().parse_args(argv)
    save_dir = Path(args.save_dir)
    if args.command == "list":
        list_runs(save_dir, args.name, args.status, args.sort)
    elif args.command == "show":
        show(find_run(args.run, save_dir), args.json)
    elif args.command == "diff":
        diff(*(find_run(run, save_dir) for run in args.runs))
    else:
        plot([find_run(run, save_dir) for run in args.runs], args.metric, args.out)


# ---- list

def list_runs(save_dir: Path, name: str | None, status: str | None, sort: bool) -> None:
    """The table of the runs under save_dir, filtered by config name (a shell pattern) and status, oldest first or
    (sort) best first."""
    if status is not None and status not in STATUSES:
        raise UserError(f"--status {status!r} is not a status.{did_you_mean(status, STATUSES)} Give one of "
                        f"{', '.join(STATUSES)}")
    every = find_runs(save_dir)
    runs = select(every, name, status)
    if sort:
        runs = best_first(runs)
    if not runs:
        asked = " ".join(f"{flag} {value}" for flag, value in (("--name", name), ("--status", status)) if value)
        names = sorted({run.name for run in every})
        print(f"No runs under {save_dir}" + (f" match {asked} (configs: {', '.join(names)})" if every else ""))
        return
    header = ("name", "run id", "status", "epochs", "best", "duration", "started")
    print_table([header, *(_row(run) for run in runs)])


def _row(run: Run) -> tuple[str, ...]:
    planned = f"/{run.epochs_planned}" if run.epochs_planned is not None else ""
    best = f"{run.monitor[1]} {run.best[0]:.4g}" if run.best is not None else "-"
    return (run.name, run.run_id, run.status, f"{run.epochs}{planned}", best, duration(run.duration_s),
            run.started.strftime("%Y-%m-%d %H:%M") if run.started else "-")


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows of cells in left-aligned columns, the first row the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def duration(seconds: float | None) -> str:
    """4.2 s -> '4s', 185 s -> '3m05s', 7380 s -> '2h03m'; None -> '-'."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# ---- show

def show(run: Run, as_json: bool) -> None:
    """The run's status, epochs, best and final values, then what its run.json records of its newest start and a line
    per start (as JSON with as_json: these and the whole run.json)."""
    best = _best(run)
    if as_json:
        print(json.dumps({"run": run.label, "checkpoint_dir": str(run.checkpoint_dir), "log_dir": str(run.log_dir),
                          "status": run.status, "epochs": run.epochs, "epochs_planned": run.epochs_planned,
                          "duration_s": run.duration_s, "best": best, "final": run.final, "manifest": run.manifest},
                         indent=2))
        return
    exit_code = (run.manifest or {}).get("exit_code")
    lines = [("run", f"{run.label}: {run.checkpoint_dir} (logs: {run.log_dir})"),
             ("status", run.status + (f", exit status {exit_code}" if exit_code is not None else "")),
             ("epochs", f"{run.epochs}" + (f" of {run.epochs_planned}" if run.epochs_planned is not None else "")),
             ("duration", f"{duration(run.duration_s)}, started {_time(run.started)}"),
             ("best", f"{best['mode']} {best['key']} {best['value']:.6g} at epoch {best['epoch']}" if best else "-"),
             ("final", ", ".join(f"{key} {value:.6g}" for key, value in run.final.items()
                                 if isinstance(value, (int, float))) or "-")]
    if run.manifest is None:
        lines.append(("run.json", "none (a run from before manifests): the above is what config.json, metrics.jsonl "
                                  "and the checkpoints say"))
    else:
        lines += _manifest_lines(run)
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        print(f"{label.ljust(width)}  {text}")


def _best(run: Run) -> dict | None:
    """{"key", "mode", "value", "epoch"} (and "step" for a validation in the middle of an epoch), or None."""
    if run.best is None:
        return None
    value, row = run.best
    return {"key": run.monitor[1], "mode": run.monitor[0], "value": value, "epoch": row.get("epoch"),
            **({"step": row["step"]} if "step" in row else {})}


def _manifest_lines(run: Run) -> list[tuple[str, str]]:
    start = run.last_start
    git = start.get("git") or {}
    if "error" in git:
        code = f"unknown: {git['error']}"
    else:
        changes = f"uncommitted changes in {git['patch']}" if git.get("patch") else "clean"
        code = f"{(git.get('commit') or 'no commit')[:12]} ({git.get('branch') or 'detached'}), {changes}"
        if git.get("untracked_not_in_patch"):
            code += f"; untracked, not in the patch: {', '.join(git['untracked_not_in_patch'])}"
    software = (f"Python {start.get('python')}, torch {start.get('torch')}, CUDA {start.get('cuda') or '-'}, cuDNN "
                f"{start.get('cudnn') or '-'}; {len(start.get('packages') or {})} packages (in run.json)")
    devices = (f"{start.get('device')} on {start.get('host')} ({start.get('platform')}), world size "
               f"{start.get('world_size')}; GPUs: {', '.join(start.get('gpus') or []) or '-'}")
    variables = " ".join(f"{k}={v}" for k, v in (start.get("variables") or {}).items()) or "-"
    data = "; ".join(f"{key}: {_fingerprint(value)}" for key, value in run.data().items()) or "-"
    lines = [("command", start.get("command", "-")), ("code", code), ("software", software), ("devices", devices),
             ("variables", variables), ("data", data)]
    for number, entry in enumerate((run.manifest or {}).get("starts") or [], 1):
        ended = f"{entry.get('outcome')}" + (f" ({entry['reason']})" if entry.get("reason") else "")
        if entry.get("ended"):
            ended += f", exit status {entry.get('exit_code')}, at epoch {entry.get('epoch')} on {_time(entry['ended'])}"
        began = f"{_time(entry.get('started'))} from epoch {entry.get('from_epoch')}"
        lines.append((f"start {number}", f"{began}: {ended}"))
    return lines


def _fingerprint(value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    what = (", ".join(f"{t['shape']} {t['dtype']}" for t in value.get("tensors", []))
            or f"{value.get('files')} files, {value.get('bytes')} bytes")
    return f"{what}, sha256 {str(value.get('sha256'))[:12]}{' (sampled)' if value.get('sampled') else ''}"


def _time(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else "-"


# ---- diff

def diff(a: Run, b: Run) -> None:
    """The config keys, environment entries and data fingerprints that differ: key: A's -> B's."""
    sections = [("config", differences(a.config, b.config))]
    unknown = [run.label for run in (a, b) if run.manifest is None]
    if not unknown:
        sections += [("environment", differences(a.environment(), b.environment())),
                     ("data", differences(flatten(a.data()), flatten(b.data())))]
    print(f"A: {a.label} ({a.checkpoint_dir})\nB: {b.label} ({b.checkpoint_dir})")
    for title, found in sections:
        print(f"{title}: " + ("the same" if not found else f"{len(found)} differ"))
        for key, value_a, value_b in found:
            print(f"  {key}: {_value(value_a)} -> {_value(value_b)}")
    if unknown:
        print(f"environment, data: unknown ({' and '.join(unknown)} {'has' if len(unknown) == 1 else 'have'} no "
              f"run.json)")


def _value(value: Any) -> str:
    return "(absent)" if value is MISSING else json.dumps(value)


# ---- plot

def plot(runs: Sequence[Run], metric: str, out: str | None) -> None:
    """A PNG of metric against the epoch, one line per run (label NAME/RUN_ID)."""
    curves = {run.label: [(row["epoch"], row[metric]) for row in run.epoch_rows
                          if isinstance(row.get(metric), (int, float)) and not isinstance(row.get(metric), bool)]
              for run in runs}
    if not any(curves.values()):
        keys = sorted({key for run in runs for row in run.epoch_rows for key, value in row.items()
                       if isinstance(value, (int, float)) and key not in ("epoch", "step")})
        raise UserError(f"--metric {metric!r}: no run given logged it.{did_you_mean(metric, keys)} Their metrics.jsonl "
                        f"hold: {', '.join(keys) or 'no epoch yet'}")
    for label, points in curves.items():
        if not points:
            print(f"{label} has no {metric} values; left out of the plot", file=sys.stderr)
    path = Path(out) if out else Path(f"{metric.replace('/', '_')}.png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazily: only plot needs matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for label, points in curves.items():
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend()
    try:
        figure.savefig(path, dpi=100, format="png")
    except OSError as e:
        why = f"--out {path}: cannot write the plot: {e.strerror}; give a file in a writable folder"
        raise UserError(why) from None
    print(f"Plot of {metric} for {len(runs)} run{'s' if len(runs) != 1 else ''} written to {path}")


if __name__ == "__main__":
    exit_cli(main)
