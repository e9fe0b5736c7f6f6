"""Writing analyser reports: JSON, Markdown and charts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from orbdistill.utils import atomic_write_text


def _fmt_int(x) -> str:
    return f"{int(x):,}"


def _fmt_flops(x) -> str:
    x = float(x)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f}"


def _pct(a, b) -> str:
    return f"{100.0 * a / b:.1f} %" if b else "-"




def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, set):
        return sorted(o)
    return str(o)


def plot_blocks(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = report["blocks"]
    names = [b["name"] for b in blocks]
    params = np.array([b["params"] for b in blocks], dtype=float) / 1e6
    flops = np.array([b["flops"] for b in blocks], dtype=float) / 1e9
    times = np.array([b["latency_ms"] for b in blocks], dtype=float)
    y = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.38 * len(names) + 2), sharey=True)
    for ax, vals, title, color in zip(
        axes, (params, flops, times), ("parameters (M)", "FLOPs (G)", "latency (ms)"), ("#4C72B0", "#DD8452", "#55A868")
    ):
        ax.barh(y, vals, color=color)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        for yi, v in zip(y, vals):
            if v > 0:
                ax.text(v, yi, f" {v:.3g}", va="center", fontsize=7)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(names, fontsize=8)
    axes[0].invert_yaxis()
    title = f"{report['target']}: {report['structure']['n_atoms']} atoms, {report['environment']['threads']} threads"
    if report.get("random_weights"):
        title += " (random weights)"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_markdown(report: dict, chart_name: str = "blocks.png") -> str:
    r = report
    lat = r["latency_ms"]
    total_flops = r["flops_forward_total"] + r["flops_backward_total"]
    lines = [f"# Architecture report: `{r['target']}`", ""]
    if r.get("warning"):
        lines += [f"> **{r['warning']}**", ""]
    lines += [
        f"Structure: {r['structure']['formula']} ({r['structure']['n_atoms']} atoms; {r['structure']['source']}). "
        f"Device {r['environment']['device']}, {r['environment']['threads']} threads, torch {r['environment']['torch']}.",
        "",
        "## Totals",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| parameters | {_fmt_int(r['total_params'])} |",
        f"| conservative (forces = -dE/dx) | {r['conservative']} |",
        f"| graph | cutoff {r['graph']['cutoff']} Å, neighbour cap {r['graph']['max_neighbors']}, "
        f"{r['graph']['n_edges']:,} edges ({r['graph']['mean_neighbors']:.1f} per atom) |",
        f"| FLOPs forward | {_fmt_flops(r['flops_forward_total'])} |",
        f"| FLOPs gradient pass (forces/stress) | {_fmt_flops(r['flops_backward_total'])} |",
        f"| FLOPs per atom per MD step | {_fmt_flops(r['flops_per_atom_step'])} |",
        f"| latency: graph construction | {lat['graph_construction']:.2f} ms |",
        f"| latency: forward | {lat['forward']:.2f} ms |",
        f"| latency: gradient pass | {lat['backward']:.2f} ms |",
        f"| latency: whole step (graph + model) | {lat['total_step']:.2f} ms (median of {lat['repeats']}) |",
    ]
    mem = r.get("memory") or {}
    if "peak_rss_mb" in mem:
        lines.append(f"| peak memory (fresh process, RSS) | {mem['peak_rss_mb']:.0f} MB (step adds {mem['step_increase_mb']:.0f} MB) |")
    if "peak_cuda_allocated_mb" in mem:
        lines.append(f"| peak CUDA memory allocated | {mem['peak_cuda_allocated_mb']:.0f} MB |")
    lines += ["", "## Where the time goes", "",
              f"![parameters, FLOPs and latency per block]({chart_name})", "",
              "| block | params | % params | FLOPs | % FLOPs | latency (ms) | % time |", "|---|---|---|---|---|---|---|"]
    tot_t = sum(b["latency_ms"] for b in r["blocks"]) or 1.0
    for b in r["blocks"]:
        lines.append(
            f"| {b['name']} | {_fmt_int(b['params'])} | {_pct(b['params'], r['total_params'])} | {_fmt_flops(b['flops'])} | "
            f"{_pct(b['flops'], total_flops)} | {b['latency_ms']:.2f} | {_pct(b['latency_ms'], tot_t)} |"
        )
    lines += ["", "## FLOPs by kind of operation", "", "| phase | category | FLOPs | share of phase |", "|---|---|---|---|"]
    for phase, cats in r["flops_by_category"].items():
        ptot = sum(cats.values()) or 1
        for c, v in sorted(cats.items(), key=lambda kv: -kv[1]):
            if v:
                lines.append(f"| {phase} | {c} | {_fmt_flops(v)} | {_pct(v, ptot)} |")
    lines += ["", "Counting rules: matrix products 2·M·N·K; elementwise ops one per output element; reductions one "
              "per input element; scatter aggregation one per source element; gathers one per element moved. "
              "Views, copies and creation count zero."]
    if r.get("unclassified_ops"):
        lines += ["", "Ops counted by the default elementwise rule: " + ", ".join(f"`{o}`" for o in r["unclassified_ops"])]
    lines += ["", "## Most expensive operations", "", "| phase | op | calls | FLOPs |", "|---|---|---|---|"]
    for o in r["top_ops"][:15]:
        lines.append(f"| {o['phase']} | `aten.{o['op']}` | {o['calls']} | {_fmt_flops(o['flops'])} |")
    lines += ["", "## Specialised operations", "", "| operation | library | where |", "|---|---|---|"]
    for s in r["specialised_ops"]:
        where = ", ".join(s["where"][:4]) + (" ..." if len(s["where"]) > 4 else "")
        lines.append(f"| {s['operation']} | {s['library']} | {where} |")
    lines += ["", "## Dependencies", "", "| library | modules | parameters | module types |", "|---|---|---|---|"]
    for d in r["dependencies"]:
        lines.append(f"| {d['library']} | {d['modules']} | {_fmt_int(d['params'])} | {', '.join(d['types'])} |")
    lines += ["", "## Layer by layer", "",
              "Inclusive values (a module with its children); `self` columns exclude children, and the `self` "
              "columns over all rows add up to the totals.", "",
              "| module | type | params | params (self) | FLOPs fwd | FLOPs fwd (self) | latency (ms) | input shapes | output shapes |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in r["layers"]:
        indent = "&nbsp;&nbsp;" * max(0, row["depth"] - 1)
        lines.append(
            f"| {indent}`{row['name']}` | {row['type']} | {_fmt_int(row['params'])} | {_fmt_int(row['params_self'])} | "
            f"{_fmt_flops(row['flops_forward'])} | {_fmt_flops(row['flops_forward_self'])} | {row['latency_ms']:.3f} | "
            f"{row['input_shapes']} | {row['output_shapes']} |"
        )
    for n in r.get("notes") or []:
        lines += ["", f"Note: {n}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir) -> dict:
    """Write ``report.json``, ``report.md`` and ``blocks.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, default=_json_default))
    plot_blocks(report, out / "blocks.png")
    atomic_write_text(out / "report.md", report_markdown(report))
    return {"json": out / "report.json", "markdown": out / "report.md", "chart": out / "blocks.png"}


