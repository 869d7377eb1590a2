"""stnbench-report: one table for a sweep folder (or all of outputs/), beside the papers' numbers.

Every run folder holds ``.hydra/config.yaml`` (the resolved config) and ``results.json`` (written by
stnbench-train, also for runs that failed, diverged, were pruned or interrupted). The table's unit is a
*configuration*: finished runs are grouped by everything they compute except the seed
(``stnbench.identity``), so runs that differ in learning rate, budget, schedule, checkpoint criterion or
distortion are never averaged together. Each row is named by its data and model choices plus the config
keys that tell it apart from rows of the same data and model; it gives mean ± std of the test error over
seeds (a seed run twice is flagged), the images it trained on, and the published error with our
difference only where the row is the paper's setting (``stnbench.published``: the paper's own model, its
data and training set, the full test set), always with the budget beside it; otherwise a short marker in
the cell and the reasons in the notes under the table. Columns that are empty in every row are left out,
and a row's ``configuration`` is never cut (the console wraps it). Written as report.md (with its pictures
embedded), report.csv, test_error.png, val_error.png (against steps), val_error_time.png (against seconds of
fitting), glimpses/*.png (labelled: run, model, each image's label and prediction) and, for an Optuna search,
the study's plots (``stnbench.optuna_plots``) into the folder, and printed. ``--optuna`` writes the study's
plots alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from stnbench.errors import USER_ERRORS
from stnbench.identity import ABSENT, Run, comparable, differences
from stnbench.identity import set_keys as command_keys
from stnbench.published import lookup, setting_differences
from stnbench.records import checkpoint_dir, read_results, stored_command, stored_config
from stnbench.run_folder import is_training

log = logging.getLogger("stnbench")
# Data with an end class (sequences of variable length): the count error, and where the test images hold other
# digit counts than the training ones, the errors on test digits at the training counts (stnbench.metrics).
VARIABLE_LENGTH = {"count_err": "test/count_err", "unordered_err": "test/unordered_err",
                   "train_counts_err": "test_train_counts/err",
                   "train_counts_digit_err": "test_train_counts/digit_err",
                   "train_counts_count_err": "test_train_counts/count_err",
                   "train_counts_unordered_err": "test_train_counts/unordered_err"}
VARIABLE_LENGTH_SHOWN = {"count_err": "count err %", "unordered_err": "err % in any order",
                         "train_counts_err": "test err % at training counts",
                         "train_counts_digit_err": "digit err % at training counts",
                         "train_counts_count_err": "count err % at training counts",
                         "train_counts_unordered_err": "err % in any order at training counts"}
COLUMNS = ["data", "model", "configuration", "runs", "seeds", "repeats", "test_err_mean", "test_err_std",
           "digit_err_mean", "digit_err_std",
           *[f"{name}_{stat}" for name in VARIABLE_LENGTH for stat in ("mean", "std")], "val_err_best_mean",
           "test_images", "images_seen", "published_err",
           "published_metric", "paper_images", "diff", "comparable", "source", "parameters", "fit_seconds_mean",
           "steps", "commit"]
RUN_COLUMNS = ["run_dir", "data", "model", "transform", "seed", "status", "error", "test_err", "digit_err",
               *VARIABLE_LENGTH,
               "val_err_best", "test_images", "images_seen", "parameters", "fit_seconds", "steps", "config", "run",
               "commit", "versions"]
PROVENANCE_SHOWN = ("provenance/stnbench", "provenance/torch", "provenance/lightning", "provenance/device")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def model_label(model: str | None, transform: str | None) -> str:
    return str(model) if _missing(transform) or not transform else f"{model}-{transform}"


def _is_training_run(config_path: Path) -> bool:
    try:
        return OmegaConf.load(config_path).get("task_name", "train") == "train"
    except Exception:  # an unreadable config still deserves a line in the report
        return True


def _started(config_path: Path) -> bool:
    """A training run that got as far as logging (a folder only ever claimed by a refused command has not)."""
    folder = config_path.parent.parent
    return _is_training_run(config_path) and ((folder / "train.log").is_file() or checkpoint_dir(folder).is_dir())


def _identity_run(folder: Path, results: dict) -> Run | None:
    """The run as stnbench.identity compares it: its stored resolved config and the keys its command set
    (results.json's computed config for folders without .hydra/); None when neither is there."""
    config = stored_config(folder)
    if config is None or any(key.startswith("<unreadable") for key in config):
        config = results.get("config")
    if not isinstance(config, dict):
        return None
    command = stored_command(folder)
    return Run(config, None if command is None else command_keys(*command))


def _images_seen(results: dict) -> int | None:
    """Training images the run's optimiser steps drew: steps x batch x ranks."""
    steps, batch = results.get("global_step"), results.get("choice/batch_size")
    if not isinstance(steps, int) or not isinstance(batch, int):
        return None
    return steps * batch * int(results.get("world_size") or 1)


def _run_rows(root: Path) -> list[dict]:
    """One row per run folder: those with results.json, and interrupted ones (a .hydra folder, no results)."""
    folders = {path.parent for path in root.rglob("results.json")}
    # Training runs that never wrote results; eval and gallery runs (task_name eval/gallery) are not runs.
    folders |= {path.parent.parent for path in root.rglob(".hydra/config.yaml") if _started(path)}
    rows = []
    for folder in sorted(folders):
        results = read_results(folder)
        if results is None:
            results = ({"status": "failed", "error": "unreadable results.json"} if (folder / "results.json").exists()
                       else {"status": "unfinished", "error": "no results.json (interrupted or still running)"})
        if results.get("status") != "finished" and is_training(folder):  # its results.json is an earlier attempt's
            results = {**results, "status": "running", "error": "training now; run the report again when it ends"}
        rows.append({
            "run_dir": str(folder),
            "data": results.get("choice/data"),
            "model": results.get("choice/model"),
            "transform": results.get("choice/transform"),
            "seed": results.get("choice/seed"),
            "status": results.get("status", "unknown"),
            "error": results.get("error"),
            "test_err": results.get("test/err"),
            "digit_err": results.get("test/digit_err"),
            **{name: results.get(key) for name, key in VARIABLE_LENGTH.items()},
            "val_err_best": results.get("val/err_best"),
            "test_images": results.get("test_images"),
            "images_seen": _images_seen(results),
            "parameters": results.get("parameters"),
            "fit_seconds": results.get("fit_seconds"),
            "steps": results.get("global_step"),
            "config": results.get("config"),
            "run": _identity_run(folder, results),
            "commit": _commit(results),
            "versions": ", ".join(f"{key.split('/')[1]} {results[key]}" for key in PROVENANCE_SHOWN
                                  if results.get(key)),
        })
    return rows


def _commit(results: dict) -> str | None:
    """``abc12345`` (``+dirty`` when the checkout had uncommitted changes): the code that made the run."""
    commit = results.get("provenance/git_commit")
    return None if not commit else commit[:8] + ("+dirty" if results.get("provenance/git_dirty") else "")


def collect(root: str | Path) -> pd.DataFrame:
    """All runs under ``root`` (a sweep folder, outputs/, or one run folder)."""
    frame = pd.DataFrame(_run_rows(Path(root)), columns=RUN_COLUMNS)
    frame["label"] = [model_label(m, t) for m, t in zip(frame["model"], frame["transform"], strict=True)]
    frame["configuration"] = configuration_ids(frame)
    return frame


def configuration_ids(runs: pd.DataFrame) -> list[int]:
    """A number per run, equal for runs of one configuration: no stnbench.identity difference but the seed.
    Runs without a stored config (made before stnbench kept one) each get their own."""
    representatives: list[Run] = []
    ids = []
    for run in runs["run"]:
        if run is None:
            representatives.append(Run({}))
            ids.append(len(representatives) - 1)
            continue
        same = next((i for i, other in enumerate(representatives)
                     if other.config and not differences(other, run, across_seeds=True)), None)
        if same is None:
            representatives.append(run)
            same = len(representatives) - 1
        ids.append(same)
    return ids


def _tested(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs["status"] == "finished") & runs["test_err"].notna()]


