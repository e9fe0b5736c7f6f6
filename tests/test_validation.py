"""Validation suite: NVE statistics, RDF/MSD, relaxation, EOS, elastic constants, the command."""

import json
from pathlib import Path

import numpy as np
import torch
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from orbdistill.validation import md as mdv
from orbdistill.validation import nve as nvev
from orbdistill.validation import relax as rv
from orbdistill.validation.suite import ValidateConfig, supercell, validate

ROOT = Path(__file__).resolve().parent.parent
V2 = ROOT / "calculators" / "cu-sevennet-v2"
# the Cu v2 student as first shipped, trained on bulk only (no out-of-domain model)
BULK_ONLY = Path(__file__).resolve().parent / "data" / "cu-bulk-only-v2"


def cu(a=3.6, reps=2):
    return bulk("Cu", "fcc", a=a, cubic=True).repeat(reps)


class ScaledForces(Calculator):
    """EMT with forces multiplied by a factor: not the gradient of its energy."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, factor=1.5, fail_after=None):
        super().__init__()
        self.emt, self.factor, self.fail_after, self.calls = EMT(), factor, fail_after, 0

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("model blew up")
        a = atoms.copy()
        a.calc = self.emt
        self.results = {"energy": a.get_potential_energy(), "forces": self.factor * a.get_forces(),
                        "stress": a.get_stress()}


def test_drift_statistics_recover_slope_and_fluctuation(rng):
    t = np.linspace(0, 10, 2001)  # ps
    n = 50
    noise = rng.normal(scale=0.2, size=t.size)  # meV/atom
    e_total = (0.03e-3 * t + noise * 1e-3) * n  # eV: 0.03 meV/atom/ps drift plus 0.2 meV/atom noise
    st = nvev.drift_statistics(t, e_total, n, drop_fraction=0.2)
    assert st["drift_mev_atom_ps"] == pytest.approx(0.03, abs=0.01)
    assert st["fluctuation_mev_atom"] == pytest.approx(0.2, rel=0.05)
    assert st["points"] == t.size - int(0.2 * t.size)


def test_emt_nve_conserves_energy_and_fluctuation_scales_as_dt_squared():
    sw = nvev.timestep_sweep(EMT(), cu(), (0.5, 1.0, 2.0), simulated_ps=0.2, progress=False)
    assert all(r["failed"] is None for r in sw["runs"])
    assert 1.6 < sw["fluctuation_exponent"] < 2.4
    run = nvev.run_nve(EMT(), cu(), steps=400, timestep_fs=1.0, progress=False)
    assert run["failed"] is None and run["steps_completed"] == 400
    assert run["abs_drift_mev_atom_ps"] < 0.05
    assert run["max_net_momentum_amu_a_per_fs"] < 1e-8
    # equipartition: a lattice started at 300 K settles near 150 K
    assert 100 < run["mean_temperature_k"] < 200


def test_nonconservative_forces_show_up_as_energy_drift():
    good = nvev.run_nve(EMT(), cu(), steps=300, timestep_fs=2.0, progress=False)
    bad = nvev.run_nve(ScaledForces(1.5), cu(), steps=300, timestep_fs=2.0, progress=False)
    assert bad["fluctuation_mev_atom"] > 20 * good["fluctuation_mev_atom"] or \
        bad["abs_drift_mev_atom_ps"] > 20 * good["abs_drift_mev_atom_ps"]


def test_nve_failure_is_reported_with_the_step():
    run = nvev.run_nve(ScaledForces(1.0, fail_after=55), cu(), steps=200, log_interval=10, progress=False)
    assert run["failed"] and "RuntimeError" in run["failed"] and "model blew up" in run["failed"]
    assert 40 <= run["steps_completed"] < 60


def test_rdf_of_perfect_fcc_has_twelve_neighbours_at_a_over_sqrt2():
    a = 3.6
    r = mdv.rdf([cu(a, 3)], r_max=4.0, n_bins=400)
    rr, g, cn = map(np.array, (r["r"], r["g"], r["coordination"]))
    assert rr[np.argmax(g)] == pytest.approx(a / np.sqrt(2), abs=0.01)
    assert cn[np.searchsorted(rr, 3.0)] == pytest.approx(12.0)
    assert cn[np.searchsorted(rr, 3.7)] == pytest.approx(18.0)  # + 6 second neighbours at a
    # g -> number density normalisation: integral of 4 pi r^2 rho g dr counts the neighbours
    rho = len(cu(a, 3)) / cu(a, 3).get_volume()
    dr = rr[1] - rr[0]
    assert np.sum(4 * np.pi * rr ** 2 * rho * g * dr)[()] == pytest.approx(18.0, rel=0.02)


def test_partial_rdfs_of_rock_salt_sum_to_the_total_and_count_shells():
    from ase.build import bulk

    a = 4.2
    nacl = bulk("NaCl", "rocksalt", a=a, cubic=True).repeat(3)
    nacl.rattle(0.02, seed=1)
    r = mdv.rdf([nacl], r_max=5.0, n_bins=250)
    rr, g = np.array(r["r"]), np.array(r["g"])
    assert list(r["partial"]) == ["Na-Na", "Na-Cl", "Cl-Cl"]  # elements in order of first appearance
    x = {"Na": 0.5, "Cl": 0.5}
    total = sum(x[p.split("-")[0]] * x[p.split("-")[1]] * (1 if p.split("-")[0] == p.split("-")[1] else 2) * np.array(v["g"])
                for p, v in r["partial"].items())
    np.testing.assert_allclose(total, g, atol=1e-12)
    # first shell: 6 unlike neighbours at a/2, no like ones; second: 12 like ones at a/sqrt(2)
    cn = {p: np.array(v["coordination"]) for p, v in r["partial"].items()}
    k1, k2 = np.searchsorted(rr, 0.6 * a), np.searchsorted(rr, 0.8 * a)
    assert cn["Na-Cl"][k1] == pytest.approx(6.0) and cn["Na-Na"][k1] == 0.0 and cn["Cl-Cl"][k1] == 0.0
    assert cn["Na-Na"][k2] == pytest.approx(12.0) and cn["Cl-Cl"][k2] == pytest.approx(12.0)
    assert "partial" not in mdv.rdf([cu(3.6, 2)])  # one element: the total is the only RDF


def test_hydrogen_mass_changes_the_dynamics_not_the_stored_frames():
    from ase.build import molecule
    from ase.calculators.emt import EMT

    h2o = molecule("H2O", vacuum=4.0)
    h2o.pbc = False
    runs = {m: mdv.run_nvt(EMT(), h2o, 300.0, steps=20, timestep_fs=0.5, sample_interval=10, progress=False,
                           hydrogen_mass_amu=m) for m in (None, 2.014)}
    a, b = runs[None]["frames"][-1], runs[2.014]["frames"][-1]
    assert not np.allclose(a.positions, b.positions)  # heavier hydrogen moves differently
    assert b.get_masses()[1] == pytest.approx(1.008, abs=1e-3)  # frames keep natural masses


def test_rdf_overlap_is_one_for_equal_structures_and_falls_with_mismatch(rng):
    frames = []
    for k in range(4):
        at = cu(3.6, 3)
        at.rattle(0.08, seed=k)
        frames.append(at)
    base = mdv.rdf(frames)
    assert mdv.rdf_overlap(base["g"], base["g"]) == pytest.approx(1.0)
    near = mdv.rdf([f.copy() for f in frames])
    expanded = []
    for f in frames:
        x = f.copy()
        x.set_cell(x.cell * 1.03, scale_atoms=True)
        expanded.append(x)
    far = mdv.rdf(expanded)
    assert mdv.rdf_overlap(base["g"], near["g"]) == pytest.approx(1.0)
    assert mdv.rdf_overlap(base["g"], far["g"]) < 0.8


def test_msd_ignores_centre_of_mass_drift_and_measures_displacement():
    at = cu(3.6, 2)
    frames = [at.copy() for _ in range(3)]
    frames[1].positions += [0.5, 0.0, 0.0]  # rigid translation: no diffusion
    frames[2].positions[::2] += [0.3, 0.0, 0.0]  # half the atoms forward,
    frames[2].positions[1::2] -= [0.3, 0.0, 0.0]  # half back (equal masses)
    m = mdv.msd(frames, [0.0, 0.1, 0.2])
    assert m["msd_a2"][1] == pytest.approx(0.0, abs=1e-12)
    assert m["msd_a2"][2] == pytest.approx(0.09, rel=1e-9)


def test_relaxation_from_perturbed_starts_finds_the_same_lattice():
    ref = rv.relax(EMT(), bulk("Cu", "fcc", a=3.6, cubic=True), fmax=1e-3)
    assert ref["converged"]
    for seed in range(2):
        r = rv.relax(EMT(), rv.perturbed(bulk("Cu", "fcc", a=3.6, cubic=True), seed=seed), fmax=1e-3)
        assert r["converged"] and r["steps"] > ref["steps"]
        assert r["volume_per_atom_a3"] == pytest.approx(ref["volume_per_atom_a3"], rel=1e-3)
        assert r["energy_per_atom_ev"] == pytest.approx(ref["energy_per_atom_ev"], abs=1e-5)


def test_bulk_modulus_from_eos_equals_elastic_constants():
    """B from E(V) and B = (C11 + 2 C12) / 3 from stress-strain are independent routes."""
    ref = rv.relax(EMT(), bulk("Cu", "fcc", a=3.6, cubic=True), fmax=1e-4)["atoms"]
    eos = rv.equation_of_state(EMT(), ref, max_linear_strain=0.01, points=7)
    el = rv.elastic_constants(EMT(), ref, strain=0.002)
    assert eos["bulk_modulus_gpa"] == pytest.approx((el["c11_gpa"] + 2 * el["c12_gpa"]) / 3, rel=0.02)
    c = np.array(el["c_gpa"])
    assert el["symmetry_error_gpa"] < 0.5 and el["c44_gpa"] > 0 and el["c11_gpa"] > el["c12_gpa"] > 0
    assert np.abs(c[:3, 3:]).max() < 0.5  # cubic: no normal-shear coupling


def test_voigt_strain_uses_engineering_shear():
    e = rv.voigt_strain_tensor(3, 0.01)
    assert e[1, 2] == e[2, 1] == 0.005 and np.trace(e) == 0
    assert rv.voigt_strain_tensor(0, 0.01)[0, 0] == 0.01


def test_supercell_is_compact_and_reaches_the_target():
    prim = bulk("Cu", "fcc", a=3.6)
    sc = supercell(prim, 64)
    assert len(sc) >= 64 and len(sc) <= 125
    cub = bulk("Cu", "fcc", a=3.6, cubic=True)
    assert len(supercell(cub, 100)) == 108
    assert len(supercell(cub, 250, at_least=False)) == 256


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("val")
    cfg = ValidateConfig.quick(progress=False, throughput_repeats=1, memory_probe=False)
    summary = validate("emt", [str(V2)], out=out, config=cfg, threads=2)
    return out, summary


def test_validate_quick_writes_report_with_every_section(quick_report):
    out, s = quick_report
    for f in ("report.md", "report.json", "nve_energy.png", "nve_timestep.png", "throughput.png", "rdf.png",
              "msd.png", "parity.png", "eos.png"):
        assert (out / f).stat().st_size > 0, f
    j = json.loads((out / "report.json").read_text())
    assert set(j["nve"]) == {"emt", "cu-sevennet-v2"}
    assert j["nve"]["cu-sevennet-v2"]["failed"] is None
    md = j["md"]["600K"]["models"]["cu-sevennet-v2"]
    assert 0.5 < md["rdf_overlap"] <= 1.0 and md["parity_on_teacher_frames"]["n_frames"] == 5
    # the sampling-noise replica: the same student from another seed is a different run
    assert md["replica_seed"] == 1 and 0.5 < md["rdf_overlap_replica"] < 1.0
    assert 0.5 < md["rdf_overlap_replica_teacher"] < 1.0 and md["rdf_overlap_replica_teacher"] != md["rdf_overlap"]
    assert "rdf_overlap_replica" not in j["md"]["600K"]["models"]["emt"]
    sizes = {r["n_atoms"] for r in j["throughput"]["rows"] if r["model"] == "cu-sevennet-v2"}
    assert sizes == {32, 108}
    assert any(s["model"] == "cu-sevennet-v2 [onnx]" for s in j["throughput"]["speedups"])
    targets = {r["target"] for r in j["targets"]}
    assert any("drift" in t for t in targets) and any("bulk modulus" in t for t in targets)
    text = (out / "report.md").read_text()
    assert "## Energy conservation" in text and "## Throughput" in text and "2 torch threads" in text
    # phonons of both models, and the student's frequency error against the teacher
    ph = j["phonons"]
    assert set(ph) == {"emt", "cu-sevennet-v2"} and ph["emt"]["min_frequency_thz"] > -0.05
    assert 0 < ph["cu-sevennet-v2"]["vs_teacher"]["frequency_mae_thz"] < 3.0
    assert (out / "phonons.png").stat().st_size > 0 and "## Phonons" in text
    # the slab: surface energy, NVT of both, student on the teacher's frames, OOD signal
    surf = j["surface"]
    assert surf["emt"]["facet"] == "(1,1,1)" and 0.5 < surf["emt"]["surface_energy_j_m2"] < 1.5
    st = surf["cu-sevennet-v2"]
    assert st["md_failed"] is None and st["parity_on_teacher_frames"]["n_frames"] == 5
    assert 0 <= st["flagged_fraction"] <= 1 and len(st["max_uncertainty"]) == 10
    assert "## Surface (1,1,1)" in text
    assert any("phonon" in t for t in targets) and any("surface energy" in t for t in targets)
    # a vacancy in the MD cell (antisites need two elements): EMT's, and the student's against it
    dfc = j["defect"]
    assert set(dfc["emt"]) == {"bulk_energy_ev", "vacancy:Cu", "failed"}
    assert 1.0 < dfc["emt"]["vacancy:Cu"]["formation_energy_ev"] < 1.4
    st = dfc["cu-sevennet-v2"]
    assert st["vs_teacher"]["vacancy:Cu"] == pytest.approx(
        st["vacancy:Cu"]["formation_energy_ev"] - dfc["emt"]["vacancy:Cu"]["formation_energy_ev"])
    assert "max_uncertainty" in st["vacancy:Cu"] and "## Point defects" in text
    assert any(t.startswith("vacancy:Cu formation energy") for t in targets)


def test_validate_resumes_finished_sections(quick_report):
    out, s = quick_report
    before = json.loads((out / "report.json").read_text())
    cfg = ValidateConfig.quick(progress=False, sections=("nve", "md"))
    again = validate("emt", [str(V2)], out=out, config=cfg, threads=2)
    # nothing was rerun: identical series, and the throughput section from the first run is kept
    assert again["nve"]["cu-sevennet-v2"]["total_ev"] == before["nve"]["cu-sevennet-v2"]["total_ev"]
    assert again["timing_s"]["nve"] == before["timing_s"]["nve"]
    assert again["throughput"]["rows"] == before["throughput"]["rows"]
    # a resumed phonon section compares the stored results (lists in report.json) again
    ph = validate("emt", [str(V2)], out=out, config=ValidateConfig.quick(progress=False, sections=("phonons",)), threads=2)
    assert ph["phonons"]["cu-sevennet-v2"]["vs_teacher"] == pytest.approx(before["phonons"]["cu-sevennet-v2"]["vs_teacher"])


def test_validate_rejects_elements_the_student_was_not_trained_on(tmp_path):
    with pytest.raises(ValueError, match="Al"):
        validate("emt", [str(V2)], out=tmp_path, structure=bulk("Al", "fcc", a=4.05, cubic=True),
                 config=ValidateConfig.quick(progress=False))
    with pytest.raises(FileNotFoundError, match="no-such-package"):
        validate("emt", [str(tmp_path / "no-such-package")], out=tmp_path, config=ValidateConfig.quick())


def test_cli_validate_quick(tmp_path, capsys):
    from orbdistill.cli import main

    rc = main(["validate", "--teacher", "emt", "--student", str(V2), "--out", str(tmp_path), "--quick",
               "--sections", "relax", "eos", "elastic", "--threads", "2", "--dtype", "float64"])
    assert rc == 0
    outp = capsys.readouterr().out
    assert "bulk modulus within 5 %" in outp and "report.md" in outp
    s = json.loads((tmp_path / "report.json").read_text())
    assert "nve" not in s and s["eos"]["models"]["cu-sevennet-v2"]["bulk_modulus_gpa"] > 50
    assert s["environment"]["student_dtype"] == "float64"


def test_relax_workflow_relaxes_a_folder(tmp_path):
    import csv
    import runpy

    from ase.io import read, write

    folder = tmp_path / "in"
    folder.mkdir()
    a = bulk("Cu", "fcc", a=3.5, cubic=True)
    a.rattle(0.05, seed=1)
    write(folder / "cu_compressed.cif", a)
    b = bulk("Cu", "fcc", a=3.7).repeat(2)
    b.rattle(0.05, seed=2)
    write(folder / "POSCAR_expanded", b, format="vasp")
    write(folder / "al.extxyz", bulk("Al", "fcc", a=4.05))  # not a trained element: reported, not fatal
    mod = runpy.run_path(str(ROOT / "workflows" / "relax_structures.py"))
    rows = mod["main"]([str(V2), str(folder), "--out", str(tmp_path / "out"), "--fmax", "0.005"])
    by = {r["file"]: r for r in rows}
    assert "Al" in by["al.extxyz"]["error"]
    vols = []
    for name in ("cu_compressed.cif", "POSCAR_expanded"):
        r = by[name]
        # converged to fmax 0.005; the reported force is recomputed in float32 (0.0051 seen)
        assert r["converged"] and r["max_force_ev_a"] < 1.05 * 0.005 and r["energy_ev_atom"] < r["energy_start_ev_atom"]
        vols.append(r["volume_a3_atom"])
    assert vols[0] == pytest.approx(vols[1], rel=2e-3)  # both reach the same fcc minimum
    relaxed = read(tmp_path / "out" / "cu_compressed_relaxed.extxyz")
    assert abs(relaxed.get_volume() / len(relaxed) - vols[0]) < 1e-6
    with open(tmp_path / "out" / "summary.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_a_retrained_package_does_not_reuse_old_results(tmp_path):
    import shutil

    from orbdistill.validation.suite import _fingerprint

    pkg = tmp_path / "pkg"
    shutil.copytree(V2, pkg)
    structure = bulk("Cu", "fcc", a=3.61, cubic=True)
    cfg = ValidateConfig.quick()
    before = _fingerprint("emt", [pkg], structure, cfg, "float32")
    assert _fingerprint("emt", [pkg], structure, ValidateConfig.quick(sections=("nve",)), "float32") == before
    (pkg / "model.pt").write_bytes((pkg / "model.pt").read_bytes() + b"\0")  # new weights, same path
    assert _fingerprint("emt", [pkg], structure, cfg, "float32") != before


def test_a_student_that_collapses_a_structure_is_reported_not_fatal(tmp_path):
    """The first Cu v2 student was trained on bulk only; on a 13-atom cluster its MD falls
    apart. The suite must record that (with the step) and still write its report."""
    from ase.cluster import Icosahedron

    cfg = ValidateConfig.quick(progress=False, sections=("relax", "nve", "md"))
    s = validate("emt", [str(BULK_ONLY)], out=tmp_path, structure=Icosahedron("Cu", 2), config=cfg, threads=2)
    nve = s["nve"]["cu-bulk-only-v2"]
    assert nve["failed"] and nve["steps_completed"] < nve["steps"]
    assert s["nve"]["emt"]["failed"] is None
    drift = next(r for r in s["targets"] if "drift" in r["target"])
    assert drift["pass"] is False and "failed" in drift["detail"]
    assert not any("lattice" in r["target"] for r in s["targets"])  # no cell to compare
    assert (tmp_path / "report.md").exists() and "## Relaxation" in (tmp_path / "report.md").read_text()


def test_cli_errors_are_clear_and_verbose_shows_the_traceback(tmp_path, capsys):
    from orbdistill.cli import main

    rc = main(["export", "calculators/cu-sevennet-v2/model.pt"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.pt is a file, not a package folder" in err and "utf-8" not in err
    assert "run with -v" in err
    rc = main(["-v", "export", "calculators/cu-sevennet-v2/model.pt"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback (most recent call last)" in err


def test_validate_with_a_missing_student_leaves_no_output_folder(tmp_path, capsys):
    from orbdistill.cli import main

    out = tmp_path / "report"
    rc = main(["validate", "--teacher", "emt", "--student", str(tmp_path / "nope"), "--out", str(out), "--quick"])
    assert rc == 2 and "No student package" in capsys.readouterr().err
    assert not out.exists()


def test_phonopy_frequencies_equal_ase_phonons_and_obey_the_acoustic_sum_rule(tmp_path):
    """Our phonopy path against ASE's own finite-displacement phonons (an independent
    implementation) for EMT copper, at Γ, X, L and W."""
    from ase.calculators.emt import EMT
    from ase.phonons import Phonons

    from orbdistill.validation.phonons import compare_phonons, phonons

    prim = bulk("Cu", "fcc", a=3.59)
    path = prim.cell.bandpath("GXLW", npoints=0)
    q_cart = path.kpts @ prim.cell.reciprocal()  # 1/Å, no 2π
    conv = bulk("Cu", "fcc", a=3.59, cubic=True)  # a different input cell: the same crystal
    ours = phonons(EMT(), conv, min_length=10.0, mesh=4, qpoints_cartesian=q_cart)
    assert ours["supercell"] == [3, 3, 3] and ours["n_displacements"] == 1
    ph = Phonons(prim, EMT(), supercell=(5, 5, 5), delta=0.01, name=str(tmp_path / "ase-phonons"))
    ph.run()
    ph.read(acoustic=True)
    ase_ev = ph.band_structure(path.kpts)  # eV
    from ase import units

    ase_thz = np.sort(ase_ev, axis=1) / (units._hplanck / units._e * 1e12)  # E = h nu: eV -> THz
    np.testing.assert_allclose(np.sort(ours["qpoint_frequencies_thz"], axis=1), ase_thz, atol=0.05)
    # Γ: the three acoustic modes at zero (acoustic sum rule); no imaginary mode anywhere
    assert np.abs(ours["qpoint_frequencies_thz"][0]).max() < 1e-3
    assert ours["min_frequency_thz"] > -0.01
    assert 7.0 < ours["max_frequency_thz"] < 9.0  # EMT copper (experiment: 7.3 THz)
    same = compare_phonons(ours, ours)
    assert same["frequency_mae_thz"] == 0 and same["dos_overlap"] == pytest.approx(1.0)
    softer = phonons(EMT(), bulk("Cu", "fcc", a=3.65, cubic=True), min_length=10.0, mesh=4)  # expanded: softer
    diff = compare_phonons(ours, softer)
    assert diff["max_frequency_error_thz"] < -0.3 and diff["frequency_mae_thz"] > 0.1 and diff["dos_overlap"] < 0.9


def test_point_defect_energies_are_converged_and_relaxation_lowers_them():
    """EMT's Cu vacancy (1.23 eV) in 32- and 108-atom cells, and a Cu3Au antisite pair,
    which needs no reference energy; relaxation can only lower a formation energy."""
    from ase.build import bulk as build
    from ase.calculators.emt import EMT

    from orbdistill.data.coverage import make_defect
    from orbdistill.validation.suite import point_defect_energies

    vac = []
    for n in (2, 3):
        cell = build("Cu", "fcc", a=3.59, cubic=True).repeat(n)
        e = point_defect_energies(EMT(), cell, {"vacancy:Cu": make_defect(cell, "vacancy:Cu", np.random.default_rng(0))})
        d = e["vacancy:Cu"]
        assert d["relax_converged"] and d["formation_energy_ev"] <= d["unrelaxed_ev"] and d["n_atoms"] == len(cell) - 1
        vac.append(d["formation_energy_ev"])
    assert 1.1 < vac[1] < 1.35 and vac[0] == pytest.approx(vac[1], abs=0.01)
    unit = build("Cu", "fcc", a=3.75, cubic=True)
    unit[0].symbol = "Au"  # L1_2 Cu3Au
    cell = unit.repeat(2)
    swap = make_defect(cell, "antisite:Au-Cu", np.random.default_rng(1))
    e = point_defect_energies(EMT(), cell, {"antisite:Au-Cu": swap})
    ref = cell.copy()
    ref.calc = EMT()
    s2 = swap.copy()
    s2.calc = EMT()
    assert e["antisite:Au-Cu"]["unrelaxed_ev"] == pytest.approx(s2.get_potential_energy() - ref.get_potential_energy())
    assert 0 < e["antisite:Au-Cu"]["formation_energy_ev"] <= e["antisite:Au-Cu"]["unrelaxed_ev"]


def test_surface_energies_of_fcc_facets_are_ordered_and_converged():
    from ase.calculators.emt import EMT

    from orbdistill.data.coverage import make_slab
    from orbdistill.validation.suite import surface_energy

    prim, conv = bulk("Cu", "fcc", a=3.59), bulk("Cu", "fcc", a=3.59, cubic=True)
    gamma = {}
    for miller in ((1, 1, 1), (1, 0, 0), (1, 1, 0)):
        thin, thick = (surface_energy(EMT(), prim, make_slab(conv, miller, 40, min_thickness=t))["surface_energy_j_m2"]
                       for t in (8.0, 14.0))
        assert thin == pytest.approx(thick, rel=0.01)  # converged with thickness: the two faces do not interact
        gamma[miller] = thick
    # the close-packed facet is the cheapest, the open (110) the dearest (broken bonds: 3, 4, 6 per atom)
    assert 0.5 < gamma[(1, 1, 1)] < gamma[(1, 0, 0)] < gamma[(1, 1, 0)] < 2.0


def test_phonons_of_a_two_element_crystal_equal_ase_phonons(tmp_path):
    """Masses and the primitive cell of a two-atom basis: EMT NiAl (B2) at Γ, X, M, R against
    ASE's own phonons. EMT makes B2 NiAl unstable at M (-2.23 THz in both): an imaginary
    mode is reported as a negative frequency, not hidden."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.phonons import Phonons

    from orbdistill.validation.phonons import phonons
    from orbdistill.validation.relax import relax

    crystal = relax(EMT(), bulk("NiAl", "cesiumchloride", a=2.88), fmax=1e-5, steps=300)["atoms"]
    path = crystal.cell.bandpath("GXMR", npoints=0)
    ours = phonons(EMT(), crystal, min_length=9.0, mesh=4, qpoints_cartesian=path.kpts @ crystal.cell.reciprocal())
    ph = Phonons(crystal, EMT(), supercell=(3, 3, 3), delta=0.01, name=str(tmp_path / "ase-phonons"))
    ph.run()
    ph.read(acoustic=True)
    ase_thz = np.sort(ph.band_structure(path.kpts), axis=1) / (units._hplanck / units._e * 1e12)
    np.testing.assert_allclose(np.sort(ours["qpoint_frequencies_thz"], axis=1), ase_thz, atol=0.01)
    assert ours["min_frequency_thz"] < -2.0