def compare_reports(a: dict, b: dict, out_dir) -> dict:
    """Side-by-side comparison of two reports (``compare.md``, ``compare.json``, ``compare.png``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def get(r):
        mem = (r.get("memory") or {})
        return {
            "params": r["total_params"],
            "flops_forward": r["flops_forward_total"],
            "flops_backward": r["flops_backward_total"],
            "edges": r["graph"]["n_edges"],
            "latency_total_ms": r["latency_ms"]["total_step"],
            "latency_model_ms": r["latency_ms"]["model_step"],
            "peak_memory_mb": mem.get("peak_rss_mb", mem.get("peak_cuda_allocated_mb")),
        }

    va, vb = get(a), get(b)
    rows = []
    for k in va:
        x, y = va[k], vb[k]
        ratio = (x / y) if (x is not None and y not in (None, 0)) else None
        rows.append({"quantity": k, a["target"]: x, b["target"]: y, "ratio_a_over_b": ratio})
    comp = {"a": a["target"], "b": b["target"], "structure": a["structure"], "rows": rows}
    atomic_write_text(out / "compare.json", json.dumps(comp, indent=1, default=_json_default))

    lines = [f"# `{a['target']}` vs `{b['target']}`", "",
             f"{a['structure']['formula']}, {a['structure']['n_atoms']} atoms, {a['environment']['threads']} threads.", ""]
    for r in (a, b):
        if r.get("warning"):
            lines.append(f"> `{r['target']}`: {r['warning']}")
    lines += ["", f"| quantity | {a['target']} | {b['target']} | ratio (a/b) |", "|---|---|---|---|"]
    for row in rows:
        x, y, q = row[a["target"]], row[b["target"]], row["ratio_a_over_b"]
        fx = (lambda v: "-" if v is None else (_fmt_flops(v) if "flops" in row["quantity"] else f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"))
        lines.append(f"| {row['quantity']} | {fx(x)} | {fx(y)} | {'-' if q is None else f'{q:.3g}x'} |")
    atomic_write_text(out / "compare.md", "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["params", "flops_forward", "flops_backward", "latency_total_ms", "peak_memory_mb"]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(keys))
    av = [va[k] or 0 for k in keys]
    bv = [vb[k] or 0 for k in keys]
    ax.bar(x - 0.2, av, 0.4, label=a["target"])
    ax.bar(x + 0.2, bv, 0.4, label=b["target"])
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(keys, rotation=20)
    ax.legend()
    ax.set_title("side by side (log scale)")
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=110)
    plt.close(fig)
    return comp
