"""Coverage protocols: what a seed is, slabs, defects, clusters, volume scans, and the
farthest-point selection of frames."""

import doctest
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from orbdistill.data import coverage, selection
from orbdistill.data.coverage import (liquid_interface, make_cluster, make_defect, make_slab, seed_kind,
                                      seed_supercell, vacuum_axis, whole_molecules)
from orbdistill.data.generate import GenerateConfig, generate, plan_tasks, read_frames
from orbdistill.graph import min_pair_distance
from orbdistill.structures import supercell
from orbdistill.teachers import load_teacher

CU = bulk("Cu", "fcc", a=3.61, cubic=True)


def water_box(n_side=2, spacing=3.1, shift=1.2, seed=0):
    """Water molecules on a grid, shifted so that some cross the cell boundary."""
    rng = np.random.default_rng(seed)
    box = Atoms(cell=[n_side * spacing] * 3, pbc=True)
    for i in range(n_side):
        for j in range(n_side):
            for k in range(n_side):
                m = molecule("H2O")
                m.rotate(rng.uniform(0, 360), "z")
                m.rotate(rng.uniform(0, 360), "x")
                m.translate(np.array([i, j, k]) * spacing + 1.0)
                box += m
    box.positions[:, 0] -= shift
    box.wrap()
    return box


def test_module_examples_run():
    for module in (coverage, selection):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


@pytest.mark.parametrize("atoms, kind", [
    (bulk("Cu", "fcc", a=3.61), "bulk"),
    (bulk("MgO", "rocksalt", a=4.21), "bulk"),
    (bulk("Si", "diamond", a=5.43), "bulk"),
    (water_box(), "molecular"),
    (fcc111("Cu", (2, 2, 4), vacuum=6.0), "slab"),
    (fcc111("Cu", (2, 2, 4), vacuum=6.0, periodic=True), "slab"),
    (molecule("CH3CH2OH"), "molecule"),
])
def test_seed_kind(atoms, kind):
    assert seed_kind(atoms) == kind


def _coordination(atoms, cutoff):
    from orbdistill.graph import neighbour_list

    i, _, _, _ = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    return np.bincount(i, minlength=len(atoms))


@pytest.mark.parametrize("miller, top_cn", [((1, 0, 0), 8), ((1, 1, 0), 7), ((1, 1, 1), 9)])
def test_slabs_have_the_facet_on_both_sides_and_a_vacuum_gap(miller, top_cn):
    slab = make_slab(CU, miller, 48, min_thickness=10.0, vacuum=12.0)
    assert slab.pbc.all() and slab.info["facet"] == "(" + ",".join(map(str, miller)) + ")"
    z = slab.positions[:, 2]
    assert np.ptp(z) >= 10.0 - 2.6  # at least the requested thickness, to within one layer
    assert slab.cell[2, 2] - np.ptp(z) == pytest.approx(12.0, abs=1e-6)  # the gap between images
    assert vacuum_axis(slab) == 2
    cn = _coordination(slab, 3.61 / np.sqrt(2) + 0.3)  # first shell of fcc Cu: 12 in the bulk
    top, bottom = z > z.max() - 0.3, z < z.min() + 0.3
    assert set(cn[top]) == {top_cn} and set(cn[bottom]) == {top_cn}  # the textbook coordination of the facet
    assert cn.max() == 12  # the middle is bulk
    assert 30 <= len(slab) <= 80


def test_oxide_slab_keeps_its_stoichiometry():
    slab = make_slab(bulk("MgO", "rocksalt", a=4.21), (1, 0, 0), 64)
    symbols = slab.get_chemical_symbols()
    assert symbols.count("Mg") == symbols.count("O")


def test_point_defects():
    rng = np.random.default_rng(0)
    cell = supercell(CU, 32)
    vac = make_defect(cell, "vacancy:Cu", rng)
    assert len(vac) == 31 and vac.info["defect"] == "vacancy:Cu"
    inter = make_defect(cell, "interstitial:Cu", rng)
    assert len(inter) == 33
    # the largest void of fcc is the octahedral site, a/2 from its six neighbours
    d = np.linalg.norm(inter.get_distances(32, range(32), mic=True)[None, :], axis=0)
    assert np.sort(d)[:6] == pytest.approx([3.61 / 2] * 6, abs=0.12)
    nial = supercell(bulk("NiAl", "cesiumchloride", a=2.88), 54)
    anti = make_defect(nial, "antisite:Al-Ni", rng)
    assert anti.get_chemical_formula() == nial.get_chemical_formula()
    assert (anti.numbers != nial.numbers).sum() == 2
    assert coverage.defect_kinds_for(nial, ["vacancy", "antisite"]) == ["vacancy:Al", "vacancy:Ni", "antisite:Al-Ni"]
    assert coverage.defect_kinds_for(cell, ["antisite"]) == []  # one element: no antisite
    with pytest.raises(ValueError, match="Unknown defect"):
        make_defect(cell, "dislocation:Cu", rng)


