"""Plots (matplotlib): each function returns a Figure; ``save(fig, path)`` writes PNG or SVG by suffix."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.fmt import with_interval
from analysis.laws import ChinchillaLaw, Law
from analysis.runs import compute_frontier


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_vs_compute(df: pd.DataFrame, law: Law | None = None, target_C: float | None = None, heldout: pd.DataFrame | None = None):
    """Runs coloured by N, their compute frontier, and the law's compute-optimal loss extended to ``target_C``."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sc = ax.scatter(df["C"], df["loss"], c=np.log10(df["N"]), cmap="viridis", s=18, alpha=0.8)
    fig.colorbar(sc, ax=ax, label="log10 N")
    fr = compute_frontier(df)
    # start at the best run of the smallest budget (not at whichever run of that budget sorts first), so the
    # envelope does not drop vertically there
    fr = fr[fr["loss"] <= df.loc[df["C"] <= df["C"].min() * 1.1, "loss"].min()]
    # the lower envelope: the best loss reached with at most C (a step function, drawn from the first run on)
    ax.step(fr["C"], fr["loss"], "k--", where="post", lw=1, label="frontier (lower envelope)")
    if isinstance(law, ChinchillaLaw):
        cmax = max(df["C"].max(), target_C or 0)
        Cs = np.logspace(np.log10(df["C"].min()), np.log10(cmax) + 0.1, 100)
        opt = law.compute_optimal_interval(Cs)
        ax.plot(opt["C"], opt["loss"], "r-", lw=1.5, label=f"{law.name} law ({law.form}): compute-optimal loss")
        if "loss_lo" in opt:
            ax.fill_between(opt["C"], opt["loss_lo"], opt["loss_hi"], color="r", alpha=0.15, label="95% interval")
    if target_C:
        ax.axvline(target_C, color="gray", ls=":", label=f"target C = {target_C:.2g}")
    if heldout is not None and len(heldout):
        ax.scatter(heldout["C"], heldout["loss"], marker="*", s=160, c="red", edgecolor="k", label="held-out run", zorder=5)
    fitted = f"; law fitted on C {df['C'].min():.2g}-{df['C'].max():.2g}" if law is not None else ""
    ax.set(xscale="log", xlabel="training FLOPs C", ylabel="loss", title=f"Loss vs compute{fitted}")
    _warn_degenerate(ax, law)
    ax.legend(fontsize=8)
    return fig


def _warn_degenerate(ax, law) -> None:
    """A visible warning on a figure whose law has a degenerate parameter (at a bound, or an interval over 10x)."""
    notes = [n for n in (getattr(law, "notes", None) or []) if n.startswith("degenerate") or "at its bound" in n or "interval spans" in n]
    if notes:
        # below the axes, clear of the data, the legend and the result box
        ax.figure.subplots_adjust(bottom=0.2)
        ax.text(0.0, -0.16, "WARNING: " + notes[0][:120] + (" (+ more)" if len(notes) > 1 else ""), transform=ax.transAxes, fontsize=7.5,
                color="C3", va="top", ha="left", bbox={"facecolor": "white", "edgecolor": "C3", "alpha": 0.9})


