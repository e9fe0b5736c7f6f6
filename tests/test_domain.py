"""The per-atom out-of-domain signal: what it measures and that it is invariant."""

import re

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc100

from orbdistill.graph import build_graph
from orbdistill.models import build_student
from orbdistill.models.domain import DomainModel


def test_training_atoms_score_about_one_and_far_points_score_high():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 8, generator=g, dtype=torch.float64) @ torch.diag(torch.tensor([3.0, 1, 1, 1, 0.5, 1, 2, 1], dtype=torch.float64))
    z = torch.full((4000,), 29)
    dom = DomainModel.fit(x, z)
    u = dom(x.float(), z)
    assert 0.9 < float(u.median()) < 1.1  # normalised Mahalanobis distance of the training points
    far = x[:10].float() + 10.0
    assert float(dom(far, z[:10]).min()) > 3 * float(u.max())
    assert torch.isinf(dom(x[:3].float(), torch.tensor([26, 26, 26]))).all()  # an element never seen


def test_domain_model_of_two_elements_scores_each_against_its_own_atoms():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(500, 4, generator=g)
    b = torch.randn(500, 4, generator=g) + 5.0
    dom = DomainModel.fit(torch.cat([a, b]), torch.tensor([8] * 500 + [1] * 500))
    assert float(dom(b[:50], torch.full((50,), 1)).median()) < 1.5
    assert float(dom(b[:50], torch.full((50,), 8)).median()) > 3  # 5 sigma away per feature: about 5; scored as O


def test_signal_is_invariant_under_rotation_translation_and_permutation():
    torch.manual_seed(0)
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2).double()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=2)

    def features(a):
        gr = build_graph(a, model.cutoff, dtype=torch.float64)
        return model.invariant_features(gr.edge_vectors(), gr.atomic_numbers, gr.edge_index), gr.atomic_numbers

    f0, z0 = features(atoms)
    dom = DomainModel.fit(f0, z0).double()
    u0 = dom(f0, z0)
    from scipy.spatial.transform import Rotation

    R = Rotation.random(random_state=3).as_matrix()
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ R.T, scale_atoms=False)
    moved.positions = atoms.positions @ R.T + [3.0, -1.0, 7.0]
    perm = np.random.default_rng(0).permutation(len(atoms))
    moved = moved[perm]
    f1, z1 = features(moved)
    torch.testing.assert_close(dom(f1, z1), u0[perm], atol=1e-8, rtol=0)


def test_features_come_from_the_same_forward_pass_as_the_energy():
    model = build_student("v2", [29], num_features=16, num_vector_features=4, num_layers=2)
    slab = fcc100("Cu", (2, 2, 3), vacuum=6.0)
    g = build_graph(slab, model.cutoff)
    plain = model.predict(g)
    with_f = model.predict(g, features=True)
    assert torch.equal(plain["energy"], with_f["energy"]) and torch.equal(plain["forces"], with_f["forces"])
    assert with_f["features"].shape == (len(slab), 16)


def test_a_bad_on_extrapolation_value_is_named():
    from orbdistill.calculator import StudentCalculator

    with pytest.raises(ValueError, match="on_extrapolation"):
        StudentCalculator("cu-sevennet-v2", on_extrapolation="shout")


def _synthetic_frames(model, rng, n_frames=60, species=(29,)):
    """Held-out frames whose force MAE is exactly the model's mean estimate times a
    log-normal factor (spread 0.1)."""
    frames = []
    for _ in range(n_frames):
        n = int(rng.integers(8, 40))
        u = np.exp(rng.normal(0.0, 0.6, n)) * (1 + 3 * rng.random())  # frames of different distance
        f = np.exp(rng.normal(-1.5, 0.8, n)) * (1 + 4 * rng.random())  # and different temperature
        z = rng.choice(species, n)
        mae = float(model(u, f, z).mean()) * float(np.exp(rng.normal(0, 0.1)))
        frames.append({"u": u, "force_norm": f, "atomic_numbers": z, "force_mae": mae})
    return frames