@pytest.mark.parametrize("n", [13, 38, 55])
def test_clusters_are_compact_and_not_periodic(n):
    c = make_cluster(CU, n, vacuum=12.0)
    assert len(c) == n and not c.pbc.any()
    r = np.linalg.norm(c.positions - c.positions.mean(axis=0), axis=1)
    # compact: the farthest atom is within 1.6x the radius of a sphere of n atoms at bulk density
    r_sphere = (3 * n * (3.61 ** 3 / 4) / (4 * np.pi)) ** (1 / 3)
    assert r.max() < 1.6 * r_sphere
    assert min_pair_distance(c, 3.0) == pytest.approx(3.61 / np.sqrt(2))
    # vacuum on every side
    assert (c.cell.lengths() - np.ptp(c.positions, axis=0) >= 12.0 - 1e-6).all()


def test_irregular_cluster_shapes():
    """``cluster_shapes`` adds cuts centred off an atom: other shapes, same size, more
    undercoordinated atoms; the atom-centred task keeps its plan (old data resumes)."""
    from ase.neighborlist import neighbor_list

    one = [t for t in plan_tasks(GenerateConfig(seeds=["x"], cluster_sizes=[38]), [CU]) if t["protocol"] == "cluster"]
    three = [t for t in plan_tasks(GenerateConfig(seeds=["x"], cluster_sizes=[38], cluster_shapes=3), [CU])
             if t["protocol"] == "cluster"]
    assert len(three) == 3 * len(one)
    first = [t for t in three if "cluster_shape" not in t]
    assert [t["rng_seed"] for t in first] == [t["rng_seed"] for t in one]
    assert sorted({t.get("cluster_shape", 0) for t in three}) == [0, 1, 2]

    def coordination(c):
        return np.bincount(neighbor_list("i", c, 3.0), minlength=len(c))

    sym = make_cluster(CU, 38)
    shapes = [make_cluster(CU, 38, rng=np.random.default_rng(k)) for k in range(4)]
    for c in shapes:
        assert len(c) == 38 and not c.pbc.any()
        assert min_pair_distance(c, 3.0) == pytest.approx(3.61 / np.sqrt(2))  # cut from the crystal, not squeezed
        assert (c.cell.lengths() - np.ptp(c.positions, axis=0) >= 12.0 - 1e-6).all()
    # not the symmetric cut, and not all alike
    assert any(sorted(coordination(c)) != sorted(coordination(sym)) for c in shapes)
    assert len({tuple(sorted(coordination(c))) for c in shapes}) > 1


def test_molecular_seeds_keep_molecules_whole():
    box = water_box()
    whole, mol = whole_molecules(box)
    assert mol.max() + 1 == 8
    for m in range(8):
        pos = whole.positions[mol == m]
        assert np.linalg.norm(pos - pos[0], axis=1).max() < 1.6  # O-H and H-H within a molecule
    cluster = make_cluster(box, 20, molecular=True)
    assert cluster.get_chemical_formula() == "H14O7"  # whole molecules only
    interface = liquid_interface(box, 48, vacuum=12.0)
    assert seed_kind(interface) == "slab" and len(interface) == 48
    # plan: no defects for molecules, a liquid-vapour interface instead of facets
    cfg = GenerateConfig(seeds=["x"], nvt_frames=1, nvt_temperatures_k=[300.0])
    tasks = plan_tasks(cfg, [box])
    protocols = {t["protocol"] for t in tasks}
    assert "defect" not in protocols and {"surface", "cluster", "hot", "volume"} <= protocols
    assert {t["facet"] for t in tasks if t["protocol"] == "surface"} == {"liquid-vapour"}


