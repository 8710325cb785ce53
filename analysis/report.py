"""A comparison report (markdown and HTML, table and figures) from a folder of runs.

``python -m analysis FOLDER`` writes, next to the runs (or into ``--out``):

- ``summary.md`` and ``summary.html``: the table (final test accuracy mean ± 95% interval over
  seeds; for regression runs R^2 and RMSE, wall time per epoch, peak memory, FLOPs per sample, parameters), the alignment and CKA
  tables when recorded, the notes on failed or partial runs, and the figures;
- ``comparison.png`` (learning curves with seed bands + final accuracy with intervals),
  ``pareto.png`` (accuracy vs wall time and vs FLOPs, Pareto front), ``memory.png``,
  ``blocks.png`` (per-block metrics over epochs), ``alignment.png`` and ``cka.png`` when recorded,
  ``continual.png`` when the runs hold an accuracy matrix (`analysis.continual`).

Every number comes from the result files; the report regenerates from them with the same command.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from analysis.collect import UNSET, collect  # noqa: E402
from analysis.plots import (accuracy_vs_cost, alignment_figure, cka_bars,  # noqa: E402
                            comparison_figure, final_epoch, grid_figure, per_block_variables, peak_memory,
                            save_single, set_learner_order)
from analysis.stats import mean_and_interval, metric_bounds  # noqa: E402

# dims that are not run keys: everything else besides learner and seed is a swept variant
_DATA_DIMS = ("learner", "seed", "epoch", "split", "block", "trained_task", "eval_task", "task", "layer")


def variants_as_learners(ds: xr.Dataset) -> xr.Dataset:
    """Fold swept dims other than ``seed`` into the ``learner`` dim, labelled ``"name (key=value)"``.

    The figures and table then show one entry per learner and setting, with seeds as the spread.
    A single-learner folder gets a ``learner`` dim of length 1.
    """
    if "learner" not in ds.dims:
        name = str(ds["learner"].item()) if "learner" in ds.coords else "run"
        ds = ds.drop_vars("learner", errors="ignore").expand_dims(learner=[name])
    extra = [d for d in ds.dims if d not in _DATA_DIMS]
    if not extra:
        return ds
    stacked = ds.stack(_setting=["learner", *extra])      # not "variant": a swept key may have that name
    settings = [tuple(values) for values in stacked["_setting"].values]
    labels = [_label(name, extra, rest, short=True) for name, *rest in settings]
    if len(set(labels)) < len(labels):                     # shortening merged two settings: keep them whole
        labels = [_label(name, extra, rest, short=False) for name, *rest in settings]
    stacked = stacked.drop_vars(["_setting", "learner", *extra]).assign_coords(_setting=labels)
    stacked = stacked.rename(_setting="learner")
    # drop variants that no run filled (an outer join of unequal sweeps)
    filled = stacked[primary_metric(stacked)]
    keep = filled.notnull().any([d for d in filled.dims if d != "learner"])
    return stacked.sel(learner=keep.values)


_LABEL_VALUE_CHARS = 24


def _label(name, keys, values, *, short: bool) -> str:
    """``"learner (key=value, ...)"`` from the keys this run set. ``short``: without the prefixes that
    the learner's name already says (``learner.``, ``learner_overrides.<name>.``), and long values
    (a whole optimizer block) cut, so that legends and axis labels stay readable."""
    pairs = [(key, str(value)) for key, value in zip(keys, values) if value != UNSET]
    if short:
        cut = [(key.removeprefix(f"learner_overrides.{name}.").removeprefix("learner."),
                value if len(value) <= _LABEL_VALUE_CHARS else value[:_LABEL_VALUE_CHARS - 1] + "…")
               for key, value in pairs]
        if len({key for key, _ in cut}) == len(cut):      # two keys may not shorten to one name
            pairs = cut
    parts = [f"{key}={value}" for key, value in pairs]
    return f"{name} ({', '.join(parts)})" if parts else str(name)


def primary_metric(ds) -> str:
    """``accuracy`` for classification runs, ``r2`` for regression runs (which record r2 and rmse)."""
    for metric in ("accuracy", "r2"):
        if metric in ds:
            return metric
    from core.errors import DataError
    raise DataError(f"the runs under {ds.attrs.get('source', 'this folder')} record neither accuracy nor r2: "
                    "are these altlearn result files?")


def _n_train(ds) -> float:
    if "n_train" in ds:
        return ds["n_train"]
    return float(ds.attrs.get("n_train", 1))


def summary_rows(ds) -> list[dict]:
    """One row per learner: final test accuracy (regression: R^2 and RMSE) mean and 95%
    half-interval, cost columns."""
    ds = variants_as_learners(ds)
    metric = primary_metric(ds)
    acc = final_epoch(ds[metric].sel(split="test"))
    rmse = final_epoch(ds["rmse"].sel(split="test")) if metric == "r2" and "rmse" in ds else None
    flops_per_sample = ds["flops"].where(ds["flops"] > 0).mean("epoch") / _n_train(ds)
    rows = []
    for name in [str(v) for v in ds["learner"].values]:
        def sel(da):
            return da.sel(learner=name) if "learner" in da.dims else da
        row = {"learner": name, "metric": metric}
        mean, lo, hi = mean_and_interval(sel(acc), "seed", bounds=metric_bounds(metric))
        row["test_acc"] = float(mean)
        row["ci95"] = float(hi - mean)
        row["ci_low"], row["ci_high"] = float(lo), float(hi)
        row["n_seeds"] = int(sel(acc).count())
        if rmse is not None:
            mean, lo, hi = mean_and_interval(sel(rmse), "seed")
            row["test_rmse"], row["rmse_ci95"] = float(mean), float(hi - mean)
        row["s_per_epoch"] = float(sel(ds["wall_time"]).mean())
        row["epochs"] = int(sel(ds["wall_time"]).notnull().any([d for d in sel(ds["wall_time"]).dims
                                                               if d != "epoch"]).sum())
        row["flops_per_sample"] = float(sel(flops_per_sample).mean())
        memory = sel(ds["peak_memory_total"]) if "peak_memory_total" in ds else sel(ds["peak_memory"]).max("epoch")
        if not np.isfinite(memory.values).any() and "peak_memory" in ds:
            memory = sel(ds["peak_memory"]).max("epoch")       # a run cut short leaves no total
        row["peak_mem_mb"] = float(memory.mean()) / 2**20
        params = np.atleast_1d(sel(ds["n_parameters"]).values)
        row["params"] = int(np.nanmean(params)) if np.isfinite(params).any() else 0
        rows.append(row)
    return rows


def _fmt_flops(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def markdown_table(rows: list[dict]) -> str:
    """Classification rows: test accuracy in %; regression rows (``metric == "r2"``): R^2 and RMSE."""
    regression = bool(rows) and rows[0].get("metric") == "r2"
    score = ("test R^2 (mean ± 95% CI) | test RMSE (mean ± 95% CI)" if regression
             else "test accuracy (%, mean ± 95% CI)")
    lines = [f"| learner | {score} | seeds | s / epoch | peak memory (MiB) | FLOPs / sample / epoch | parameters |",
             "|---|---|---|---|---|---|---|" + ("---|" if regression else "")]

    def interval(mean, half, scale=1.0, digits=2):
        return f"{scale * mean:.{digits}f} ± {scale * half:.{digits}f}" if np.isfinite(mean) else "n/a"

    for r in rows:
        if regression:
            cells = (interval(r["test_acc"], r["ci95"], digits=3) + " | " +
                     interval(r.get("test_rmse", np.nan), r.get("rmse_ci95", np.nan), digits=3))
        elif np.isfinite(r.get("ci_low", np.nan)) and \
                not np.isclose(r["ci_high"] - r["test_acc"], r["test_acc"] - r["ci_low"]):
            # clipped at 0 or 100%: the interval as its two ends
            cells = f"{100 * r['test_acc']:.2f} [{100 * r['ci_low']:.2f}, {100 * r['ci_high']:.2f}]"
        else:
            cells = interval(r.get("test_acc", np.nan), r.get("ci95", np.nan), scale=100)
        memory = f"{r['peak_mem_mb']:.0f}" if np.isfinite(r["peak_mem_mb"]) else "n/a"
        lines.append(f"| {r['learner']} | {cells} | {r.get('n_seeds', '')} | {r['s_per_epoch']:.2f} | "
                     f"{memory} | {_fmt_flops(r.get('flops_per_sample', np.nan))} | {r['params']} |")
    return "\n".join(lines)


def per_block_table(ds: xr.Dataset, var: str, *, header: str, final: bool = True) -> str:
    """Markdown: ``var`` per learner and block at the last epoch, mean ± 95% CI over seeds."""
    if var not in ds or not np.isfinite(ds[var].values).any():
        return ""
    da = final_epoch(ds[var]) if final else ds[var]
    # only the blocks this variable has (the block dim spans the deepest learner of the folder)
    blocks = [int(b) for b in da["block"].values if np.isfinite(da.sel(block=b).values).any()]
    lines = ["| learner | " + " | ".join(f"{header} block {b}" for b in blocks) + " |",
             "|---|" + "---|" * len(blocks)]
    for name in [str(v) for v in ds["learner"].values]:
        sub = da.sel(learner=name)
        if not np.isfinite(sub.values).any():
            continue
        cells = []
        for b in blocks:
            mean, lo, hi = mean_and_interval(sub.sel(block=b), "seed")
            cells.append(f"{float(mean):.3f} ± {float(hi - mean):.3f}" if np.isfinite(float(mean)) else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_title(raw: xr.Dataset, budgets: list[str]) -> str:
    """``dataset, network, budget`` when the runs share them: what a figure shows, not where it lies."""
    parts = []
    for key in ("dataset", "network"):
        if key in raw.coords and raw.coords[key].ndim == 0:
            parts.append(str(raw.coords[key].item()))
    if len(budgets) == 1:
        parts.append(budgets[0])
    return ", ".join(parts)


def run_budgets(folder: Path) -> list[str]:
    """The distinct budgets (``attrs["budget"]``) the runs under ``folder`` were trained with."""
    from experiments.recording import read_results
    seen = []
    for path in sorted(Path(folder).rglob("results.nc")):
        budget = read_results(path).attrs.get("budget")
        if budget and budget not in seen:
            seen.append(budget)
    return seen


def find_tuning(folder: Path) -> Path | None:
    """The ``tuning.yaml`` of an ``altlearn tune`` folder, when ``folder`` is it or its ``final/``."""
    for place in (folder, folder.parent):
        if (place / "tuning.yaml").is_file():
            return place / "tuning.yaml"
    return None


def tuning_section(path: Path, out_dir: Path) -> str:
    """Markdown: the tuning budget, each learner's chosen setting with its validation score, the cost
    of tuning beside the final runs', and ``tuning.png`` (best so far against trial)."""
    import yaml

    from analysis.plots import tuning_curves
    summary = yaml.safe_load(path.read_text()) or {}
    settings, learners = summary.get("settings", {}), summary.get("learners", {})
    if not learners:
        return ""
    lines = ["## Tuning", "",
             f"Every learner: {settings.get('budget')} trials ({settings.get('sampler')} sampler, seed "
             f"{settings.get('seed')}) over its declared search space, chosen on the validation split "
             f"({settings.get('objective')}); the test split is not evaluated while tuning. Final runs: "
             f"seeds {settings.get('final_seeds')} at the chosen setting.", "",
             "| learner | trials | best val | chosen setting | tuning: training s | final runs: training s |",
             "|---|---|---|---|---|---|"]
    for name, study in learners.items():
        cost = sum(t.get("train_time") or 0.0 for t in study["trials"])
        chosen = ", ".join(f"{k}={_short(v)}" for k, v in study["chosen"].items())
        lines.append(f"| {name} | {study['n_trials']} | {100 * study['best_value']:.2f} | {chosen} | "
                     f"{cost:.1f} | {study.get('final_train_time', float('nan')):.1f} |")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tuning_curves(learners, ax)
    ax.set_title("Tuning: best validation accuracy so far")
    fig.tight_layout()
    fig.savefig(out_dir / "tuning.png", dpi=110)
    plt.close(fig)
    lines += ["", "![Best validation score so far against trial](tuning.png)"]
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def tuning_note(folder: Path) -> str:
    """The chosen setting and budget recorded in tuned runs (``tuning.chosen`` in their config), if any."""
    import yaml

    from experiments.recording import read_results
    for path in sorted(folder.rglob("results.nc"))[:1]:
        config = yaml.safe_load(read_results(path).attrs.get("config", "") or "{}") or {}
        tuning = config.get("tuning") or {}
        if tuning.get("chosen"):
            return (f"Tuned: {tuning.get('budget')} trials per learner ({tuning.get('sampler')} sampler, seed "
                    f"{tuning.get('seed')}), the setting chosen on validation.")
    return ""