def test_package_speedup_times_student_and_teacher_on_the_recipe_seed():
    from orbdistill.validation.throughput import package_speedup

    out = package_speedup("cu-sevennet-v2", n_atoms=32, repeats=1, write=False)
    assert out["n_atoms"] == 32 and out["formula"] == "Cu32" and out["teacher"] == "sevennet-0"
    assert out["speedup"] > 3  # SevenNet-0 against its v2 student on Cu32 (about 20-40x measured)


def test_validate_reads_a_protocol_file_and_flags_override_it(tmp_path, monkeypatch, capsys):
    import orbdistill.validation as validation
    from orbdistill.cli import main

    seen = {}
    monkeypatch.setattr(validation, "validate", lambda *a, config=None, **k: seen.setdefault("cfg", config) and {})
    (tmp_path / "protocol.json").write_text(json.dumps({"md_timestep_fs": 1.0, "hydrogen_mass_amu": 2.014,
                                                        "md_temperatures_k": [300.0], "md_steps": 50}))
    rc = main(["validate", "--teacher", "emt", "--student", str(V2), "--out", str(tmp_path), "--config",
               str(tmp_path / "protocol.json"), "--md-steps", "80"])
    cfg = seen["cfg"]
    assert rc == 0 and cfg.md_timestep_fs == 1.0 and cfg.hydrogen_mass_amu == 2.014
    assert cfg.md_temperatures_k == (300.0,) and cfg.md_steps == 80  # the flag wins over the file
    (tmp_path / "bad.json").write_text(json.dumps({"md_timestep": 1.0}))
    assert main(["validate", "--teacher", "emt", "--student", str(V2), "--out", str(tmp_path), "--config",
                 str(tmp_path / "bad.json")]) != 0
    assert "md_timestep: unknown key" in capsys.readouterr().err