def test_protocols_apply_where_they_make_sense():
    cfg = GenerateConfig(seeds=["x"], nvt_frames=1, nvt_temperatures_k=[300.0])
    slab = fcc111("Cu", (2, 2, 4), vacuum=6.0, periodic=True)
    tasks = plan_tasks(cfg, [slab])
    assert {t["protocol"] for t in tasks} == {"nvt", "surface"}
    # a slab seed is repeated in-plane only
    big = seed_supercell(slab, 64)
    assert len(big) == 64 and big.cell[2, 2] == pytest.approx(slab.cell[2, 2])
    assert {t["protocol"] for t in plan_tasks(cfg, [molecule("CH3CH2OH")])} == {"nvt", "hot"}
    off = GenerateConfig(seeds=["x"], nvt_frames=1, nvt_temperatures_k=[300.0], coverage=[])
    assert {t["protocol"] for t in plan_tasks(off, [CU])} == {"nvt"}
    # every applicable protocol is on by default for a bulk seed
    assert {t["protocol"] for t in plan_tasks(cfg, [CU])} == {"nvt", "surface", "defect", "cluster", "hot", "volume"}
    # the configured melting point wins over the estimate
    hot = [t for t in plan_tasks(GenerateConfig(seeds=["x"], melting_point_k=1000.0, hot_temperature_factors=[1.5]), [CU])
           if t["protocol"] == "hot"]
    assert [t["temperature_K"] for t in hot] == [1500.0]


def test_volume_scan_moves_molecules_rigidly():
    box = water_box()
    cfg = GenerateConfig(seeds=["x"], coverage=["volume"], volume_scales=[0.9], volume_frames=1, nvt_frames=0)
    task = [t for t in plan_tasks(cfg, [box]) if t["protocol"] == "volume"][0]
    from orbdistill.data.generate import _coverage_structure

    scaled = _coverage_structure(task, box, cfg, np.random.default_rng(0))
    assert scaled.get_volume() == pytest.approx(0.9 ** 3 * seed_supercell(box, task["size"]).get_volume())
    _, mol = whole_molecules(scaled)
    oh = np.concatenate([scaled.get_distances(i, np.flatnonzero((mol == mol[i]) & (scaled.numbers == 1)), mic=True)
                         for i in np.flatnonzero(scaled.numbers == 8)])
    assert len(oh) == 16 and np.allclose(oh, 0.9686, atol=2e-3)  # O-H of ASE's H2O, not 0.9 x


def test_farthest_point_selection_keeps_the_unusual_frames():
    frames = []
    for k in range(30):
        a = CU * (2, 2, 2)
        a.rattle(0.01, seed=k)
        frames.append(a)
    odd = frames[17].copy()
    del odd[3]  # a vacancy among near-duplicates
    frames[17] = odd
    chosen = selection.select_diverse(frames, 5)
    assert chosen[0] == 17 and len(set(chosen)) == 5
    x = np.random.default_rng(0).normal(size=(50, 4))
    picked = selection.farthest_point_sampling(x, 10)
    # greedy FPS: the smallest pairwise distance among picked points beats random subsets
    def min_gap(idx):
        d = np.linalg.norm(x[idx][:, None] - x[idx][None], axis=-1)
        return d[np.triu_indices(len(idx), 1)].min()
    rng = np.random.default_rng(1)
    assert min_gap(picked) > np.median([min_gap(rng.choice(50, 10, replace=False)) for _ in range(50)])


def test_keep_fraction_thins_each_trajectory(tmp_path):
    teacher = load_teacher("emt")
    base = dict(seeds=["bulk:Cu:fcc:3.61"], sizes=[32], nvt_temperatures_k=[600.0], nvt_frames=10,
                nvt_equilibration_steps=2, coverage=[])
    full = generate(GenerateConfig(**base), teacher, tmp_path / "full", progress=False)
    half = generate(GenerateConfig(**base, keep_fraction=0.3), teacher, tmp_path / "half", progress=False)
    assert full["n_frames"] == 10 and half["n_frames"] == 3 and half["n_rejected"] == 0
    task = next(iter(half["tasks"].values()))
    assert task["deselected"] == 7
    kept = [f.info["frame_index"] for f in read_frames(tmp_path / "half")]
    assert kept == sorted(kept)  # trajectory order
    # the same configuration resumes (tuples in the config compare equal to the manifest's lists)
    again = generate(GenerateConfig(**base, keep_fraction=0.3), teacher, tmp_path / "half", progress=False)
    assert again["n_frames"] == 3