def write_figures(ds: xr.Dataset, out_dir: Path, title: str) -> list[tuple[str, str]]:
    """Every figure the data allows; returns (caption, file name) pairs."""
    figures = []
    metric = primary_metric(ds)
    word = "accuracy" if metric == "accuracy" else "R^2"
    comparison_figure(ds, out_dir / "comparison.png", title=title, metric=metric)
    figures.append((f"Learning curves (mean over seeds, 95% band) and final test {word}", "comparison.png"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    accuracy_vs_cost(ds, axes[0], cost="wall_time", metric=metric)
    accuracy_vs_cost(ds, axes[1], cost="flops", metric=metric)
    fig.suptitle(f"{title}: {word} against cost")
    fig.tight_layout()
    fig.savefig(out_dir / "pareto.png", dpi=110)
    plt.close(fig)
    figures.append((f"Final test {word} against training wall time and FLOPs (dashed: Pareto front)",
                    "pareto.png"))
    save_single(peak_memory, ds, out_dir / "memory.png", title=f"{title}: peak memory")
    figures.append(("Peak memory above the start of the fit", "memory.png"))
    if grid_figure(ds, per_block_variables(ds), out_dir / "blocks.png", title=f"{title}: per-block metrics"):
        figures.append(("Per-block metrics over epochs (colour: learner, line style: block)", "blocks.png"))
    if alignment_figure(ds, out_dir / "alignment.png", title=f"{title}: alignment with backprop"):
        figures.append(("Cosine and sign agreement of each block's update with backprop's gradient",
                        "alignment.png"))
    if "block_cka_backprop" in ds and np.isfinite(ds["block_cka_backprop"].values).any():
        save_single(cka_bars, ds, out_dir / "cka.png", title=f"{title}: linear CKA to a backprop twin")
        figures.append(("Linear CKA of each block's activity to a backprop-trained twin", "cka.png"))
    if "task_accuracy" in ds:
        from analysis.continual import continual_figure
        continual_figure(ds, out_dir / "continual.png", title=title)
        figures.append(("Continual learning: accuracy matrices, ACC and BWT", "continual.png"))
    return figures


def write_report(folder, out_dir=None, *, title: str | None = None) -> str:
    """Write ``summary.md``, ``summary.html`` and the figures for the runs under ``folder``; return the table."""
    folder = Path(folder)
    out_dir = Path(out_dir or folder)
    raw = collect(folder)                      # first: a missing folder is named, not created
    metric = primary_metric(raw)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = variants_as_learners(raw)
    set_learner_order(sorted({str(n).split(" (")[0] for n in np.atleast_1d(ds["learner"].values)}))
    rows = summary_rows(ds)
    table = markdown_table(rows)
    budgets = run_budgets(folder)
    title = title or default_title(raw, budgets) or folder.name
    figures = write_figures(ds, out_dir, title)
    sections = [f"# {title}",
                f"Generated by `python -m analysis {folder}` from {raw.attrs['n_runs']} result files. "
                f"Test {'accuracy' if metric == 'accuracy' else 'R^2 and RMSE'} at the last recorded epoch "
                "(the best validation epoch where a run used early stopping), "
                "mean over seeds with a Student-t 95% interval (clipped to [0, 100] for accuracy); "
                "wall time is training only (no evaluation); peak memory is above the level at the start "
                "of the fit; FLOPs per training sample per epoch (torch learners: counted on the first step "
                "of each epoch; numpy learners: their own count).",
                table]
    if budgets:
        sections.append("Budget: " + "; ".join(budgets) + ".")
    tuning = find_tuning(folder)
    if tuning is not None:
        sections.append(tuning_section(tuning, out_dir))
    elif tuning_note(folder):
        sections.append(tuning_note(folder))
    for var, header, heading in (("block_align_cosine", "cosine", "Alignment with backprop (last epoch)"),
                                 ("block_align_sign", "sign agreement", None),
                                 ("block_cka_backprop", "CKA", "Linear CKA to a backprop twin (end of training)")):
        block = per_block_table(ds, var, header=header)
        if block:
            sections.append((f"## {heading}\n\n" if heading else "") + block)
    if "task_accuracy" in ds:
        from analysis.continual import continual_table
        sections.append("## Continual learning\n\n" + continual_table(ds))
    if raw.attrs.get("incomplete_runs"):
        sections.append("Incomplete runs (kept in the table with the epochs they recorded):\n\n" +
                        "\n".join(f"- {line}" for line in raw.attrs["incomplete_runs"].splitlines()))
    if raw.attrs.get("flagged_runs"):
        sections.append("**Flagged runs** (finished, but at chance or with the training loss rising; kept in "
                        "the table):\n\n" +
                        "\n".join(f"- {line}" for line in raw.attrs["flagged_runs"].splitlines()))
    if raw.attrs.get("failed_runs"):
        sections.append("Run folders without results (failed):\n\n" +
                        "\n".join(f"- {line}" for line in raw.attrs["failed_runs"].splitlines()))
    sections += [f"![{caption}]({name})" for caption, name in figures]
    text = "\n\n".join(sections) + "\n"
    (out_dir / "summary.md").write_text(text)
    (out_dir / "summary.html").write_text(markdown_to_html(text, title))
    return table


# ---------------------------------------------------------------- html

def markdown_to_html(text: str, title: str) -> str:
    """The small markdown subset the report uses (headings, tables, lists, images, code) as HTML."""
    body, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head, rest = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-:") for c in r)]
            body.append("<table>\n<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>\n" +
                        "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>\n" for r in rest) +
                        "</table>")
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        image = re.fullmatch(r"!\[(.*)\]\((.*)\)", line.strip())
        if image:
            body.append(f'<figure><img src="{html.escape(image[2])}" alt="{html.escape(image[1])}">'
                        f"<figcaption>{html.escape(image[1])}</figcaption></figure>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "figcaption{color:#555;font-size:90%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    out = html.escape(text)
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", out)