def extrapolation(df: pd.DataFrame, law, C_target: float, predicted: dict, measured: dict | None = None, other: dict | None = None,
                  minima: pd.DataFrame | None = None):
    """The GPT-4 figure: loss against compute normalised so the held-out run is 1. The small runs, the
    compute-optimal frontier (IsoFLOP minima) with the fitted power law and its band carried out to the target,
    the prediction's interval made before the run, and the measured point.

    ``law``: a frontier law (of C) or a surface law (its frontier L_opt(C) is drawn); ``predicted``: {loss, lo,
    hi}; ``measured``: {loss, stderr}; ``other``: a second prediction {loss, lo, hi, label} drawn beside the first
    (e.g. the Chinchilla law's); ``minima``: IsoFLOP minima to mark (default: the law's own)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x = df["C"].to_numpy(float) / C_target
    ax.scatter(x, df["loss"], s=9, c="0.65", label="sweep runs", zorder=2)
    m = getattr(law, "minima", None) if minima is None else minima
    if m is not None and len(m):
        ax.scatter(m["budget"] / C_target, m["loss_opt"], marker="D", c="C0", edgecolor="k", s=34, zorder=4, label="compute-optimal (IsoFLOP minima)")
        lo_c = float(m["budget"].min())
    else:
        lo_c = float(df["C"].min())
    if law is not None and (law.inputs == ("C",) or hasattr(law, "frontier_interval")):
        Cs = np.logspace(np.log10(lo_c) - 0.1, np.log10(C_target) + 0.15, 120)
        if law.inputs == ("C",):
            pred, label = law.predict_interval(C=Cs), f"fit: {law.form}"
        else:
            pred, label = law.frontier_interval(Cs), "frontier of the surface fit: E + A C^-gamma"
        ax.plot(Cs / C_target, pred["loss"], "C0-", lw=1.5, label=label)
        if "lo" in pred:
            ax.fill_between(Cs / C_target, pred["lo"], pred["hi"], color="C0", alpha=0.15, lw=0, label="95% band (fit)")
    p = predicted
    name = p.get("label", "prediction")
    ax.errorbar([1.0], [p["loss"]], yerr=[[p["loss"] - p["lo"]], [p["hi"] - p["loss"]]], fmt="o", mfc="white", mec="C3", ecolor="C3",
                capsize=4, ms=7, zorder=5, label=f"{name} (95%, made before the run)")
    if other:
        ax.errorbar([1.12], [other["loss"]], yerr=[[other["loss"] - other["lo"]], [other["hi"] - other["loss"]]], fmt="s", mfc="white",
                    mec="C2", ecolor="C2", capsize=3, ms=5, zorder=5, label=other.get("label", "other prediction"))
    if measured:
        # beside the prediction (not on top of it) and in another colour, so a miss is seen as one
        m, se = measured["loss"], measured.get("stderr", 0.0)
        inside = p["lo"] <= m <= p["hi"]
        ax.errorbar([0.89], [m], yerr=[[2 * se]], fmt="*", c="k", mfc="gold", mec="k", ms=15, zorder=6, label="held-out run, measured (± 2 s.e.)")
        ax.annotate("", xy=(0.89, m), xytext=(1.0, p["loss"]), arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.8, "ls": ":"})
        ax.text(0.02, 0.03, f"{name}: {with_interval(p['loss'], p['lo'], p['hi'], '.4f')}\nmeasured: {m:.4f} ± {se:.4f}, error "
                f"{100 * (p['loss'] - m) / m:+.2f}%: {'inside' if inside else 'OUTSIDE'} the interval",
                transform=ax.transAxes, fontsize=8, va="bottom", ha="left",
                bbox={"facecolor": "white", "edgecolor": "0.3" if inside else "C3", "alpha": 0.9})
    law_name = f"{getattr(law, 'name', 'law')} law" if law is not None else "law"
    ax.set(xscale="log", xlabel="compute (held-out run = 1)", ylabel="eval loss (nats / token)",
           title=f"{law_name} fitted on runs up to C = {float(df['C'].max()):.2g}, predicting {C_target:.2g} "
                 f"({C_target / float(df['C'].max()):.0f}x)")
    _warn_degenerate(ax, law)
    ax.legend(fontsize=7.5, loc="upper right")
    return fig


def isoflop_curves(df: pd.DataFrame, result) -> plt.Figure:
    """Loss vs N per compute budget: each budget's runs, the curve the analysis actually fitted (its method) and
    its minimum; budgets left out (see ``result.notes``) are drawn hollow without a curve."""
    from analysis.isoflop import assign_budgets

    d = df.copy()
    d["budget"] = assign_budgets(d)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = sorted(d["budget"].unique())
    cmap = plt.get_cmap("plasma")
    used = result.minima["budget"].to_numpy(float) if len(result.minima) else np.array([])
    for i, b in enumerate(budgets):
        g = d[d["budget"] == b]
        color = cmap(0.9 * i / max(1, len(budgets) - 1))
        j = np.flatnonzero(np.isclose(used, b, rtol=1e-9))
        if len(j) == 0:
            ax.scatter(g["N"], g["loss"], facecolors="none", edgecolors=color, s=16, label=f"C={b:.2g} (left out)")
            continue
        row = result.minima.iloc[int(j[0])]
        ax.scatter(g["N"], g["loss"], color=color, s=16, label=f"C={b:.2g}")
        cx, cy = row.get("curve_x"), row.get("curve_y")
        if cx is not None and not (isinstance(cx, float) and np.isnan(cx)):
            ax.plot(10 ** np.asarray(cx), np.asarray(cy), color=color, lw=1.2)
        ax.scatter([row["N_opt"]], [row["loss_opt"]], color=color, marker="D", edgecolor="k", s=40, zorder=5)
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss", title=f"IsoFLOP profiles ({result.method} fits; diamonds: minima)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def frontier(law, df: pd.DataFrame | None = None, target_C: float | None = None) -> plt.Figure:
    """The compute frontier: every run (grey), the IsoFLOP minima the frontier law was fitted to, and the law
    L_opt(C) = E + A C^-gamma extended to ``target_C`` with its bootstrap band."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if df is not None:
        ax.scatter(df["C"], df["loss"], s=8, c="0.7", label="runs")
    m = law.minima
    lo_c = m["budget"].min() if m is not None and len(m) else (df["C"].min() if df is not None else 1e18)
    hi_c = max(m["budget"].max() if m is not None and len(m) else lo_c, target_C or 0)
    if m is not None and len(m):
        ax.scatter(m["budget"], m["loss_opt"], marker="D", c="C3", edgecolor="k", s=36, zorder=5, label="IsoFLOP minima")
    Cs = np.logspace(np.log10(lo_c) - 0.2, np.log10(hi_c) + 0.2, 100)
    pred = law.predict_interval(C=Cs)
    ax.plot(Cs, pred["loss"], "C3-", lw=1.5, label=f"frontier: {law.form}")
    if "lo" in pred:
        ax.fill_between(Cs, pred["lo"], pred["hi"], color="C3", alpha=0.15, label="95% interval")
    if target_C:
        ax.axvline(target_C, color="gray", ls=":", label=f"target C = {target_C:.2g}")
    ax.set(xscale="log", xlabel="training FLOPs C", ylabel="loss", title="Compute frontier")
    ax.legend(fontsize=8)
    return fig


