"""On-policy distillation: a bulk-trained student explores slabs and clusters, the teacher
labels where it is unsure, and the retrained student is better there; rounds resume."""

import json
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import read

from orbdistill import onpolicy
from orbdistill.onpolicy import OnPolicyConfig, audit_run, candidates, explore, run_onpolicy, start_structures
from orbdistill.training import trainer as trainer_module

from conftest import small_config


def test_divergence_stops_a_run_and_keeps_the_frames_before_it():
    from ase.build import bulk

    class Exploding(EMT):
        """EMT whose forces blow up after a few calls."""

        calls = 0

        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            Exploding.calls += 1
            if Exploding.calls > 12:
                self.results["forces"] = self.results["forces"] * 1e4

    cfg = OnPolicyConfig(rounds=1, steps=200, sample_interval=5, frames_before_failure=2)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    res = explore(Exploding(), atoms, 300.0, cfg)
    assert res["failed"] and "force" in res["failed"] and res["steps_completed"] < 200
    assert len(res["frames"]) >= 2 and np.isnan(res["uncertainty"]).all()  # EMT has no signal
    assert candidates(res, None, cfg) == [len(res["frames"]) - 2, len(res["frames"]) - 1]
    calm = explore(EMT(), atoms, 300.0, OnPolicyConfig(rounds=1, steps=40, sample_interval=10))
    assert calm["failed"] is None and calm["steps_completed"] == 40 and len(calm["frames"]) == 5
    # above-threshold frames are candidates, the rest are not
    fake = {"uncertainty": [0.5, 3.0, 1.0, 2.5], "failed": None}
    assert candidates(fake, 2.0, cfg) == [1, 3]
    # and so are frames whose estimated force error is above the card's bar
    fake["force_error"] = [0.05, 0.01, float("nan"), 0.02]
    assert candidates(fake, 2.0, cfg, force_error_bar=0.03) == [0, 1, 3]
    assert candidates(fake, None, cfg, force_error_bar=0.03) == [0]
    # a run's flagged share counts a frame once, whichever signal flags it
    from orbdistill.onpolicy import flagged_fraction

    assert flagged_fraction(fake, 2.0) == 0.5
    assert flagged_fraction(fake, 2.0, force_error_bar=0.03) == 0.75
    assert flagged_fraction(fake, None, force_error_bar=0.03) is None


def test_an_audit_labels_unpicked_frames_and_measures_the_students_error():
    from ase.build import bulk

    from orbdistill import load_teacher
    from orbdistill.data.generate import GenerateConfig

    class Shifted(EMT):
        """A 'student' whose every force component is 0.1 eV/Å too high."""

        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            self.results["forces"] = self.results["forces"] + 0.1

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    run = explore(EMT(), atoms, 600.0, OnPolicyConfig(rounds=1, steps=90, sample_interval=10))
    for f in run["frames"]:
        f.info.update(start="bulk", temperature_K=600.0)
    audit = audit_run(run, [0, 1, 2], Shifted(), load_teacher("emt"), GenerateConfig(), 1, 3)
    assert len(audit) == 3
    # evenly spaced over the frames the signal did not pick, first and last included
    first, last = run["frames"][3], run["frames"][-1]
    np.testing.assert_allclose(audit[0].positions, first.positions)
    np.testing.assert_allclose(audit[-1].positions, last.positions)
    for f in audit:  # teacher labels, and the student's error against them
        ref = f.copy()
        ref.calc = EMT()
        np.testing.assert_allclose(f.get_forces(), ref.get_forces(), atol=1e-10)
        assert f.info["audit_force_mae_mev_a"] == pytest.approx(100.0, rel=1e-9)
    assert audit_run(run, [], Shifted(), load_teacher("emt"), GenerateConfig(), 1, 0) == []


def test_onpolicy_starts_cover_every_listed_facet_and_cluster_size():
    from ase.build import bulk

    old = OnPolicyConfig.from_dict({"rounds": 1, "surface_miller": [1, 0, 0], "cluster_size": 19})
    assert old.surface_millers == [(1, 0, 0)] and old.cluster_sizes == [19]
    with pytest.raises(ValueError, match="not both"):
        OnPolicyConfig.from_dict({"cluster_size": 19, "cluster_sizes": [13]})
    cfg = OnPolicyConfig(rounds=1, size=32, surface_millers=[(1, 0, 0), (1, 1, 1)], cluster_sizes=[13, 38])
    starts = start_structures([bulk("Cu", "fcc", a=3.61)], cfg)
    assert sorted(starts) == ["Cu-0-bulk", "Cu-0-cluster13", "Cu-0-cluster38", "Cu-0-surface100",
                              "Cu-0-surface111", "Cu-0-vacancy"]
    assert len(starts["Cu-0-cluster13"]) == 13 and not starts["Cu-0-cluster38"].pbc.any()
    for name in ("Cu-0-surface100", "Cu-0-surface111"):
        z = starts[name].positions[:, 2]
        assert starts[name].cell[2, 2] - (z.max() - z.min()) >= 12.0 - 1e-6  # a vacuum gap along c
    # (100) and (111) slabs differ: their surface atoms have 8 and 9 neighbours
    from ase.neighborlist import neighbor_list

    top_cn = []
    for name in ("Cu-0-surface100", "Cu-0-surface111"):
        s = starts[name]
        i = neighbor_list("i", s, 2.9)
        cn = np.bincount(i, minlength=len(s))
        top_cn.append(int(cn[s.positions[:, 2] > s.positions[:, 2].max() - 0.3].min()))
    assert top_cn == [8, 9]