def test_vacuum_shorter_than_the_cutoff_is_refused(tmp_path):
    from orbdistill.config import ConfigError
    from orbdistill.distill_config import load_distill_config

    cfg = {"name": "x", "teacher": {"name": "emt"},
           "student": {"kind": "v2", "overrides": {"cutoff": 7.0}},
           "generate": {"seeds": ["bulk:Cu:fcc:3.61"], "vacuum": 6.5}}
    with pytest.raises(ConfigError, match=r"generate.vacuum = 6.5 Å is shorter than the student's cutoff"):
        load_distill_config(cfg)
    cfg["generate"]["coverage"] = ["defect", "hot"]  # no slab or cluster: no vacuum needed
    load_distill_config(cfg)


def test_data_made_before_a_new_generate_option_still_resume(tmp_path):
    """A manifest written before a GenerateConfig field existed resumes when the new field
    is at its default, and is refused when it is not."""
    teacher = load_teacher("emt")
    base = dict(seeds=["bulk:Cu:fcc:3.61"], sizes=[32], nvt_temperatures_k=[600.0], nvt_frames=2,
                nvt_equilibration_steps=2, coverage=[])
    generate(GenerateConfig(**base), teacher, tmp_path, progress=False, max_tasks=0)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["config"]["hvp"]  # as if written by an older orbdistill
    path.write_text(json.dumps(manifest))
    assert generate(GenerateConfig(**base), teacher, tmp_path, progress=False)["n_frames"] == 2
    with pytest.raises(ValueError, match="another configuration"):
        generate(GenerateConfig(**base, hvp=True), teacher, tmp_path, progress=False)


def test_a_data_folder_is_extended_with_new_values_and_keeps_its_finished_tasks(tmp_path):
    """Adding cluster sizes and temperatures labels only the new tasks; the finished ones are
    kept as they were, and the result equals a fresh run of the extended configuration."""
    teacher = load_teacher("emt")
    base = dict(seeds=["bulk:Cu:fcc:3.61"], sizes=[32], nvt_temperatures_k=[600.0], nvt_frames=2,
                nvt_equilibration_steps=2, strain_frames=0, rattle_relax_frames=0, relax_trajectories=0,
                coverage=["cluster"], cluster_sizes=[13], cluster_temperatures_k=[300.0], cluster_frames=2,
                cluster_relax_steps=1)
    data = tmp_path / "data"
    first = generate(GenerateConfig(**base), teacher, data, progress=False)
    files = {tid: (data / v["file"]).read_bytes() for tid, v in first["tasks"].items()}
    wider = GenerateConfig(**{**base, "cluster_sizes": [13, 19], "nvt_temperatures_k": [300.0, 600.0]})
    with pytest.raises(ValueError, match="--extend"):
        generate(wider, teacher, data, progress=False)
    extended = generate(wider, teacher, data, progress=False, extend=True)
    assert extended["complete"] and len(extended["tasks"]) == 4
    assert extended["extensions"][-1]["added"] == {"cluster_sizes": [19], "nvt_temperatures_k": [300.0]}
    for tid, content in files.items():  # finished tasks untouched, under their ids
        assert (data / extended["tasks"][tid]["file"]).read_bytes() == content
    # the same frames as a fresh run of the extended configuration (same per-task seeds)
    fresh = read_frames(generate(wider, teacher, tmp_path / "fresh", progress=False) and tmp_path / "fresh")
    grown = read_frames(data)
    key = lambda a: (a.info["protocol"], len(a), a.info.get("temperature_K"), a.info["frame_index"])  # noqa: E731
    assert sorted(map(key, grown)) == sorted(map(key, fresh))
    by_key = {key(a): a for a in fresh}
    for a in grown:
        np.testing.assert_allclose(a.positions, by_key[key(a)].positions, atol=1e-12)
    assert len({a.info["traj_id"] for a in grown}) == 4
    # resuming the extended folder plans nothing new
    again = generate(wider, teacher, data, progress=False, extend=True)
    assert again["tasks"] == extended["tasks"]
    # what cannot extend: a changed setting, a removed value
    with pytest.raises(ValueError, match="generate.timestep_fs changed"):
        generate(GenerateConfig(**{**base, "cluster_sizes": [13, 19], "nvt_temperatures_k": [300.0, 600.0],
                                   "timestep_fs": 1.0}), teacher, data, progress=False, extend=True)
    with pytest.raises(ValueError, match="lost"):
        generate(GenerateConfig(**{**base, "cluster_sizes": [19], "nvt_temperatures_k": [300.0, 600.0]}), teacher,
                 data, progress=False, extend=True)
    # more cluster shapes extend too (the atom-centred cuts kept); fewer cannot
    shapes = GenerateConfig(**{**base, "cluster_sizes": [13, 19], "nvt_temperatures_k": [300.0, 600.0],
                               "cluster_shapes": 2})
    more = generate(shapes, teacher, data, progress=False, extend=True)
    assert more["extensions"][-1]["added"] == {"cluster_shapes": 1} and len(more["tasks"]) == 6
    for tid, content in files.items():
        assert (data / more["tasks"][tid]["file"]).read_bytes() == content
    assert {a.info.get("cluster_shape", 0) for a in read_frames(data) if a.info["protocol"] == "cluster"} == {0, 1}
    with pytest.raises(ValueError, match="can only raise"):
        generate(GenerateConfig(**{**base, "cluster_sizes": [13, 19], "nvt_temperatures_k": [300.0, 600.0]}),
                 teacher, data, progress=False, extend=True)