def test_the_water_protocol_compares_partial_rdfs_with_heavy_hydrogen(tmp_path):
    """workflows/validate_water.json at small size (EMT stands in for the teacher): no
    crystal sections, NVT with heavy hydrogen, O-O, O-H and H-H RDFs each with an overlap
    and a target row, and a partial-RDF plot."""
    from ase.io import read

    from orbdistill.validation.suite import within_sampling_noise

    protocol = json.loads((ROOT / "workflows" / "validate_water.json").read_text())
    protocol.update(min_atoms=96, nve_steps=20, teacher_nve_steps=10, throughput_sizes=[96], throughput_repeats=1,
                    backends=["torch"], md_temperatures_k=[300.0], md_equilibration_steps=5, md_steps=20,
                    md_sample_interval=5, parity_frames=2, relax_steps=2, memory_probe=False, include_emt=False,
                    progress=False)
    cfg = ValidateConfig.from_dict({k: tuple(v) if isinstance(v, list) else v for k, v in protocol.items()})
    assert cfg.hydrogen_mass_amu == pytest.approx(2.014) and "relax" not in cfg.sections
    box = read(ROOT / "data" / "structures" / "H2O_liquid_32.extxyz")
    s = validate("emt", [str(ROOT / "calculators" / "water-chgnet-v2")], out=tmp_path, structure=box, config=cfg,
                 threads=1)
    assert not {"eos", "elastic", "phonons", "surface", "defect"} & set(s)
    e = s["md"]["300K"]["models"]["water-chgnet-v2"]
    assert list(e["rdf"]["partial"]) == ["O-O", "O-H", "H-H"] and set(e["rdf_overlap_partial"]) == {"O-O", "O-H", "H-H"}
    assert all(0.0 <= v <= 1.0 for v in e["rdf_overlap_partial"].values())
    assert set(e["rdf_overlap_replica_partial"]) == {"O-O", "O-H", "H-H"}
    # every missed RDF target also says whether the gap exceeds the seed-to-seed noise
    noise_rows = {r["target"]: r for r in s["targets"] if "within sampling noise" in r["target"]}
    for pair in ("O-O", "O-H", "H-H"):
        missed = e["rdf_overlap_partial"][pair] <= 0.95
        row = noise_rows.get(f"RDF gap to the teacher within sampling noise ({pair}, 300K)")
        assert (row is not None) == missed
        if row:
            # independent pairs on both sides: the second seed against the teacher and against the first
            assert row["value"] == pytest.approx(1 - e["rdf_overlap_replica_teacher_partial"][pair])
            assert row["pass"] == within_sampling_noise(e["rdf_overlap_replica_teacher_partial"][pair],
                                                        e["rdf_overlap_replica_partial"][pair])
    assert "two student runs (other seeds)" in (tmp_path / "report.md").read_text()
    targets = {r["target"] for r in s["targets"]}
    assert {f"RDF overlap > 0.95 ({p}, 300K)" for p in ("O-O", "O-H", "H-H")} <= targets
    assert (tmp_path / "rdf_pairs.png").exists() and "2.014 amu" in (tmp_path / "report.md").read_text()