def configuration_names(runs: pd.DataFrame) -> dict[int, str]:
    """Configuration id -> the keys that tell it apart from the other configurations of the same data and
    model, as ``key=value, ...`` (empty when it is the only one)."""
    tested = _tested(runs)
    firsts = tested.drop_duplicates("configuration")
    names: dict[int, str] = {}
    for _, group in firsts.groupby(["data", "label"], dropna=False, sort=False):
        flat = {row.configuration: comparable(row.run.config, across_seeds=True) if row.run is not None else {}
                for row in group.itertuples()}
        keys = sorted(set().union(*flat.values()))
        shown = [k for k in keys if len({json.dumps(c.get(k, ABSENT), default=str) for c in flat.values()}) > 1]
        for number, config in flat.items():
            names[number] = ", ".join(f"{k}={_short(config.get(k, ABSENT))}" for k in shown)
    return names


def _short(value) -> str:
    """Config values as a row name shows them: floats with 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def row_name(label: str, configuration: str) -> str:
    return f"{label} ({configuration})" if configuration else label


def _round(value, digits: int = 2):
    return None if _missing(value) else round(float(value), digits)


def _mean_or_none(values: pd.Series, digits: int = 2):
    return _round(values.mean(), digits) if values.notna().any() else None


def _std_or_none(values: pd.Series):
    return _round(values.std(ddof=1)) if values.notna().sum() > 1 else None


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of finished, tested runs, one row per configuration, with the published number."""
    names = configuration_names(runs)
    rows = []
    for (data, label, number), group in _tested(runs).groupby(["data", "label", "configuration"], sort=True):
        first = group.iloc[0]
        transform = None if _missing(first["transform"]) else first["transform"]
        published = lookup(data, first["model"], transform)
        test_images = group["test_images"].min() if group["test_images"].notna().any() else None
        differences_found = (setting_differences(published, data, first["run"].config if first["run"] else None,
                                                 None if test_images is None else int(test_images))
                             if published else [])
        comparable = published is not None and not differences_found
        metric_column = "digit_err" if published is not None and published.metric == "test/digit_err" else "test_err"
        seeds = group["seed"].dropna().tolist()
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        commits = sorted(set(group["commit"].dropna()))
        rows.append({
            "data": data,
            "model": label,
            "configuration": names.get(number, ""),
            "commit": commits[0] if len(commits) == 1 else (f"mixed ({len(commits)})" if commits else None),
            "runs": len(group),
            "seeds": len(set(seeds)),
            "repeats": ", ".join(f"seed {s} x{seeds.count(s)}" for s in repeated),
            "test_err_mean": _round(group["test_err"].mean()),
            "test_err_std": _std_or_none(group["test_err"]),
            "digit_err_mean": _mean_or_none(group["digit_err"]),
            "digit_err_std": _std_or_none(group["digit_err"]),
            **{f"{name}_{stat}": summary(group[name]) for name in VARIABLE_LENGTH
               for stat, summary in (("mean", _mean_or_none), ("std", _std_or_none))},
            "val_err_best_mean": _mean_or_none(group["val_err_best"]),
            "test_images": None if test_images is None else int(test_images),
            "images_seen": int(group["images_seen"].max()) if group["images_seen"].notna().any() else None,
            "published_err": published.err if comparable else None,
            "published_metric": published.metric if comparable else None,
            "paper_images": published.setting.images_seen if comparable else None,
            "source": published.source if comparable else None,
            "diff": _round(group[metric_column].mean() - published.err) if comparable else None,
            "comparable": ("yes" if comparable else "not comparable: " + "; ".join(differences_found)) if published
            else "",
            "parameters": int(first["parameters"]) if pd.notna(first["parameters"]) else None,
            "fit_seconds_mean": _round(group["fit_seconds"].mean(), 1),
            "steps": int(group["steps"].max()) if group["steps"].notna().any() else None,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def failures(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish (pruned trials are listed on their own, see ``pruned``)."""
    return runs[~runs["status"].isin(("finished", "pruned"))][["run_dir", "status", "error"]]


def pruned(runs: pd.DataFrame) -> pd.DataFrame:
    """Optuna trials stopped early by the pruner: outcomes of a search, not results."""
    return runs[runs["status"] == "pruned"][["run_dir", "status", "error"]]


def untested(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs without a test result (test_after_fit=false, debug=fast_dev_run): no row, but listed."""
    return runs[(runs["status"] == "finished") & runs["test_err"].isna()][["run_dir", "status", "error"]]


def _cell(value) -> str:
    return "" if _missing(value) else str(value)


def _mean_std(mean, std) -> str:
    """'1.23 ± 0.45'; the spread is left out for a single seed, everything for a missing mean."""
    return "" if _missing(mean) else f"{mean:.2f}" + ("" if _missing(std) else f" ± {std:.2f}")


def _images(seen, paper) -> str:
    """Training images of a row, and the share of the paper's budget they are where it is known."""
    if _missing(seen):
        return ""
    text = f"{seen / 1e6:.2f}M" if seen >= 1e5 else f"{int(seen):,}"
    return text + ("" if _missing(paper) else f" ({100 * seen / paper:.2g} % of the paper's)")


def notes(table: pd.DataFrame) -> list[str]:
    """Why each row with a published number is not the paper's setting, one note per row."""
    return [f"{row_name(row.model, _cell(row.configuration))} on {row.data}: {row.comparable.split(': ', 1)[1]}"
            for row in table.itertuples() if str(row.comparable).startswith("not comparable")]


ALWAYS_SHOWN = ("data", "model")


def display_table(table: pd.DataFrame, drop_empty: bool = True) -> pd.DataFrame:
    """The table as people read it: 'mean ± std', budgets, and the published number with its metric; a row
    that is not the paper's setting shows 'n/c [k]', k the number of its note under the table. ``drop_empty``:
    leave out the columns that are empty in every row (``digit err %`` of single-digit data, ``published %``
    where no row has a published number, ...)."""
    markers, k = [], 0
    for value, verdict in zip(table["diff"], table["comparable"], strict=True):
        if str(verdict).startswith("not comparable"):
            k += 1
            markers.append(f"n/c [{k}]")
        else:
            markers.append(_cell(value))
    shown = pd.DataFrame({
        "data": table["data"],
        "model": table["model"],
        "configuration": [_cell(v) for v in table["configuration"]],
        "runs": table["runs"],
        "seeds": [f"{n}" + (f" ({r})" if r else "") for n, r in zip(table["seeds"], table["repeats"], strict=True)],
        "test err % (mean ± std)": [_mean_std(m, s) for m, s
                                    in zip(table["test_err_mean"], table["test_err_std"], strict=True)],
        "digit err %": [_mean_std(m, s) for m, s in zip(table["digit_err_mean"], table["digit_err_std"], strict=True)],
        **{shown: [_mean_std(m, s) for m, s in zip(table[f"{name}_mean"], table[f"{name}_std"], strict=True)]
           for name, shown in VARIABLE_LENGTH_SHOWN.items()},
        "val err best %": [_cell(v) for v in table["val_err_best_mean"]],
        "test images": ["" if _missing(v) else f"{int(v):,}" for v in table["test_images"]],
        "trained on": [_images(s, p) for s, p in zip(table["images_seen"], table["paper_images"], strict=True)],
        "published %": [_cell(v) + (" (digit)" if m == "test/digit_err" else "")
                        for v, m in zip(table["published_err"], table["published_metric"], strict=True)],
        "diff": markers,
        "parameters": ["" if _missing(v) else f"{int(v):,}" for v in table["parameters"]],
        "fit s": [_cell(v) for v in table["fit_seconds_mean"]],
        "steps": [_cell(v) for v in table["steps"]],
        "commit": [_cell(v) for v in table["commit"]],
    })
    if not drop_empty or shown.empty:
        return shown
    return shown[[c for c in shown.columns if c in ALWAYS_SHOWN or shown[c].astype(str).str.strip().ne("").any()]]


def _listing(title: str, frame: pd.DataFrame, explain: str = "") -> list[str]:
    if frame.empty:
        return []
    lines = [f"## {title}", ""] + ([explain, ""] if explain else [])
    lines += [f"- `{row.run_dir}` ({row.status})" + (f": {row.error}" if row.error else "")
              for row in frame.itertuples()]
    return lines + [""]


def to_markdown(table: pd.DataFrame, failed: pd.DataFrame, root: Path, runs: pd.DataFrame | None = None,
                pictures: list[str] | None = None) -> str:
    lines = [f"# stnbench report: `{root}`", ""]
    if table.empty:
        lines.append("No finished runs.")
    else:
        lines.append(display_table(table).to_markdown(index=False))
    row_notes = notes(table) if not table.empty else []
    if row_notes:
        lines += ["", "Not the paper's setting (`n/c`):", ""] + [f"{k}. {note}" for k, note in
                                                                 enumerate(row_notes, 1)]
    lines += ["", "One row per configuration (everything a run computes except its seed); `configuration` names the "
              "keys that tell rows of the same data and model apart. A published number and `diff` appear only "
              "where the row is the paper's setting: its model, data and training set, and the full test set; "
              "`trained on` says how many training images the row's runs drew and what share of the paper's "
              "budget that is.",
              "", "`diff` = ours − published (percentage points; negative is better than the paper; a published "
              "per-digit error is compared with our digit error)."]
    sources = list(dict.fromkeys(table["source"].dropna())) if "source" in table else []
    lines += ["", "Published numbers: " + "; ".join(sources) + "." if sources else "", ""]
    if runs is not None and runs["versions"].astype(bool).any():
        seen = sorted(set(runs.loc[runs["status"] == "finished", "versions"].dropna()) - {""})
        lines += ["Made with: " + " | ".join(seen) + "; `commit`: the stnbench checkout of each row's runs.", ""]
    if runs is not None:
        lines += _listing("Finished without a test result", untested(runs),
                          "Trained, but not tested (`test_after_fit=false` or `debug=fast_dev_run`): no row.")
        lines += _listing("Pruned trials", pruned(runs), "Stopped early by the Optuna pruner: not results.")
    lines += _listing("Runs that did not finish", failed)
    lines += pictures or []
    return "\n".join(lines)


def _link(path: Path, root: Path) -> str:
    """A picture's address relative to report.md (which lies in ``root``), safe in a Markdown link."""
    from urllib.parse import quote

    return quote(path.relative_to(root).as_posix(), safe="/=,+-._~")


PICTURE_TITLES = {"test_error.png": ("Test error", "test error per configuration (bars: mean ± std over seeds; "
                                                    "black ticks: published, only for the paper's setting)"),
                  "val_error.png": ("Validation error against steps", "validation error against optimiser steps"),
                  "val_error_time.png": ("Validation error against time", "validation error against seconds of "
                                                                          "fitting")}


def picture_sections(root: Path, written: list[Path], glimpses_skipped: str = "",
                     optuna_note: str = "") -> list[str]:
    """report.md's pictures, embedded with links relative to it: the plots, each model's glimpses and an Optuna
    search's study; the line that says why glimpses (or study plots) are missing where they are."""
    lines: list[str] = []
    pngs = [path for path in written if path.suffix == ".png"]
    for path in pngs:
        if path.parent == root and path.name in PICTURE_TITLES:
            title, alt = PICTURE_TITLES[path.name]
            lines += [f"## {title}", "", f"![{alt}]({_link(path, root)})", ""]
    glimpses = [path for path in pngs if path.parent == root / "glimpses"]
    if glimpses or glimpses_skipped:
        lines += ["## Glimpses", ""]
        lines += ["Each model's best checkpoint on the same test images: per image the input with each glimpse's "
                  "outline (colour = step), then the glimpses, under the true label and the prediction (green: "
                  "right, red: wrong). Models without a spatial transformer have none.", ""] if glimpses else []
        for path in glimpses:
            lines += [f"### {path.stem}", "", f"![glimpses of {path.stem}]({_link(path, root)})", ""]
        lines += [glimpses_skipped, ""] if glimpses_skipped else []
    study = [path for path in pngs if path.name.startswith("optuna_")]
    if study or optuna_note:
        lines += ["## Optuna study", ""]
        lines += [f"![{path.stem.removeprefix('optuna_').replace('_', ' ')}]({_link(path, root)})" for path in study]
        lines += ["", optuna_note, ""] if optuna_note else [""]
    return lines


# ---- plots ------------------------------------------------------------------------------------------------
def plot_test_error(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = table.assign(name=[row_name(m, c) for m, c in zip(table["model"], table["configuration"], strict=True)])
    datasets, models = list(dict.fromkeys(table["data"])), list(dict.fromkeys(table["name"]))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(datasets) * max(1, len(models)) ** 0.5), 4))
    for i, model in enumerate(models):
        rows = table[table["name"] == model].set_index("data")
        xs = [d + (i - (len(models) - 1) / 2) * width for d in range(len(datasets))]
        means = [rows["test_err_mean"].get(d, float("nan")) for d in datasets]
        stds = [rows["test_err_std"].get(d) for d in datasets]
        stds = [0.0 if s is None or (isinstance(s, float) and math.isnan(s)) else s for s in stds]
        ax.bar(xs, means, width, yerr=stds, label=model, capsize=2)
        published = [float("nan") if _missing(p) else p for p in (rows["published_err"].get(d) for d in datasets)]
        ticks = ax.scatter(xs, published, marker="_", s=200, color="k")
        if not all(math.isnan(p) for p in published):
            ticks.set_label("published (the paper's setting only)")
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("test error %  (black: published)")
    handles, labels = ax.get_legend_handles_labels()
    shown = dict(zip(labels, handles, strict=True))  # the published ticks once
    # Outside the axes, right of them: a legend inside would cover bars and the published ticks.
    ax.legend(shown.values(), shown.keys(), fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
              borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def validation_curve(run_dir: str | Path) -> list[tuple[int, float, float]]:
    """(step, seconds of fitting, val/err) of a run: from its TensorBoard events (in the run folder or an
    older run's tensorboard/ subfolder), else from a CSV logger's metrics.csv. Seconds are the run's own
    ``time/fit_seconds`` (stnbench.callbacks.FitClock: summed over resumed segments, stops excluded); runs
    made before it was logged fall back to event times since the first logged point, NaN in a CSV without it."""
    run_dir = Path(run_dir)
    events = sorted(p for p in run_dir.glob("**/events.out.tfevents.*") if "eval" not in p.relative_to(run_dir).parts)
    if events:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        points: dict[int, tuple[float, float]] = {}
        clock: dict[int, float] = {}
        first = float("inf")
        for event_file in events:  # a resumed run writes a second events file into the same folder
            accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
            accumulator.Reload()
            tags = accumulator.Tags().get("scalars", [])
            for tag in tags:
                first = min([first] + [e.wall_time for e in accumulator.Scalars(tag)][:1])
            if "val/err" in tags:
                points.update({e.step: (e.wall_time, e.value) for e in accumulator.Scalars("val/err")})
            if "time/fit_seconds" in tags:
                clock.update({e.step: e.value for e in accumulator.Scalars("time/fit_seconds")})
        if points:
            return [(step, clock.get(step, wall - first), value) for step, (wall, value) in sorted(points.items())]
    for csv in run_dir.glob("csv/**/metrics.csv"):
        frame = pd.read_csv(csv)
        if "val/err" in frame:
            frame = frame.dropna(subset=["val/err"])
            seconds = frame["time/fit_seconds"] if "time/fit_seconds" in frame else [math.nan] * len(frame)
            return [(int(step), float(sec), float(err))
                    for step, sec, err in zip(frame["step"], seconds, frame["val/err"], strict=True)]
    return []


def _log_scale_if_wide(ax) -> None:
    """A log error axis where the curves span more than a factor of 5 (chance at the start, a few % at the
    end), so that the last epochs, where the runs of a study differ, are not squeezed against the floor."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ys = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
    if not ys or max(ys) / min(ys) <= 5:
        return
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_validation(runs: pd.DataFrame, path: Path, against: str = "step") -> int:
    """Validation error of every finished run against optimiser steps or wall-clock seconds (where a faster
    model shows as faster), one panel per dataset, one colour per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = configuration_names(runs)
    finished = _tested(runs)
    finished = finished.assign(label=[row_name(r.label, names.get(r.configuration, ""))
                                      for r in finished.itertuples()])
    datasets = list(dict.fromkeys(finished["data"]))
    panels = max(1, len(datasets))
    colours = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(finished["label"]))}
    # taller by a line per legend entry, which sits below the panel
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.5 + 0.2 * len(colours)), squeeze=False)
    curves = 0
    for ax, data in zip(axes[0], datasets, strict=False):
        seen = set()
        for row in finished[finished["data"] == data].itertuples():
            curve = validation_curve(row.run_dir)
            xs = [point[0] if against == "step" else point[1] for point in curve]
            if not curve or any(math.isnan(x) for x in xs):
                continue
            ax.plot(xs, [point[2] for point in curve], color=colours[row.label], marker=".",
                    label=None if row.label in seen else row.label)
            seen.add(row.label)
            curves += 1
        ax.set_title(data)
        ax.set_xlabel("step" if against == "step" else "seconds of fitting")
        ax.set_ylabel("validation error %")
        ax.locator_params(axis="x", nbins=5)  # five-digit step counts side by side run into each other
        _log_scale_if_wide(ax)
        if ax.get_legend_handles_labels()[0]:
            # below the panel: inside it, the legend covers the first epochs' points of long labels
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    with warnings.catch_warnings():  # a legend wider than the panels: tight_layout gives up, bbox_inches copes
        warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
        fig.tight_layout()  # spacing between the panels; bbox_inches takes in the legends below them
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return curves


