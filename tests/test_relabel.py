"""A second teacher's labels on the first teacher's configurations: ``relabel`` on a
finished folder, and ``sampler`` in ``generate`` and in a distillation config."""

import json

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from orbdistill.config import ConfigError
from orbdistill.data.generate import GenerateConfig, generate, read_frames
from orbdistill.data.relabel import relabel
from orbdistill.pipeline import distill, load_config
from orbdistill.teachers import load_teacher
from orbdistill.teachers.ase_calculators import teacher_from_calculator

GEN = dict(seeds=["bulk:Cu:fcc:3.61"], sizes=[32], timestep_fs=4.0, nvt_temperatures_k=[600.0],
           nvt_equilibration_steps=2, nvt_interval_steps=2, nvt_frames=3, strain_frames=4, strain_frames_per_task=2,
           coverage=["surface"], surface_millers=[(1, 1, 1)], surface_temperatures_k=[600.0], surface_frames=2,
           surface_rattle_relax_starts=0)


def lj_teacher():
    return teacher_from_calculator(LennardJones(sigma=2.33, epsilon=0.41, rc=5.0, smooth=True), name="lj-cu",
                                   species=[29])


class ScaledEMT(EMT):
    """EMT with every energy, force and stress multiplied by ``factor``: a second teacher
    that disagrees with EMT by a known amount."""

    def __init__(self, factor=2.5, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes)
        for key in ("energy", "free_energy", "energies", "forces", "stress", "stresses"):
            if key in self.results:
                self.results[key] = self.results[key] * self.factor


def by_key(frames):
    return {(f.info["traj_id"], f.info["frame_index"]): f for f in frames}


@pytest.fixture(scope="module")
def emt_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("emt") / "data"
    generate(GenerateConfig(**GEN), load_teacher("emt"), out, progress=False)
    return out


def test_relabel_keeps_configurations_and_puts_the_new_teachers_labels(emt_folder, tmp_path):
    lj = lj_teacher()
    m = relabel(emt_folder, tmp_path / "lj", lj, progress=False)
    src, new = by_key(read_frames(emt_folder)), by_key(read_frames(tmp_path / "lj"))
    assert m["complete"] and m["teacher"]["name"] == "lj-cu" and m["sampler"]["name"] == "emt"
    assert set(src) == set(new) and m["n_frames"] == len(src) > 0
    protocols = set()
    calc = LennardJones(sigma=2.33, epsilon=0.41, rc=5.0, smooth=True)
    for key, f in new.items():
        s = src[key]
        assert np.array_equal(f.positions, s.positions) and np.array_equal(f.cell.array, s.cell.array)
        assert f.info["teacher"] == "lj-cu" and f.info["sampler"] == "emt" and f.info["protocol"] == s.info["protocol"]
        ref = s.copy()
        ref.calc = calc
        assert f.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)
        assert np.allclose(f.get_forces(), ref.get_forces(), atol=1e-10)
        assert abs(f.get_potential_energy() - s.get_potential_energy()) > 1e-3  # really another teacher's
        if s.pbc.all():
            assert np.allclose(f.get_stress(), ref.get_stress(), atol=1e-10)
        else:
            assert "stress" not in f.calc.results
        protocols.add(f.info["protocol"])
    assert protocols == {"nvt", "strain", "surface"}


def test_relabel_resumes_without_relabelling_finished_tasks(emt_folder, tmp_path):
    lj = lj_teacher()
    m = relabel(emt_folder, tmp_path / "lj", lj, progress=False, max_tasks=1)
    assert not m["complete"] and len(m["tasks"]) == 1
    first = next(iter(m["tasks"]))
    stamp = (tmp_path / "lj" / m["tasks"][first]["file"]).stat().st_mtime_ns
    m = relabel(emt_folder, tmp_path / "lj", lj, progress=False)
    assert m["complete"] and (tmp_path / "lj" / m["tasks"][first]["file"]).stat().st_mtime_ns == stamp
    full = relabel(emt_folder, tmp_path / "straight", lj, progress=False)
    a, b = by_key(read_frames(tmp_path / "lj")), by_key(read_frames(tmp_path / "straight"))
    assert set(a) == set(b) and all(a[k].get_potential_energy() == b[k].get_potential_energy() for k in a)
    assert full["n_frames"] == m["n_frames"]