def test_reference_phases_put_each_element_of_a_compound_on_its_own(tmp_path):
    """A compound's data fix only the sum of its elements' energies; the reference phases
    (each element's own crystal) fix them apart. Asked for in ``coverage``; planned only for
    multi-element seeds and elements with a crystalline reference state."""
    cu3au = bulk("Cu", "fcc", a=3.75, cubic=True)
    cu3au[0].symbol = "Au"
    cfg = GenerateConfig(seeds=["x"], sizes=[32], nvt_temperatures_k=[300.0], nvt_frames=2, nvt_equilibration_steps=2,
                         nvt_interval_steps=2, coverage=["reference"], reference_temperatures_k=[300.0, 600.0],
                         reference_frames=3)
    tasks = [t for t in plan_tasks(cfg, [cu3au]) if t["protocol"] == "reference"]
    assert sorted((t["element"], t["temperature_K"]) for t in tasks) == [("Au", 300.0), ("Au", 600.0),
                                                                         ("Cu", 300.0), ("Cu", 600.0)]
    assert not [t for t in plan_tasks(cfg, [CU]) if t["protocol"] == "reference"]  # one element: the seed is it
    mgo = bulk("MgO", "rocksalt", a=4.21)
    assert {t["element"] for t in plan_tasks(cfg, [mgo]) if t["protocol"] == "reference"} == {"Mg"}  # O2 is molecular
    # off unless asked for: data folders made before keep their configuration
    assert "reference" not in GenerateConfig().coverage
    cfg_file = tmp_path / "cu3au.cif"
    cu3au.write(cfg_file)
    cfg.seeds = [str(cfg_file)]
    m = generate(cfg, load_teacher("emt"), tmp_path / "data", progress=False)
    frames = [f for f in read_frames(tmp_path / "data") if f.info["protocol"] == "reference"]
    assert len(frames) == 4 * 3 and m["complete"]
    for f in frames:
        assert set(f.get_chemical_symbols()) == {f.info["element"]} and f.pbc.all() and len(f) >= 28
        assert "stress" in f.calc.results
    from orbdistill.data.generate import domain_summary, protocol_group

    assert protocol_group("reference") == "reference"
    assert domain_summary(m)["reference"]["frames"] == 12


def test_nearest_defects_do_not_depend_on_the_random_state():
    """What the validation's defect section builds: the same vacancy and the same
    nearest-neighbour antisite pair for any random state; drawn defects may differ."""
    nial = bulk("NiAl", "cesiumchloride", a=2.88).repeat(3)
    for kind in ("vacancy:Ni", "antisite:Al-Ni"):
        a, b = (make_defect(nial, kind, np.random.default_rng(s), nearest=True) for s in (0, 1))
        assert np.array_equal(a.numbers, b.numbers) and np.allclose(a.positions, b.positions)
    swap = make_defect(nial, "antisite:Al-Ni", np.random.default_rng(5), nearest=True)
    changed = np.flatnonzero(swap.numbers != nial.numbers)
    assert len(changed) == 2 and swap.get_distance(*changed, mic=True) == pytest.approx(2.88 * np.sqrt(3) / 2)
    drawn = {tuple(np.flatnonzero(make_defect(nial, "antisite:Al-Ni", np.random.default_rng(s)).numbers != nial.numbers))
             for s in range(6)}
    assert len(drawn) > 1