def optimal_allocation(result, law: ChinchillaLaw | None = None, C_range: tuple[float, float] | None = None):
    """N_opt and D_opt vs C: IsoFLOP minima with their power-law fits (and the parametric law's, if given)."""
    m = result.minima
    lo, hi = C_range or (m["budget"].min() / 3, m["budget"].max() * 30)
    Cs = np.logspace(np.log10(lo), np.log10(hi), 50)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(m["budget"], m["N_opt"], c="C0", label="N_opt (IsoFLOP minima)")
    ax.scatter(m["budget"], m["D_opt"], c="C1", label="D_opt")
    ax.plot(Cs, result.N_opt(Cs), "C0-", label=f"N_opt ∝ C^{result.a:.3f}")
    ax.plot(Cs, result.D_opt(Cs), "C1-", label=f"D_opt ∝ C^{result.b:.3f}")
    if law is not None:
        opt = law.compute_optimal(Cs)
        ax.plot(Cs, opt["N_opt"], "C0--", lw=1, label="N_opt (parametric law)")
        ax.plot(Cs, opt["D_opt"], "C1--", lw=1, label="D_opt (parametric law)")
    ax.set(xscale="log", yscale="log", xlabel="compute C", ylabel="N or D", title="Compute-optimal allocation")
    ax.legend(fontsize=8)
    return fig