def test_force_error_model_fit_recovers_the_exponents_and_scales_it_was_made_with():
    from orbdistill.models.domain import ForceErrorModel

    truth = ForceErrorModel({8: 0.004, 1: 0.010}, u_exponent=1.5, force_exponent=0.8, force_floor_ev_a=0.05)
    frames = _synthetic_frames(truth, np.random.default_rng(0), n_frames=200, species=(1, 8))
    fit = ForceErrorModel.fit(frames, force_floor_ev_a=0.05)
    assert abs(fit.u_exponent - 1.5) < 0.1 and abs(fit.force_exponent - 0.8) < 0.1
    assert fit.scale[1] / fit.scale[8] == pytest.approx(2.5, rel=0.2)
    # round trip through the card's JSON
    again = ForceErrorModel.from_dict(fit.to_dict())
    u, f, z = frames[0]["u"], frames[0]["force_norm"], frames[0]["atomic_numbers"]
    np.testing.assert_allclose(again(u, f, z), fit(u, f, z))
    # an estimate grows with the distance and with the force, and an unknown element is inf
    assert fit(np.array([4.0]), np.array([0.2]), np.array([8]))[0] > fit(np.array([1.0]), np.array([0.2]), np.array([8]))[0]
    assert fit(np.array([1.0]), np.array([2.0]), np.array([8]))[0] > fit(np.array([1.0]), np.array([0.2]), np.array([8]))[0]
    assert np.isinf(fit(np.array([1.0]), np.array([0.2]), np.array([26]))[0])
    with pytest.raises(ValueError, match="at least 5"):
        ForceErrorModel.fit(frames[:3])
    # frames whose forces vanish (an isolated atom) are left out, not fitted as an error of zero
    atom = {"u": np.array([1.0]), "force_norm": np.array([0.0]), "atomic_numbers": np.array([8]), "force_mae": 0.0}
    with_atoms = ForceErrorModel.fit(frames + [atom] * 20, force_floor_ev_a=0.05)
    assert with_atoms.u_exponent == pytest.approx(fit.u_exponent, rel=1e-6)


def test_force_error_scales_stay_finite_when_every_frame_has_the_same_composition():
    """Frames of fixed stoichiometry (two H per O) determine only a mix of the element
    scales; the fit settles on comparable scales, not an arbitrary split (one near zero)."""
    from orbdistill.models.domain import ForceErrorModel

    rng = np.random.default_rng(3)
    truth = ForceErrorModel({8: 0.002, 1: 0.03}, u_exponent=1.0, force_exponent=0.5, force_floor_ev_a=0.05)
    frames = []
    for _ in range(80):
        z = np.array([8, 1, 1] * int(rng.integers(4, 12)))
        u = np.exp(rng.normal(0.0, 0.5, len(z))) * (1 + 2 * rng.random())
        f = np.exp(rng.normal(-1.0, 0.6, len(z)))
        frames.append({"u": u, "force_norm": f, "atomic_numbers": z,
                       "force_mae": float(truth(u, f, z).mean()) * float(np.exp(rng.normal(0, 0.1)))})
    fit = ForceErrorModel.fit(frames, force_floor_ev_a=0.05)
    assert 0.2 < fit.scale[8] / fit.scale[1] < 5.0


def test_domain_flags_name_each_reason_and_pass_a_structure_inside_both():
    from orbdistill.models.domain import domain_flags

    ood = {"threshold": 3.0, "force_error": {"threshold_ev_a": 0.030, "bar_factor": 3}}
    assert domain_flags(2.0, 0.010, ood) == []
    (r,) = domain_flags(5.0, 0.010, ood)
    assert "uncertainty 5.00 > threshold 3.00" in r
    (r,) = domain_flags(2.0, 0.045, ood)
    assert "estimated force error 45 meV/Å > 30 meV/Å" in r
    assert len(domain_flags(5.0, 0.045, ood)) == 2
    assert domain_flags(5.0, None, {"threshold": 3.0}) and not domain_flags(2.0, 9.0, {"threshold": 3.0})