def test_molecular_liquid_box_has_the_density_and_whole_separate_molecules():
    from orbdistill.structures import molecular_liquid

    box = molecular_liquid("H2O", 40, density_g_cm3=0.95, seed=3, min_distance=1.8)
    assert len(box) == 120 and seed_kind(box) == "molecular"
    density = box.get_masses().sum() / 0.602214076 / box.get_volume()  # amu/Å^3 -> g/cm^3
    assert density == pytest.approx(0.95, rel=1e-9)
    whole, mol = whole_molecules(box)
    assert mol.max() + 1 == 40
    d = box.get_all_distances(mic=True)
    same = mol[:, None] == mol[None, :]
    assert d[~same].min() >= 1.8  # no two molecules closer than asked
    oh = d[0, 1:3]
    assert oh == pytest.approx([0.968, 0.968], abs=1e-3)  # the molecule's own geometry (ase.build.molecule)
    again = molecular_liquid("H2O", 40, density_g_cm3=0.95, seed=3, min_distance=1.8)
    np.testing.assert_array_equal(box.positions, again.positions)
    with pytest.raises(RuntimeError, match="could not place"):
        molecular_liquid("H2O", 40, density_g_cm3=3.0, max_tries=50)
    with pytest.raises(ValueError, match="unknown molecule 'H20'"):
        molecular_liquid("H20", 10)


def test_heavy_hydrogen_md_keeps_natural_masses_in_the_frames(tmp_path):
    """The data MD may run with heavy hydrogen (same configurational statistics); the frames
    it writes carry the natural masses, and the trajectory differs from a natural-mass one."""
    from ase.io import write

    from orbdistill.data.generate import md_masses

    box = water_box()
    assert md_masses(box, 2.014)[box.numbers == 1] == pytest.approx(2.014)
    assert md_masses(box, 2.014)[box.numbers == 8] == pytest.approx(15.999)
    write(tmp_path / "water.extxyz", box)
    teacher = load_teacher("emt")
    out = {}
    for m in (None, 2.014):
        cfg = GenerateConfig(seeds=[str(tmp_path / "water.extxyz")], sizes=[len(box)], nvt_temperatures_k=[300.0],
                             nvt_frames=2, nvt_interval_steps=5, nvt_equilibration_steps=5, timestep_fs=0.5,
                             coverage=[], hydrogen_mass_amu=m)
        generate(cfg, teacher, tmp_path / str(m), progress=False)
        out[m] = read_frames(tmp_path / str(m))
    assert len(out[None]) == len(out[2.014]) == 2
    assert all(f.get_masses()[1] == pytest.approx(1.008, abs=1e-3) for f in out[2.014])
    assert not np.allclose(out[None][-1].positions, out[2.014][-1].positions)