def predicted_vs_actual(pred: pd.DataFrame):
    """Held-out runs: predicted vs measured loss (with intervals when present)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    if "lo" in pred:
        ax.errorbar(pred["loss"], pred["predicted"], yerr=[pred["predicted"] - pred["lo"], pred["hi"] - pred["predicted"]], fmt="o", ms=4, alpha=0.8)
    else:
        ax.scatter(pred["loss"], pred["predicted"], s=16)
    lo, hi = float(min(pred["loss"].min(), pred["predicted"].min())), float(max(pred["loss"].max(), pred["predicted"].max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    title = "Held-out runs: predicted vs measured"
    if "law" in pred.attrs:
        title += f" ({pred.attrs['law']} law, fitted on C <= {pred.attrs.get('cutoff', float('nan')):.2g})"
    if "inside_interval" in pred:
        title += f"\n{100 * pred['inside_interval'].mean():.0f}% inside their 95% intervals"
    ax.set(xlabel="measured loss", ylabel="predicted loss", title=title)
    return fig


def law_contours(law: Law, df: pd.DataFrame | None = None, N_range=None, D_range=None):
    """Contours of the fitted law over (N, D), iso-compute lines C = kND (k: the table's FLOPs per parameter-token)
    and the compute-optimal path."""
    if df is not None:
        N_range = N_range or (df["N"].min() / 3, df["N"].max() * 100)
        D_range = D_range or (df["D"].min() / 3, df["D"].max() * 100)
    N_range, D_range = N_range or (1e6, 1e12), D_range or (1e8, 1e14)
    Ns = np.logspace(*np.log10(N_range), 120)
    Ds = np.logspace(*np.log10(D_range), 120)
    NN, DD = np.meshgrid(Ns, Ds)
    L = law.predict(N=NN.ravel(), D=DD.ravel()).reshape(NN.shape)
    fig, ax = plt.subplots(figsize=(7, 5))
    cs = ax.contourf(NN, DD, np.log(L), levels=30, cmap="viridis_r")
    fig.colorbar(cs, ax=ax, label="log loss")
    # iso-compute lines C = k N D with the fitted table's FLOPs per parameter-token (6 for 6ND tables)
    k = getattr(law, "flops_per_param_token", None) or 6.0
    for C in np.logspace(np.log10(k * N_range[0] * D_range[0]) + 1, np.log10(k * N_range[1] * D_range[1]) - 1, 6):
        ax.plot(Ns, C / (k * Ns), "w:", lw=0.8)
    if isinstance(law, ChinchillaLaw):
        Cs = np.logspace(np.log10(k * N_range[0] * D_range[0]), np.log10(k * N_range[1] * D_range[1]), 120)
        opt = law.compute_optimal(Cs)
        ax.plot(opt["N_opt"], opt["D_opt"], "r-", lw=2, label="compute-optimal")
        ax.legend()
    if df is not None:
        ax.scatter(df["N"], df["D"], s=8, c="k", alpha=0.6)
    ax.set(xscale="log", yscale="log", xlim=N_range, ylim=D_range, xlabel="N", ylabel="D", title=f"{law.name} law over (N, D)")
    _warn_degenerate(ax, law)
    return fig


def moe_multiplier(table: pd.DataFrame, x: str = "n_experts", label: str = "variant", ylabel: str = "effective parameter multiplier N_eff / N_active"):
    """Multiplier (with its interval, columns lo / hi when present) against ``x`` (n_experts, or budget), one
    line per ``label`` value when there are several points per label."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, g in table.groupby(label, sort=False):
        g = g.sort_values(x)
        yerr = None
        if {"lo", "hi"} <= set(g.columns):
            yerr = np.vstack([g["multiplier"] - g["lo"], g["hi"] - g["multiplier"]]).clip(min=0)
        ax.errorbar(g[x], g["multiplier"], yerr=yerr, marker="o", capsize=3, lw=1.2, label=str(name))
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel=x if x != "budget" else "compute budget C (FLOPs)", ylabel=ylabel)
    ax.legend(fontsize=8)
    return fig