def test_a_gap_to_the_teacher_is_told_apart_from_seed_to_seed_noise():
    """Sampling noise of the RDF overlap: two runs of one liquid-like model from different
    seeds overlap below 1 by chance, and a gap of the same size is 'within noise' while a
    real structural shift (a peak moved by 0.1 Å) is not."""
    import doctest

    from orbdistill.validation import suite

    assert doctest.testmod(suite).failed == 0
    rng = np.random.default_rng(3)
    r = np.linspace(0.05, 6.0, 120)

    def noisy_g(shift=0.0, n_pairs=2_000):
        # a histogram of pair distances drawn from one peaked distribution: few pairs, noisy g
        d = rng.normal(2.8 + shift, 0.15, n_pairs)
        h, _ = np.histogram(d, bins=np.append(r - 0.025, 6.025))
        return h / h.max()

    same = [mdv.rdf_overlap(noisy_g(), noisy_g()) for _ in range(3)]
    assert all(o < 0.99 for o in same)  # chance alone leaves a gap
    noise = float(np.mean(same))
    assert suite.within_sampling_noise(mdv.rdf_overlap(noisy_g(), noisy_g()), noise)
    assert not suite.within_sampling_noise(mdv.rdf_overlap(noisy_g(), noisy_g(shift=0.1)), noise)