def test_onpolicy_rounds_learn_what_the_student_gets_wrong_and_resume(tmp_path, monkeypatch, bulk_only):
    import shutil

    cfg = small_config(tmp_path)  # bulk only
    cfg["onpolicy"] = {"rounds": 2, "starts": ["surface", "cluster"], "size": 32, "cluster_size": 19,
                       "temperatures_k": [500.0], "steps": 120, "sample_interval": 4, "max_new_frames": 40,
                       "epochs": 15, "lr": 2e-3, "audit_frames": 2}
    base, _ = bulk_only  # the same recipe, distilled once for the session: a copy is the start
    shutil.copytree(base["work_dir"], cfg["work_dir"])
    shutil.copytree(base["package_dir"], cfg["package_dir"])
    pkg = Path(cfg["package_dir"])
    start_card = json.loads((pkg / "card.json").read_text())
    start_sha = start_card["weights_sha256"]

    # 1) interrupted while training round 1: the labelled frames survive
    def crash(self, *a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_module.Trainer, "fit", crash)
    with pytest.raises(KeyboardInterrupt):
        run_onpolicy(cfg, progress=False, log_fn=None)
    monkeypatch.undo()
    chunk = tmp_path / "run" / "onpolicy" / "round-01.extxyz"
    labelled = read(chunk, index=":")
    assert labelled, "the bulk-trained student found nothing to label on a slab and a cluster"
    # every new frame carries the teacher's labels for its positions
    for f in labelled[:5]:
        ref = f.copy()
        ref.calc = EMT()
        # (extxyz keeps positions to ~1e-8 Å)
        assert f.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(f.get_forces(), ref.get_forces(), atol=1e-6)
        assert f.info["protocol"] == "onpolicy" and f.info["round"] == 1 and f.info["start"].endswith(("surface", "cluster"))

    # 2) resumed: round 1 is not explored again, it is trained; round 2 explores
    calls = []
    real = onpolicy.explore
    monkeypatch.setattr(onpolicy, "explore", lambda *a, **k: calls.append(1) or real(*a, **k))
    state = run_onpolicy(cfg, progress=False, log_fn=None)
    r1 = state["rounds"][0]
    assert r1["labelled"] == len(labelled)
    # every run was audited where the signal left frames unpicked; the audited frames that
    # were wrong joined the labelled ones
    assert all(v["audited"] == min(2, v["frames"] - v["candidates"]) for v in r1["runs"].values())
    assert sum(v["audited"] for r in state["rounds"] for v in r["runs"].values()) > 0
    audited = [f for f in labelled if "audit_force_mae_mev_a" in f.info]
    assert len(audited) == r1["audit_failed"] == sum(v["audit_failed"] for v in r1["runs"].values())
    assert all(f.info["audit_force_mae_mev_a"] > r1["audit_limit_mev_a"] for f in audited)
    assert len(state["rounds"]) == 2 and len(calls) == 2  # only round 2 explored (2 starts x 1 temperature)
    # the student learned the frames it got wrong
    assert r1["new_frame_errors_after"]["force_mae_mev_a"] < 0.7 * r1["new_frame_errors_before"]["force_mae_mev_a"]
    # the package is the last round's student, with its history
    card = json.loads((pkg / "card.json").read_text())
    assert card["weights_sha256"] != start_sha and len(card["onpolicy"]) == len(state["rounds"])
    assert (pkg / "domain.pt").exists() and card["domain"]["ood"]["threshold"] > 0
    # the threshold is calibrated on every frame the student was not trained on: the held-out
    # trajectories and the on-policy validation frames (every fifth)
    n_new = sum(r["labelled"] for r in state["rounds"])
    assert card["domain"]["ood"]["n_frames"] == start_card["domain"]["ood"]["n_frames"] + n_new // 5
    # less of the student's own slab and cluster MD is out of its domain after the rounds
    flagged = lambda rnd: np.mean([v["flagged_fraction"] for v in rnd["runs"].values()])  # noqa: E731
    assert flagged(state["rounds"][1]) < flagged(r1)

    # 3) a finished loop does nothing
    calls.clear()
    again = run_onpolicy(cfg, progress=False, log_fn=None)
    assert len(again["rounds"]) == len(state["rounds"]) and not calls


def test_onpolicy_needs_rounds_and_a_package(tmp_path):
    cfg = small_config(tmp_path)
    with pytest.raises(ValueError, match="onpolicy.rounds is 0"):
        run_onpolicy(cfg, progress=False, log_fn=None)
    cfg["onpolicy"] = {"rounds": 1}
    with pytest.raises(FileNotFoundError, match="run `orbdistill distill` first"):
        run_onpolicy(cfg, progress=False, log_fn=None)