def loss_by_variant(df: pd.DataFrame, minima: pd.DataFrame | None = None):
    """Every run's loss against C, one colour per variant, with each variant's IsoFLOP minima joined."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (v, g) in enumerate(df.groupby("variant", sort=False)):
        c = f"C{i}"
        ax.scatter(g["C"], g["loss"], s=10, color=c, alpha=0.5)
        if minima is not None and v in set(minima["variant"]):
            m = minima[minima["variant"] == v].sort_values("budget")
            ax.plot(m["budget"], m["loss_opt"], "-o", color=c, ms=4, label=f"{v} (IsoFLOP minima)")
    ax.set(xscale="log", xlabel="training FLOPs C", ylabel="loss", title="Dense and MoE runs")
    ax.legend(fontsize=8)
    return fig


def expert_load_heatmap(stats: dict, title: str = ""):
    """Per-layer heatmaps of each expert's share of routed tokens over training (``analysis.moe.expert_load``),
    in units of the uniform share 1 / n_experts (1 = balanced)."""
    load = stats["load"]
    T, L, E = load.shape
    fig, axes = plt.subplots(L, 1, figsize=(8, 1.6 + 1.4 * L), squeeze=False, sharex=True)
    steps = stats["steps"]
    for layer in range(L):
        ax = axes[layer, 0]
        im = ax.imshow((load[:, layer, :] * E).T, aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=max(2.0, float((load * E).max())),
                       extent=(steps[0], steps[-1], -0.5, E - 0.5), interpolation="nearest")
        ax.set(ylabel=f"layer {layer}\nexpert")
        fig.colorbar(im, ax=ax, label="load x n_experts")
    axes[-1, 0].set(xlabel="step")
    axes[0, 0].set_title(title)
    return fig


def max_load_over_training(runs: dict[str, dict]):
    """max / mean expert load (mean over layers) against step, one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, s in runs.items():
        ax.plot(s["steps"], s["max_load_ratio"].mean(axis=1), lw=1.2, label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.set(xlabel="step", ylabel="max / mean expert load (mean over layers)", title="Expert balance over training")
    ax.legend(fontsize=8)
    return fig


def lr_scan(df: pd.DataFrame, law) -> plt.Figure:
    """An lr tuning sweep: final loss against lr, as % above the best run of its (N, D) (so every size's optimum
    shows on one scale), one panel per token horizon D, one line per model size N; the best lr of each (N, D)
    (parabola) as a circle (red: at the scan's end, not located), the fitted law's lr as a dashed line."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    horizons = sorted(df["D"].unique())
    sizes = sorted(df["N"].unique())
    fig, axes = plt.subplots(1, len(horizons), figsize=(3.6 * len(horizons), 3.4), sharey=True, squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
    pts = law.points.set_index(["N", "D"])
    for ax, D in zip(axes[0], horizons):
        for c, N in zip(colours, sizes):
            g = df[(df["D"] == D) & (df["N"] == N) & np.isfinite(df["loss"])].groupby("lr")["loss"].mean()
            if g.empty:
                continue
            best = float(g.min())
            ax.plot(g.index, 100 * (g.values / best - 1), "-o", ms=3, color=c, label=f"N={N:.3g}")
            if (N, D) in pts.index:
                p = pts.loc[(N, D)]
                y = 100 * (float(np.interp(np.log(p["lr_best"]), np.log(g.index.values), g.values)) / best - 1)
                ax.plot([p["lr_best"]], [y], "o", ms=8, mfc="none", color=c if p["located"] else "red")
            ax.axvline(float(law.lr(N, D)), color=c, ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"D = {D:.3g} tokens", fontsize=9)
        ax.set_xlabel("peak learning rate")
    axes[0][0].set_ylabel("loss above the best of its (N, D), %")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"lr scan: best lr (circles; red: at the scan's end) and the fitted law (dashed)\n{law.summary()}", fontsize=8)
    fig.tight_layout()
    return fig