def test_calculator_reports_force_errors_and_warns_when_the_estimate_crosses_the_bar(tmp_path):
    """A package whose card carries a force-error model: per-atom estimates that follow
    the model, and a warning that names the estimate when only the bar is crossed."""
    import json
    import shutil
    import warnings
    from pathlib import Path

    from orbdistill.calculator import ExtrapolationWarning, StudentCalculator
    from orbdistill.models.domain import ForceErrorModel

    src = Path(__file__).resolve().parents[1] / "calculators" / "cu-sevennet-v2"
    pkg = tmp_path / "cu-test"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("*.onnx", "*.torchscript", "*.lammps.pt"))
    card = json.loads((pkg / "card.json").read_text())
    model = ForceErrorModel({29: 0.01}, 1.0, 1.0, 0.05)
    card["domain"]["ood"]["force_error"] = {**model.to_dict(), "threshold_ev_a": 1e-4, "bar_factor": 3}
    card["domain"]["ood"]["threshold"] = 1e6  # the distance never flags here
    (pkg / "card.json").write_text(json.dumps(card))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=0)
    atoms.calc = StudentCalculator(pkg)
    with pytest.warns(ExtrapolationWarning, match="estimated force error"):
        forces = atoms.get_forces()
    r = atoms.calc.results
    np.testing.assert_allclose(r["force_error"], model(r["uncertainty"], np.linalg.norm(forces, axis=1), atoms.numbers))
    assert r["mean_force_error"] == pytest.approx(r["force_error"].mean())
    assert atoms.calc.out_of_domain and "force error" in atoms.calc.out_of_domain[0]
    # with a bar above the estimate: no warning, nothing flagged
    card["domain"]["ood"]["force_error"]["threshold_ev_a"] = 10.0
    (pkg / "card.json").write_text(json.dumps(card))
    atoms.calc = StudentCalculator(pkg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atoms.get_forces()
    assert atoms.calc.out_of_domain == []


def test_recalibrating_a_package_rewrites_its_card_sections_and_keeps_hand_written_ones(tmp_path):
    """write_domain (used by `orbdistill calibrate` and the on-policy rounds) rewrites the README
    from the card: generated sections follow the new calibration, a section a person added
    after packaging survives, and a stale copy of a generated section does not."""
    import shutil
    from pathlib import Path

    from orbdistill.export.package import write_domain
    from orbdistill.models.domain import DOMAIN_FILE
    from orbdistill.packages import read_card

    src = Path(__file__).resolve().parents[1] / "calculators" / "cu-sevennet-v2"
    pkg = tmp_path / "cu-test"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("*.onnx", "*.torchscript", "*.lammps.pt"))
    readme = pkg / "README.md"
    note = "## Known limits\n\n- Cu2 dimers are flagged (u 20.2); measured by hand.\n"
    old = readme.read_text()
    bulk_row = re.search(r"\| bulk \| \d+ \|", old).group(0)  # the held-out table's bulk row: frame count
    old_threshold = f"{read_card(pkg)['domain']['ood']['threshold']:.2f}"
    stale = old.replace(bulk_row, "| bulk | 999 |")  # a hand edit inside a generated section
    assert stale != old and old_threshold in old.split("## Held-out")[0]
    readme.write_text(stale.rstrip("\n") + "\n\n" + note)
    domain = DomainModel.from_state(torch.load(pkg / DOMAIN_FILE, weights_only=False))
    info = {**read_card(pkg)["domain"]["ood"], "threshold": 123.45}
    write_domain(pkg, domain, info)
    text = readme.read_text()
    assert "out-of-domain threshold | 123.45" in text and old_threshold not in text.split("## Held-out")[0]
    assert text.rstrip("\n").endswith(note.rstrip("\n"))
    assert text.count("## Known limits") == 1 and text.count("## Held-out errors") == 1
    assert bulk_row in text and "| bulk | 999 |" not in text
    # a card without the coverage table (a package retrained on other data) drops the old table
    from orbdistill.export.package import CARD_SECTIONS, card_markdown, readme_text

    card = read_card(pkg)
    card.pop("coverage")
    assert "## Domain covered" not in readme_text(card, text)
    assert "## Known limits" in readme_text(card, text)
    assert {h[3:] for h in card_markdown(read_card(pkg)).splitlines() if h.startswith("## ")} <= CARD_SECTIONS