def test_generate_with_a_sampler_equals_generate_then_relabel(emt_folder, tmp_path):
    """The sampler runs the MD, the teacher labels the kept frames; the folder ``relabel``
    makes is the one generate resumes from, with nothing left to do."""
    cfg = GenerateConfig(**GEN)
    lj = lj_teacher()
    direct = generate(cfg, lj, tmp_path / "direct", progress=False, sampler=load_teacher("emt"))
    assert direct["sampler"]["name"] == "emt" and direct["complete"]
    relabelled = relabel(emt_folder, tmp_path / "relabelled", lj, progress=False)
    a, b = by_key(read_frames(tmp_path / "direct")), by_key(read_frames(tmp_path / "relabelled"))
    assert set(a) == set(b)
    for k in a:  # equal to the precision of the source folder's files (8 decimals in Å)
        assert np.allclose(a[k].positions, b[k].positions, rtol=0, atol=1e-8)
        assert a[k].get_potential_energy() == pytest.approx(b[k].get_potential_energy(), abs=1e-6)
    # resuming the relabelled folder with the same teacher and sampler labels nothing
    before = json.loads((tmp_path / "relabelled" / "manifest.json").read_text())["tasks"]
    again = generate(cfg, lj, tmp_path / "relabelled", progress=False, sampler=load_teacher("emt"))
    assert again["complete"] and again["tasks"] == before
    # ... and without the sampler it is refused by name
    with pytest.raises(ValueError, match="sampled with 'emt'"):
        generate(cfg, lj, tmp_path / "relabelled", progress=False)


def test_relabel_refuses_an_unfinished_or_same_teacher_source(tmp_path, emt_folder):
    with pytest.raises(ValueError, match="already labelled by 'emt'"):
        relabel(emt_folder, tmp_path / "x", load_teacher("emt"), progress=False)
    partial = tmp_path / "partial"
    generate(GenerateConfig(**GEN), load_teacher("emt"), partial, progress=False, max_tasks=1)
    with pytest.raises(ValueError, match="not complete"):
        relabel(partial, tmp_path / "y", lj_teacher(), progress=False)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        relabel(tmp_path / "nothing", tmp_path / "z", lj_teacher(), progress=False)
    with pytest.raises(ValueError, match="^sampler: .*does not cover Cu"):
        generate(GenerateConfig(**GEN), lj_teacher(), tmp_path / "v", progress=False,
                 sampler=teacher_from_calculator(EMT(), name="emt-au", species=[79]))
    with pytest.raises(ValueError, match="does not cover Cu"):
        relabel(emt_folder, tmp_path / "w", teacher_from_calculator(EMT(), name="emt-au", species=[79]),
                progress=False)


def test_a_distillation_config_names_its_sampler(tmp_path):
    base = {"name": "cu-two", "teacher": {"name": "emt"}, "sampler": {"name": "emt"},
            "student": {"kind": "v2", "overrides": {"num_features": 8, "num_vector_features": 2, "num_layers": 1}},
            "generate": {**{k: (list(map(list, v)) if k == "surface_millers" else v) for k, v in GEN.items()}},
            "train": {"epochs": 1, "batch_size": 4, "warmup_epochs": 1}, "split": [0.5, 0.25, 0.25],
            "work_dir": str(tmp_path / "run"), "package_dir": str(tmp_path / "pkg")}
    cfg = load_config(base)
    assert cfg["sampler"] == {"name": "emt", "weights": None}
    distill(cfg, progress=False, log_fn=None)
    card = json.loads((tmp_path / "pkg" / "card.json").read_text())
    assert card["sampler"]["name"] == "emt"
    assert "sampled by MD and relaxations of `emt`" in (tmp_path / "pkg" / "README.md").read_text()
    with pytest.raises(ConfigError, match="sampler.name = 'sevennet-9'"):
        load_config({**base, "sampler": {"name": "sevennet-9"}})
    with pytest.raises(ConfigError, match="sampler: unknown keys"):
        load_config({**base, "sampler": {"name": "emt", "modall": "PBE"}})
    assert load_config({k: v for k, v in base.items() if k != "sampler"})["sampler"] is None