def test_short_range_frames_push_one_pair_of_each_kind_or_isolate_it(tmp_path):
    """Dimers of every element pair, evenly spaced, not periodic; bulk cells where exactly
    the labelled pair (of the right elements) is the closest one, at the asked fraction of
    its distance in the crystal."""
    nial = bulk("NiAl", "cesiumchloride", a=2.88)
    ref = coverage.pair_distances(nial)
    assert ref["Al-Ni"] == pytest.approx(2.88 * np.sqrt(3) / 2) and ref["Al-Al"] == pytest.approx(2.88)
    cfg = GenerateConfig(seeds=["bulk:NiAl:cesiumchloride:2.88"], sizes=[54], nvt_temperatures_k=[], coverage=["short_range"],
                         short_range_frames=6, short_range_dimer_frames=5, short_range_min_factor=0.65,
                         short_range_rattle_frames=4, short_range_frames_per_task=2)
    tasks = plan_tasks(cfg, [nial])
    # each kind cut into tasks of <= 2 frames, so that a split by trajectory keeps most of them
    from collections import Counter

    assert Counter((t.get("pair", "-"), t["mode"]) for t in tasks) == Counter(
        {**{(p, "dimer"): 3 for p in ref}, **{(p, "pushed_pair"): 3 for p in ref}, ("-", "rattle"): 2})
    assert all(t["n_frames"] <= 2 for t in tasks)
    manifest = generate(cfg, load_teacher("emt"), tmp_path, progress=False)
    assert manifest["n_frames"] + manifest["n_rejected"] == 3 * (6 + 5) + 4
    frames = read_frames(tmp_path)
    assert {f.info["protocol"] for f in frames} == {"short_range"}
    rattled = [f for f in frames if "pair" not in f.info]
    assert rattled and all(len(f) == 54 and f.pbc.all() for f in rattled)
    for f in rattled:  # hard rattles: sigma 4-12 % of the shortest distance in the crystal
        assert 0.04 * ref["Al-Ni"] <= f.info["rattle_sigma"] <= 0.12 * ref["Al-Ni"]
        closest = (f.get_all_distances(mic=True) + 99 * np.eye(len(f))).min()
        assert closest < 0.93 * ref["Al-Ni"]  # many pairs shaken, some well inside the crystal's
    frames = [f for f in frames if "pair" in f.info]
    for pair in ref:
        dimers = [f for f in frames if f.info["pair"] == pair and len(f) == 2]
        d = sorted(float(f.get_distance(0, 1)) for f in dimers)
        assert not any(f.pbc.any() for f in dimers)
        assert sorted(dimers[0].get_chemical_symbols()) == sorted(pair.split("-"))
        if len(d) == 5:  # none rejected: evenly spaced from the lower bound to 1.6x
            np.testing.assert_allclose(d, np.linspace(0.65, 1.6, 5) * ref[pair], atol=1e-9)
        pushed = [f for f in frames if f.info["pair"] == pair and len(f) > 2]
        assert pushed and all(len(f) == 54 and f.pbc.all() for f in pushed)
        a, b = pair.split("-")
        for f in pushed:
            sym = np.array(f.get_chemical_symbols())
            dist = f.get_all_distances(mic=True) + np.eye(len(f)) * 99
            of_pair = dist[np.ix_(sym == a, sym == b)]
            assert of_pair.min() == pytest.approx(f.info["pair_distance"])  # the closest pair of its kind
            assert 0.65 * ref[pair] - 1e-9 <= f.info["pair_distance"] <= 0.92 * ref[pair] + 1e-9
    # the card says which pairs the data pushed together
    from orbdistill.data.generate import domain_summary
    from orbdistill.export.package import _coverage_text

    summary = domain_summary(manifest)["short_range"]
    assert summary["pairs"] == ["Al-Al", "Al-Ni", "Ni-Ni"] and summary["min_distance_factor"] == 0.65
    assert summary["modes"] == ["dimer", "pushed_pair", "rattle"]
    text = _coverage_text(summary)
    assert "Al-Ni" in text and "0.65" in text and "hard rattles" in text
    # a molecular liquid is not pushed apart bond by bond, and the user who asked is told so
    with pytest.warns(UserWarning, match=r"short_range.*molecular seed.*bonds inside molecules"):
        planned = plan_tasks(GenerateConfig(seeds=["x"], coverage=["short_range", "hot"]), [water_box()])
    assert "short_range" not in {t["protocol"] for t in planned} and "hot" in {t["protocol"] for t in planned}


def test_a_data_folder_made_before_short_range_is_extended_with_its_options(tmp_path):
    teacher = load_teacher("emt")
    base = dict(seeds=["bulk:Cu:fcc:3.61"], sizes=[32], nvt_temperatures_k=[600.0], nvt_frames=2,
                nvt_equilibration_steps=2, coverage=[])
    generate(GenerateConfig(**base), teacher, tmp_path, progress=False)
    wider = GenerateConfig(**{**base, "coverage": ["short_range"], "short_range_frames": 3,
                              "short_range_dimer_frames": 2, "short_range_rattle_frames": 2})
    grown = generate(wider, teacher, tmp_path, progress=False, extend=True)
    assert grown["extensions"][-1]["added"] == {"coverage": ["short_range"]}
    assert grown["n_frames"] + grown["n_rejected"] == 2 + 3 + 2 + 2  # EMT's dimer at 0.6 d_nn: 41 eV/Å, rejected
    # once the data hold short-range frames, their options are fixed like any other
    with pytest.raises(ValueError, match="short_range_frames changed"):
        generate(GenerateConfig(**{**base, "coverage": ["short_range"], "short_range_frames": 4,
                                   "short_range_dimer_frames": 2, "short_range_rattle_frames": 2}), teacher, tmp_path,
                 progress=False, extend=True)
