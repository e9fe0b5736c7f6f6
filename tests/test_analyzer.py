"""The architecture analyser: totals, per-layer rows that add up, and the CLI outputs."""

import json

import pytest

from orbdistill.cli import main
from orbdistill.profiling import analyze, default_structure

from conftest import ORB_V3_CONSERVATIVE_PARAMS


@pytest.fixture(scope="module")
def report20():
    return analyze("orb-v3-conservative-20-omat", structure=default_structure(32), repeats=1, memory=False)


def test_parameter_count_is_orbs(report20):
    assert report20["total_params"] == ORB_V3_CONSERVATIVE_PARAMS


def test_per_module_rows_add_up_to_a_hand_count_of_a_student():
    """The analyser's per-module parameter rows, summed, equal a count made by hand from
    the layer widths of a v2 student (independent of ``num_parameters``)."""
    from orbdistill.models import build_student

    F, Fv, L, R, H = 12, 4, 2, 6, 7
    m = build_student("v2", [29], num_features=F, num_vector_features=Fv, num_layers=L, num_radial=R, readout_hidden=H)
    def linear(i, o, bias=True):
        return i * o + (o if bias else 0)
    per_layer = (linear(F, F) + linear(F, F + 2 * Fv) + linear(R, F + 2 * Fv)  # message: phi MLP and filter
                 + linear(Fv, 2 * Fv, bias=False) + linear(F + 2 * Fv, F) + linear(F, F + Fv))  # update
    hand = 119 * F + L * per_layer + linear(F, H) + linear(H, 1)
    r = analyze(m, structure=default_structure(32), repeats=1, memory=False)
    assert sum(row["params_self"] for row in r["layers"]) == hand
    assert r["total_params"] == hand


def test_layer_rows_add_up_to_the_totals(report20):
    r = report20
    assert sum(row["params_self"] for row in r["layers"]) == r["total_params"]
    assert sum(row["flops_forward_self"] for row in r["layers"]) == r["flops_forward_total"]
    assert sum(b["flops"] for b in r["blocks"]) == r["flops_forward_total"] + r["flops_backward_total"]
    assert sum(b["params"] for b in r["blocks"]) == r["total_params"]
    for row in r["layers"]:
        for key in ("name", "type", "params", "flops_forward", "latency_ms", "input_shapes", "output_shapes"):
            assert key in row


def test_interaction_flops_match_the_hand_count(report20):
    """One Orb interaction step: edge MLP 768->1024->1024->256 per edge, node MLP
    768->1024->1024->256 per atom, two 256->1 attention projections per edge."""
    r = report20
    n, e = r["structure"]["n_atoms"], r["graph"]["n_edges"]
    mlp = 768 * 1024 + 1024 * 1024 + 1024 * 256
    matmul = 2 * (e * mlp + n * mlp + 2 * e * 256)
    row = next(x for x in r["layers"] if x["name"] == "model.gnn_stacks.0")
    assert matmul <= row["flops_forward"] <= 1.02 * matmul
    assert row["params"] == 4_199_938


def test_conservative_model_has_a_gradient_pass_and_direct_model_none(report20):
    assert report20["flops_backward_total"] > 0.8 * report20["flops_forward_total"]
    direct = analyze("orb-v3-direct-20-omat", structure=default_structure(32), repeats=1, memory=False)
    assert direct["flops_backward_total"] == 0
    assert direct["total_params"] == 25_644_479


def test_specialised_operations_are_found(report20):
    ops = " ".join(s["operation"] for s in report20["specialised_ops"])
    for word in ("spherical harmonics", "scatter", "attention", "k-nearest"):
        assert word in ops


def test_cli_writes_json_markdown_and_chart(tmp_path, capsys):
    out = tmp_path / "inf"
    rc = main(["analyze", "orb-v3-conservative-inf-omat", "--out", str(out), "--n-atoms", "32",
               "--repeats", "1", "--threads", "2", "--no-memory"])
    assert rc == 0
    r = json.loads((out / "report.json").read_text())
    assert r["total_params"] == ORB_V3_CONSERVATIVE_PARAMS  # the 120-neighbour model has the same weights
    assert r["graph"]["max_neighbors"] == 120
    assert r["flops_forward_total"] > 0 and r["flops_backward_total"] > 0
    md = (out / "report.md").read_text()
    assert "RANDOM WEIGHTS" in md and "Layer by layer" in md and "gnn_stacks.4" in md
    assert (out / "blocks.png").stat().st_size > 10_000
    assert f"{ORB_V3_CONSERVATIVE_PARAMS:,}" in capsys.readouterr().out


def test_cli_compare_puts_two_models_side_by_side(tmp_path):
    rc = main(["analyze", "orb-v3-conservative-inf-omat", "--compare", "orb-v3-conservative-20-omat", "--out",
               str(tmp_path), "--n-atoms", "32", "--repeats", "1", "--no-memory"])
    assert rc == 0
    comp = json.loads((tmp_path / "compare.json").read_text())
    rows = {r["quantity"]: r for r in comp["rows"]}
    assert rows["params"]["ratio_a_over_b"] == pytest.approx(1.0)
    assert rows["edges"]["ratio_a_over_b"] > 2  # 120 vs 20 neighbours in a 32-atom cell
    assert rows["flops_forward"]["ratio_a_over_b"] > 2
    assert (tmp_path / "compare.md").exists() and (tmp_path / "compare.png").exists()


def test_cli_rejects_emt_and_unknown_names(tmp_path, capsys):
    assert main(["analyze", "emt", "--out", str(tmp_path)]) == 2
    assert "no neural network" in capsys.readouterr().err
    assert main(["analyze", "not-a-model", "--out", str(tmp_path)]) == 2


def test_memory_probe_reports_a_peak():
    from orbdistill.profiling.analyzer import measure_memory

    m = measure_memory("orb-v3-direct-20-omat", None, 32, 2)
    assert m["peak_rss_mb"] > 100


@pytest.mark.parametrize("name", ["sevennet-mf-0", "chgnet"])
def test_the_analyser_reads_the_offline_teachers(name):
    """SevenNet's multi-fidelity model (its graphs carry the level of theory) and CHGNet (its
    own graph converter, forces timed after the readout): parameters are the model's own,
    both passes have FLOPs and time."""
    from ase.build import bulk

    from orbdistill.profiling.analyzer import analyze
    from orbdistill.teachers import load_teacher

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.02, seed=0)
    report = analyze(name, structure=atoms, repeats=1, memory=False)
    model = load_teacher(name, device="cpu").model
    assert report["total_params"] == sum(p.numel() for p in model.parameters())
    assert report["flops_forward_total"] > 0 and report["flops_backward_total"] > 0
    assert report["latency_ms"]["forward"] > 0 and report["latency_ms"]["backward"] > 0