def test_slab_force_target_compares_with_bulk_md_at_the_slab_temperature():
    """The slab's force MAE is held against the bulk's at the slab's temperature (interpolated
    between the MD temperatures), not against the hottest bulk run's larger error."""
    from orbdistill.validation.suite import _bulk_force_mae_at, _targets

    def parity(f):
        return {"models": {"s": {"parity_on_teacher_frames": {"force_mae_mev_a": f}}}}

    summary = {"students": ["s"], "models": {"s": {"card_metrics": {"force_mae_mev_a": 30.0}}},
               "config": {"surface_temperature_k": 600.0, "surface_steps": 10},
               "md": {"300K": {"temperature_k": 300.0, **parity(16.0)}, "900K": {"temperature_k": 900.0, **parity(32.0)}},
               "surface": {"s": {"facet": "(1,1,1)", "md_failed": None,
                                 "parity_on_teacher_frames": {"force_mae_mev_a": 58.0},
                                 "surface_energy_rel_error": 0.01}}}
    assert _bulk_force_mae_at(summary, "s", 600.0) == pytest.approx(24.0)
    assert _bulk_force_mae_at(summary, "s", 1500.0) == pytest.approx(32.0)  # held constant outside
    row = [r for r in _targets(summary, "t") if "force MAE within 2x" in r["target"]][0]
    assert not row["pass"] and "24.0 meV/Å of bulk MD at 600 K" in row["detail"]  # 58 > 2 x 24, though < 2 x 32
    summary["surface"]["s"]["parity_on_teacher_frames"]["force_mae_mev_a"] = 47.0
    assert [r for r in _targets(summary, "t") if "force MAE within 2x" in r["target"]][0]["pass"]
    del summary["md"]  # no MD section: the card's held-out MAE
    assert _bulk_force_mae_at(summary, "s", 600.0) == 30.0