# ---- entry point ------------------------------------------------------------------------------------------
def report(root: str | Path, plots: bool = True) -> dict:
    """Write report.md / report.csv (+ PNGs) into ``root``; returns the tables for callers and tests."""
    root = Path(root)
    if not root.is_dir():
        raise SystemExit(f"stnbench-report: error: '{root}' is not a folder (give a sweep folder or outputs)")
    runs = collect(root)
    if runs.empty:
        raise SystemExit(f"stnbench-report: error: no runs under '{root}' (no results.json, no .hydra)")
    table, failed = summarise(runs), failures(runs)
    table.to_csv(root / "report.csv", index=False)
    written = [root / "report.md", root / "report.csv"]
    skipped = optuna_note = ""
    if plots and not table.empty:
        plot_test_error(table, root / "test_error.png")
        written.append(root / "test_error.png")
        for against, name in (("step", "val_error.png"), ("seconds", "val_error_time.png")):
            if plot_validation(runs, root / name, against):
                written.append(root / name)
        glimpses, skipped = glimpse_pictures(root)
        written += glimpses
    if plots and (root / "optuna.journal").is_file():  # an Optuna search: its study's plots too
        study_plots, optuna_note = optuna_pictures(root)
        written += study_plots
    pictures = picture_sections(root, written, skipped, optuna_note)
    (root / "report.md").write_text(to_markdown(table, failed, root, runs, pictures))
    return {"runs": runs, "table": table, "failed": failed, "written": written}


