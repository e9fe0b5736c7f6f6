"""Fill the measured numbers into the docs from benchmark and analyser JSON (run from the
repository root after the benchmarks and analyses). Placeholders are UPPER_CASE words."""

import json
from pathlib import Path

from orbdistill.validation.throughput import speed_table_markdown

R = Path("benchmarks/results")
A = Path("docs/architecture/reports")


def load(p):
    p = Path(p)
    return json.loads(p.read_text()) if p.exists() else None


def fmt_g(x):
    return f"{x / 1e9:.1f} G"


def compare_table(path):
    c = load(path)
    if not c:
        return "(not measured)"
    a, b = c["a"], c["b"]
    lines = [f"| quantity | {a} | {b} | ratio |", "|---|---|---|---|"]
    for r in c["rows"]:
        x, y, q = r[a], r[b], r["ratio_a_over_b"]
        f = (lambda v: "-" if v is None else (fmt_g(v) if "flops" in r["quantity"] else f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"))
        lines.append(f"| {r['quantity']} | {f(x)} | {f(y)} | {'-' if q is None else f'{q:.3f}'} |")
    return "\n".join(lines)


def main():
    subs = {}
    ts = load(R / "teacher_speed.json")
    if ts:
        subs["TEACHER_SPEED_TABLE"] = speed_table_markdown(ts["rows"])
    ss = load(R / "student_speed.json")
    if ss:
        rows = ss["rows"]
        subs["V2_SPEED_TABLE"] = speed_table_markdown(rows)
        subs["V2_RATIOS"] = "\n".join(f"- {k}: **{v}**" for k, v in ss["meta"]["ratios"].items() if k != "n_atoms")
        t = {r["model"]: r for r in rows if r["n_atoms"] == 256 and "ms_per_step" in r}
        v1, o20 = t.get("student v1"), t.get("orb-v3-conservative-20-omat")
        if v1 and o20:
            per = []
            for n in sorted({r["n_atoms"] for r in rows}):
                a = next((r for r in rows if r["model"] == "student v1" and r["n_atoms"] == n and "ms_per_step" in r), None)
                b = next((r for r in rows if r["model"] == "orb-v3-conservative-20-omat" and r["n_atoms"] == n and "ms_per_step" in r), None)
                if a and b:
                    per.append(f"{n} atoms {b['ms_per_step'] / a['ms_per_step']:.1f}x")
            subs["V1_SPEED_SENTENCE"] = (f"v1 takes {v1['ms_per_step']:.0f} ms per step at 256 atoms against "
                                         f"{o20['ms_per_step']:.0f} ms for `orb-v3-conservative-20-omat` "
                                         f"(**{o20['ms_per_step'] / v1['ms_per_step']:.2f}x faster**; target 3x). "
                                         "Speed-up by size: " + ", ".join(per) + ".")
        e3 = t.get("student v2-e3nn")
        if e3 and "student v2" in t:
            subs["V2E3NN_SPEED"] = f"{e3['ms_per_step']:.1f} ms against {t['student v2']['ms_per_step']:.1f} ms per 256-atom step"
    ab = load(R / "v2_ablation.json")
    if ab:
        d = {r["variant"]: r for r in ab["rows"]}
        o3, o1 = d["orb-style 64 wide, l<=3, 5 Å"], d["orb-style 64 wide, l<=1, 5 Å"]
        v2, v6, v6k = d["v2 64 wide, 5 Å (default)"], d["v2 64 wide, 6 Å"], d["v2 64 wide, 6 Å, 120-neighbour cap"]
        nv = d["v2 64 wide, 5 Å, no vector states"]
        subs["ABL_FACTORISED"] = (f"Orb-style block at the same width (64) and cutoff: {o1['ms_per_step']:.1f} ms (l <= 1) vs "
                                  f"v2 {v2['ms_per_step']:.1f} ms: **{o1['ms_per_step'] / v2['ms_per_step']:.1f}x** faster")
        subs["ABL_LMAX"] = (f"l <= 3 -> l <= 1 on the Orb-style block: {o3['ms_per_step']:.1f} -> {o1['ms_per_step']:.1f} ms; "
                            f"v2 without vector states {nv['ms_per_step']:.1f} ms (the vectors cost "
                            f"{v2['ms_per_step'] - nv['ms_per_step']:.1f} ms and buy angular information)")
        subs["ABL_CUTOFF"] = (f"{v6['edges']:,} -> {v2['edges']:,} edges; {v6['ms_per_step']:.1f} -> {v2['ms_per_step']:.1f} ms "
                              f"(6 Å with a 120 cap: {v6k['ms_per_step']:.1f} ms)")
    subs["V1_COMPARE_TABLE"] = compare_table(A / "student-v1" / "compare.json")
    subs["V2_COMPARE_TABLE"] = compare_table(A / "student-v2" / "compare.json")
    inf = load(A / "orb-v3-conservative-inf-omat" / "report.json")
    if inf:
        subs["INF_EDGES"] = f"{inf['graph']['n_edges']:,}"
        subs["INF_FWD"] = fmt_g(inf["flops_forward_total"])
        subs["INF_BWD"] = fmt_g(inf["flops_backward_total"])
        subs["INF_STEP"] = f"{inf['latency_ms']['total_step']:,.0f} ms"
        mem = inf.get("memory", {})
        subs["INF_MEM"] = f"{mem['peak_rss_mb']:,.0f} MB" if "peak_rss_mb" in mem else "(not measured)"
    card = load("calculators/cu-sevennet-v2/card.json")
    if card:
        m = card["metrics"]
        subs["V2_ACCURACY"] = (f"energy MAE {m['energy_mae_mev_atom']:.2f} meV/atom, force MAE {m['force_mae_mev_a']:.1f} meV/Å, "
                               f"stress MAE {m['stress_mae_gpa']:.3f} GPa")
    bs = load(R / "backend_speed.json")
    if bs:
        fastest = bs["meta"]["fastest"]
        subs["BACKEND_TABLE"] = (speed_table_markdown(bs["rows"]) + "\n\nFastest backend per size (float32, "
                                 f"{bs['meta']['threads']} threads, CPU): " + ", ".join(f"{k}: {v}" for k, v in fastest.items()) + ".")
    for doc in Path("docs").rglob("*.md"):
        text = doc.read_text()
        new = text
        for k, v in subs.items():
            new = new.replace(k, v)
        if new != text:
            doc.write_text(new)
            print("filled", doc)


if __name__ == "__main__":
    main()