def test_two_teachers_two_students_on_the_same_held_out_frames(tmp_path):
    """Distil from EMT, relabel the data with a second teacher (EMT x 2.5), distil again: the
    teachers' disagreement is measured on the frames both packages held out, and each
    student is closer to its own teacher than to the other."""
    from orbdistill.validation.teachers import compare_teachers

    gen = {**{k: (list(map(list, v)) if k == "surface_millers" else v) for k, v in GEN.items()},
           "nvt_trajectories_per_temperature": 3, "nvt_frames": 4, "surface_temperatures_k": [300.0, 600.0]}
    base = {"student": {"kind": "v2", "overrides": {"num_features": 16, "num_vector_features": 4, "num_layers": 2}},
            "generate": gen, "train": {"epochs": 25, "batch_size": 2, "warmup_epochs": 1, "lr": 1e-2},
            "split": [0.5, 0.25, 0.25], "split_method": "stratified"}
    a = load_config({**base, "name": "cu-emt", "teacher": {"name": "emt"}, "work_dir": str(tmp_path / "a"),
                     "package_dir": str(tmp_path / "cu-emt")})
    distill(a, progress=False, log_fn=None)
    lj = teacher_from_calculator(ScaledEMT(2.5), name="emt-x2.5", species=[29])
    relabel(tmp_path / "a" / "data", tmp_path / "b" / "data", lj, progress=False)
    b = load_config({**base, "name": "cu-x", "teacher": {"name": "emt"}, "sampler": {"name": "emt"},
                     "work_dir": str(tmp_path / "b"), "package_dir": str(tmp_path / "cu-x")})
    distill(b, progress=False, log_fn=None, teacher=lj)  # the folder is complete: nothing is labelled again
    timing = json.loads((tmp_path / "cu-x" / "card.json").read_text())["timing"]
    assert timing["data_tasks_s"] > 0 and timing["sampler_tasks_s"] > 0  # relabelling, and the MD it reused
    assert "sampler_tasks_s" not in json.loads((tmp_path / "cu-emt" / "card.json").read_text())["timing"]
    r = compare_teachers([tmp_path / "cu-emt", tmp_path / "cu-x"], out=tmp_path / "cmp", progress=False)
    assert r["teachers"] == ["emt", "emt-x2.5"] and r["n_frames"] > 0
    # the teachers' disagreement equals the labels' difference computed here
    from orbdistill.validation.teachers import held_out_frames

    frames = held_out_frames(tmp_path / "cu-emt")
    calc = ScaledEMT(2.5)
    df = []
    for f in frames:
        g = f.copy()
        g.calc = calc
        df.append(np.abs(f.get_forces() - g.get_forces()).ravel())
    assert len(frames) == r["n_frames"]
    assert r["pairs"]["emt vs emt-x2.5"]["all"]["force_mae_mev_a"] == pytest.approx(1e3 * np.concatenate(df).mean())
    for name, own, other in (("cu-emt", "emt", "emt-x2.5"), ("cu-x", "emt-x2.5", "emt")):
        s = r["students"][name]
        assert s["teacher"] == own
        assert s[f"vs {own}"]["all"]["force_mae_mev_a"] < s[f"vs {other}"]["all"]["force_mae_mev_a"]
    assert set(r["frames_by_group"]) == {"bulk", "surface"}
    for f in ("teachers.json", "teachers.md", "teachers.png"):
        assert (tmp_path / "cmp" / f).stat().st_size > 0
    from orbdistill.cli import main

    assert main(["compare-teachers", str(tmp_path / "cu-emt"), str(tmp_path / "cu-x"), "--out", str(tmp_path / "c2")]) == 0
    again = json.loads((tmp_path / "c2" / "teachers.json").read_text())
    assert again["pairs"] == r["pairs"]
    # a data folder of other configurations under the same trajectory names is refused by name
    other = tmp_path / "other"
    generate(GenerateConfig(**{**GEN, "nvt_trajectories_per_temperature": 3, "nvt_frames": 4,
                               "surface_temperatures_k": [300.0, 600.0], "seed": 7}), lj, other, progress=False)
    with pytest.raises(ValueError, match="positions differ"):
        compare_teachers([tmp_path / "cu-emt", tmp_path / "cu-x"], [tmp_path / "a" / "data", other], progress=False)
    with pytest.raises(ValueError, match="share a teacher"):
        compare_teachers([tmp_path / "cu-emt", tmp_path / "cu-emt"], progress=False)


def test_relabel_command_with_a_pretrained_teacher(emt_folder, tmp_path, capsys):
    from orbdistill.cli import main

    assert main(["relabel", str(emt_folder), str(tmp_path / "7net"), "--teacher", "sevennet-0", "--threads", "1"]) == 0
    m = json.loads((tmp_path / "7net" / "manifest.json").read_text())
    assert m["complete"] and m["teacher"]["name"] == "sevennet-0" and m["sampler"]["name"] == "emt"
    assert "sampled by emt" in capsys.readouterr().out
    frames = read_frames(tmp_path / "7net")
    assert frames and all(f.info["teacher"] == "sevennet-0" for f in frames)
    # SevenNet-0 and EMT agree on copper's forces to a few tenths of an eV/Å, not to the last digit
    src = by_key(read_frames(emt_folder))
    df = np.concatenate([np.abs(f.get_forces() - src[k].get_forces()).ravel() for k, f in by_key(frames).items()])
    assert 1e-3 < df.mean() < 0.5