def optuna_pictures(root: Path) -> tuple[list[Path], str]:
    """The study plots of the Optuna search whose journal is in ``root`` (stnbench.optuna_plots), and the line
    that says why there are none when the journal cannot be drawn."""
    from stnbench.optuna_plots import NoStudy, load_study, write_study_plots

    try:
        return write_study_plots(load_study(root), root), ""
    except NoStudy as error:
        log.warning("Optuna plots skipped: %s", error)
        return [], f"Optuna plots skipped: {error}"


def optuna_report(root: str | Path, study: str | None = None) -> dict:
    """``stnbench-report --optuna``: only the study plots of the search in ``root``, and its trials."""
    from stnbench.optuna_plots import NoStudy, load_study, trial_lines, write_study_plots

    root = Path(root)
    try:
        loaded = load_study(root, study)
    except NoStudy as error:
        raise SystemExit(f"stnbench-report: error: {error}") from None
    target = root if root.is_dir() else root.parent
    return {"trials": trial_lines(loaded), "written": write_study_plots(loaded, target)}


def glimpse_pictures(root: Path) -> tuple[list[Path], str]:
    """Each model's glimpses in step order, on the same test images (glimpses/<run>.png), and the one line
    that says why there are none when the test images cannot be made here (no MNIST, say)."""
    from stnbench.glimpses import write_sweep_glimpse_pictures

    try:
        return [path for path in write_sweep_glimpse_pictures(root).values() if path is not None], ""
    except (*USER_ERRORS, OSError) as error:
        reason = f"Glimpse pictures skipped: {error}"
        log.warning(reason)
        return [], reason


CONFIGURATION_WIDTH = 60  # the console wraps a longer configuration onto more lines of its row
HEADER_WIDTH = 12  # a longer header wraps between its words


def console_widths(shown: pd.DataFrame) -> dict[str, int]:
    """Each console column as wide as its longest cell (and its header, up to HEADER_WIDTH), the configuration
    at most CONFIGURATION_WIDTH: no number, name or commit is ever folded, and nothing is cut."""
    widths = {}
    for column in shown.columns:
        longest = max([len(str(value)) for value in shown[column]] + [0])
        header = max([min(len(column), HEADER_WIDTH)] + [len(word) for word in str(column).split()])
        widths[column] = max(header, min(longest, CONFIGURATION_WIDTH) if column == "configuration" else longest)
    return widths


def print_report(result: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    shown = display_table(result["table"])
    widths = console_widths(shown)
    # The console is as wide as the table needs (borders and padding: 3 characters a column), so nothing is
    # ever cut; a configuration wraps inside its column, and rows are then ruled apart so it reads as one.
    console = Console(width=max(Console().width, 1 + sum(width + 3 for width in widths.values())))
    ruled = "configuration" in shown and any(len(str(v)) > CONFIGURATION_WIDTH for v in shown["configuration"])
    table = Table(title="test error over seeds (published: the papers' numbers)", show_lines=ruled)
    for column in shown.columns:
        table.add_column(column, justify="left" if column in ("data", "model", "configuration") else "right",
                         overflow="fold", width=widths[column])
    for row in shown.itertuples(index=False):
        table.add_row(*[Text(str(v)) for v in row])  # as text: a config value such as [a, b] is not markup
    console.print(table)
    for k, note in enumerate(notes(result["table"]) if not result["table"].empty else [], 1):
        console.print(f"n/c [{k}]: {note}", markup=False)  # why a row is not set beside the paper's number
    for row in result["failed"].itertuples():
        console.print(f"[red]{escape(str(row.status))}[/red] {escape(str(row.run_dir))}: {escape(str(row.error))}")
    console.print("wrote " + ", ".join(str(p) for p in result["written"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stnbench-report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="outputs", help="a sweep folder, or outputs/ (default)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--optuna", action="store_true",
                        help="only the Optuna study's plots (optuna_*.png) from the folder's optuna.journal; the "
                             "report draws them anyway when the folder holds one")
    parser.add_argument("--study", help="with --optuna: the study's name, where the journal holds several")
    args = parser.parse_args(argv)
    if args.optuna:
        result = optuna_report(args.folder, args.study)
        print("\n".join(result["trials"]))
        print("wrote " + ", ".join(str(p) for p in result["written"]) if result["written"]
              else "no finished or reporting trial yet: nothing to plot")
        return
    print_report(report(args.folder, plots=not args.no_plots))


if __name__ == "__main__":
    main()
