"""Structures beyond the bulk crystal, built from a seed: slabs, point defects, clusters,
and what a seed is (which of them apply).

A student only knows the configurations its teacher labelled. Users leave the bulk crystal
as soon as they simulate a surface, a vacancy or a nanoparticle, and a bulk-trained student
is then wrong by eV/atom (see docs/domain.md). :mod:`orbdistill.data.generate` runs MD and
relaxations on the structures made here, so the data reach where users go.

Seed kinds (:func:`seed_kind`):

* ``"bulk"``: periodic in 3D, no vacuum gap, atoms bonded across the cell (metals, oxides,
  alloys): surfaces, point defects and clusters apply;
* ``"molecular"``: periodic in 3D, made of separate molecules (a liquid or a molecular
  crystal): clusters are whole molecules, and a liquid-vapour interface replaces the slab;
* ``"slab"``: periodic in 2D (non-periodic axis or a vacuum gap): MD of the slab as given;
* ``"molecule"``: not periodic: MD of the molecule as given (conformers at high temperature).

Short range (:func:`pair_distances`, :func:`make_dimer`, :func:`push_pair`): isolated
dimers of every element pair and bulk cells with one pair pushed together, the
configurations where a student's repulsion is learnt or not at all.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from ase import Atoms

SEED_KINDS = ("bulk", "molecular", "slab", "molecule")


# --------------------------------------------------------------------------------------
# what a seed is
# --------------------------------------------------------------------------------------


def vacuum_axis(atoms: Atoms, min_gap: float = 5.0) -> Optional[int]:
    """The periodic cell axis along which the atoms leave an empty gap of at least
    ``min_gap`` Å (a slab in a 3D-periodic cell), or None."""
    if len(atoms) == 0:
        return None
    frac = atoms.get_scaled_positions(wrap=True)
    for axis in range(3):
        if not atoms.pbc[axis]:
            continue
        # height of the cell along this axis: volume / area of the other two vectors
        a, b = (atoms.cell[k] for k in range(3) if k != axis)
        height = abs(np.linalg.det(atoms.cell.array)) / np.linalg.norm(np.cross(a, b))
        s = np.sort(frac[:, axis])
        gaps = np.diff(np.concatenate([s, [s[0] + 1.0]]))
        if gaps.max() * height >= min_gap:
            return axis
    return None


def seed_kind(atoms: Atoms) -> str:
    """``"bulk"``, ``"molecular"``, ``"slab"`` or ``"molecule"`` (see the module docstring).

    >>> from ase.build import bulk, fcc111, molecule
    >>> seed_kind(bulk("Cu", "fcc", a=3.61)), seed_kind(molecule("H2O"))
    ('bulk', 'molecule')
    >>> seed_kind(fcc111("Cu", (2, 2, 4), vacuum=6.0))
    'slab'
    """
    if not atoms.pbc.any() or atoms.cell.rank < 3:
        return "molecule"
    if not atoms.pbc.all() or vacuum_axis(atoms) is not None:
        return "slab"
    # many small bonded units that do not span the cell: molecules
    _, mol, finite = _unwrap_bonded_units(atoms)
    sizes = np.bincount(mol)
    if len(sizes) > 1 and sizes.max() <= 30 and finite:
        return "molecular"
    return "bulk"


def _unwrap_bonded_units(atoms: Atoms) -> Tuple[Atoms, np.ndarray, bool]:
    """One walk over the covalent-radius bond graph (1.2 x the sum of radii): a copy with
    every bonded unit unwrapped, the unit index of each atom, and whether every unit is
    finite (no unit bonded to its own periodic image: after unwrapping, every bond vector
    equals the difference of the unwrapped positions)."""
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j, d = neighbor_list("ijD", atoms, natural_cutoffs(atoms, mult=1.2))
    n = len(atoms)
    pos = atoms.positions.copy()
    mol = np.full(n, -1)
    order = np.argsort(i, kind="stable")
    i, j, d = i[order], j[order], d[order]
    starts = np.searchsorted(i, np.arange(n + 1))
    m = 0
    for root in range(n):
        if mol[root] >= 0:
            continue
        mol[root] = m
        stack = [root]
        while stack:
            a = stack.pop()
            for k in range(starts[a], starts[a + 1]):
                b = j[k]
                if mol[b] < 0:
                    mol[b] = m
                    pos[b] = pos[a] + d[k]
                    stack.append(b)
        m += 1
    finite = bool(np.allclose(pos[j] - pos[i], d, atol=1e-6))
    out = atoms.copy()
    out.positions = pos
    return out, mol, finite


def whole_molecules(atoms: Atoms) -> Tuple[Atoms, np.ndarray]:
    """A copy of a molecular cell with each molecule unwrapped (whole, no bond crossing the
    cell boundary) and the molecule index of every atom."""
    out, mol, _ = _unwrap_bonded_units(atoms)
    return out, mol


def seed_supercell(seed: Atoms, n_target: int) -> Atoms:
    """The supercell of a seed closest to ``n_target`` atoms, never repeated across a vacuum
    gap (a slab in a 3D-periodic cell is repeated in-plane only)."""
    from orbdistill.structures import supercell

    axis = vacuum_axis(seed) if seed.pbc.all() else None
    if axis is None:
        return supercell(seed, n_target, at_least=False)
    pbc = seed.pbc.copy()
    probe = seed.copy()
    probe.pbc[axis] = False
    out = supercell(probe, n_target, at_least=False)
    out.pbc = pbc
    return out


# --------------------------------------------------------------------------------------
# melting point
# --------------------------------------------------------------------------------------


def estimated_melting_point(atoms: Atoms) -> Tuple[float, str]:
    """A rough melting point (K) of a seed and where it comes from.

    One element: its melting point (pymatgen's element data). Compounds: the highest
    melting point of their elements, which can be far off (MgO melts at 3098 K, Mg at
    923 K); give ``melting_point_k`` in the generate section for compounds. Never below
    300 K, so that a molecular seed's "hot" frames are still above room temperature.
    """
    from pymatgen.core import Element

    symbols = sorted(set(atoms.get_chemical_symbols()))
    values = []
    for s in symbols:
        mp = Element(s).melting_point
        if mp is not None:
            values.append(float(mp))
    if not values:
        return 1000.0, "no element data; 1000 K assumed"
    tm = max(values)
    source = f"melting point of {symbols[0]}" if len(symbols) == 1 else \
        f"highest elemental melting point of {'-'.join(symbols)} (a guess for a compound)"
    return max(tm, 300.0), source


# --------------------------------------------------------------------------------------
# slabs
# --------------------------------------------------------------------------------------


def conventional_cell(atoms: Atoms) -> Atoms:
    """The conventional standard cell of a crystal (Miller indices refer to it)."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        structure = AseAtomsAdaptor.get_structure(atoms)
        conv = SpacegroupAnalyzer(structure, symprec=1e-3).get_conventional_standard_structure()
        return AseAtomsAdaptor.get_atoms(conv)
    except Exception:  # symmetry search failed (a disordered cell): use the cell as given
        return atoms.copy()


def facet_label(miller: Sequence[int]) -> str:
    """``(1,1,1)``-style name of a facet (kept as text in extxyz files)."""
    return "(" + ",".join(str(int(x)) for x in miller) + ")"


def make_slab(seed: Atoms, miller: Sequence[int], target_atoms: int, min_thickness: float = 10.0,
              vacuum: float = 12.0) -> Atoms:
    """A slab of ``seed`` with the ``miller`` facet on both sides, at least ``min_thickness``
    Å thick, repeated in-plane to about ``target_atoms`` atoms, in a 3D-periodic cell with
    ``vacuum`` Å of empty space between the slab and its periodic image (>= every model's
    cutoff, so the two surfaces never see each other).

    >>> from ase.build import bulk
    >>> s = make_slab(bulk("Cu", "fcc", a=3.61, cubic=True), (1, 1, 1), 48)
    >>> bool(s.pbc.all()), len(s) >= 24
    (True, True)
    """
    from ase.build import surface

    miller = tuple(int(x) for x in miller)
    if len(miller) != 3 or not any(miller):
        raise ValueError(f"Miller index {miller} is not a facet: give three integers, not all zero.")
    conv = conventional_cell(seed)
    # thickness added by one more repeat of the surface cell along the normal
    one, two = (surface(conv, miller, k, vacuum=None) for k in (1, 2))
    spacing = two.positions[:, 2].max() - one.positions[:, 2].max()
    layers = max(2, math.ceil(min_thickness / max(spacing, 1e-3)))
    slab = surface(conv, miller, layers, vacuum=vacuum / 2.0, periodic=True)
    n = max(1.0, math.sqrt(target_atoms / len(slab)))
    # keep in-plane vectors comparable: repeat the shorter one more when they differ
    la, lb = np.linalg.norm(slab.cell[0]), np.linalg.norm(slab.cell[1])
    na = max(1, round(n * math.sqrt(lb / la)))
    nb = max(1, round(target_atoms / (len(slab) * na)))
    slab = slab.repeat((na, nb, 1))
    slab.pbc = True
    slab.wrap()
    slab.info["facet"] = facet_label(miller)
    return slab


def liquid_interface(seed: Atoms, target_atoms: int, vacuum: float = 12.0) -> Atoms:
    """A molecular cell opened along its longest axis into a liquid-vapour interface:
    molecules stay whole, ``vacuum`` Å of empty space is added between periodic images."""
    from orbdistill.structures import supercell

    cell = supercell(seed, target_atoms, at_least=False)
    whole, _ = whole_molecules(cell)
    axis = int(np.argmax(whole.cell.lengths()))
    frac = whole.get_scaled_positions(wrap=False)
    cellv = whole.cell.array.copy()
    length = np.linalg.norm(cellv[axis])
    extent = (frac[:, axis].max() - frac[:, axis].min()) * length
    cellv[axis] *= (extent + vacuum) / length
    out = whole.copy()
    out.set_cell(cellv, scale_atoms=False)
    out.positions -= (frac[:, axis].min() * whole.cell[axis])[None, :]
    out.pbc = True
    out.info["facet"] = "liquid-vapour"
    return out


# --------------------------------------------------------------------------------------
# point defects
# --------------------------------------------------------------------------------------


def defect_kinds_for(atoms: Atoms, wanted: Sequence[str]) -> List[str]:
    """The defects that apply to a bulk cell: ``vacancy:X`` and ``interstitial:X`` for each
    element X, ``antisite:X-Y`` for each pair of elements (multi-element cells only)."""
    elements = sorted(set(atoms.get_chemical_symbols()))
    out = []
    if "vacancy" in wanted:
        out += [f"vacancy:{e}" for e in elements]
    if "interstitial" in wanted:
        out += [f"interstitial:{e}" for e in elements]
    if "antisite" in wanted and len(elements) > 1:
        out += [f"antisite:{a}-{b}" for k, a in enumerate(elements) for b in elements[k + 1:]]
    return out


def largest_void(atoms: Atoms, rng: np.random.Generator, n_trials: int = 4000) -> np.ndarray:
    """The Cartesian position, among random trial points, farthest from every atom (with
    periodic images): where an interstitial fits best."""
    from ase.geometry import get_distances

    trial = rng.random((n_trials, 3)) @ atoms.cell.array
    best, best_d = None, -1.0
    for k in range(0, n_trials, 500):  # chunks keep the distance matrix small
        _, dist = get_distances(trial[k:k + 500], atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        dmin = dist.min(axis=1)
        j = int(np.argmax(dmin))
        if dmin[j] > best_d:
            best_d, best = float(dmin[j]), trial[k + j]
    return best


def make_defect(cell: Atoms, kind: str, rng: np.random.Generator, nearest: bool = False) -> Atoms:
    """A copy of ``cell`` with one point defect: ``vacancy:X`` (an X atom removed),
    ``interstitial:X`` (an X atom in the largest void), ``antisite:X-Y`` (an X and a Y
    swapped).

    The atoms are drawn with ``rng``; with ``nearest``, a vacancy removes the first X atom
    and an antisite swaps the first X atom with its nearest Y neighbour (the same defect
    whatever the random state: what comparisons between models need).
    """
    what, _, spec = kind.partition(":")
    a = cell.copy()
    symbols = np.array(a.get_chemical_symbols())
    if what == "vacancy":
        idx = np.flatnonzero(symbols == spec)
        if len(idx) < 2:
            raise ValueError(f"Cannot make {kind}: the cell has {len(idx)} {spec} atom(s).")
        del a[int(idx[0]) if nearest else int(rng.choice(idx))]
    elif what == "interstitial":
        a.append(spec)
        a.positions[-1] = largest_void(cell, rng)
    elif what == "antisite":
        x, _, y = spec.partition("-")
        ix, iy = np.flatnonzero(symbols == x), np.flatnonzero(symbols == y)
        if not len(ix) or not len(iy):
            raise ValueError(f"Cannot make {kind}: the cell lacks {x} or {y}.")
        if nearest:
            i = int(ix[0])
            j = int(iy[np.argmin(a.get_distances(i, iy, mic=bool(a.pbc.any())))])
        else:
            i, j = int(rng.choice(ix)), int(rng.choice(iy))
        numbers = a.numbers.copy()
        numbers[i], numbers[j] = numbers[j], numbers[i]
        a.numbers = numbers
    else:
        raise ValueError(f"Unknown defect {kind!r}; use vacancy:X, interstitial:X or antisite:X-Y.")
    a.info["defect"] = kind
    return a


# --------------------------------------------------------------------------------------
# short range: dimers and pushed pairs
# --------------------------------------------------------------------------------------


def element_pairs(atoms: Atoms) -> List[str]:
    """Every unordered pair of the elements in ``atoms``, as ``"A-B"`` (alphabetical),
    like-element pairs included."""
    elements = sorted(set(atoms.get_chemical_symbols()))
    return [f"{a}-{b}" for i, a in enumerate(elements) for b in elements[i:]]


def pair_distances(seed: Atoms, search: float = 6.0) -> dict:
    """{"A-B": shortest A-B distance} in a periodic ``seed`` (the sum of covalent radii for a
    pair closer than ``search`` Å nowhere in it): the length pushed pairs and dimers are
    scaled by.

    >>> from ase.build import bulk
    >>> round(pair_distances(bulk("Cu", "fcc", a=3.61))["Cu-Cu"], 3)
    2.553
    """
    from ase.data import atomic_numbers, covalent_radii
    from ase.neighborlist import neighbor_list

    out = {}
    symbols = np.array(seed.get_chemical_symbols())
    if seed.pbc.all():
        i, j, d = neighbor_list("ijd", seed, search)
    else:
        i, j, d = (np.array([], int),) * 2 + (np.array([]),)
    for pair in element_pairs(seed):
        a, b = pair.split("-")
        mask = ((symbols[i] == a) & (symbols[j] == b)) | ((symbols[i] == b) & (symbols[j] == a))
        out[pair] = float(d[mask].min()) if mask.any() else \
            float(covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]])
    return out


def make_dimer(pair: str, distance: float, vacuum: float = 12.0) -> Atoms:
    """Two atoms ``distance`` Å apart, not periodic, in a box with ``vacuum`` Å around them.

    >>> d = make_dimer("Cu-Cu", 2.2)
    >>> round(float(d.get_distance(0, 1)), 3), bool(d.pbc.any())
    (2.2, False)
    """
    a, b = pair.split("-")
    dimer = Atoms(f"{a}{b}", positions=[(0.0, 0.0, 0.0), (0.0, 0.0, float(distance))], pbc=False)
    dimer.center(vacuum=vacuum / 2.0)
    dimer.info["pair_distance"] = float(distance)
    return dimer


def push_pair(cell: Atoms, pair: str, distance: float, rng: np.random.Generator) -> Atoms:
    """A copy of ``cell`` where a random atom of the pair's first element and its nearest
    neighbour of the second are moved towards (or away from) each other, symmetrically
    along their bond, until they are ``distance`` Å apart; the rest of the cell is kept.

    A hot or compressed crystal reaches short distances one pair at a time, inside its
    bulk environment: these are the frames that teach that environment's repulsion.
    """
    a_sym, b_sym = pair.split("-")
    a = cell.copy()
    symbols = np.array(a.get_chemical_symbols())
    first = np.flatnonzero(symbols == a_sym)
    others = np.flatnonzero(symbols == b_sym)
    if not len(first) or not len(others) or (a_sym == b_sym and len(first) < 2):
        raise ValueError(f"Cannot push a {pair} pair: the cell has too few {a_sym} or {b_sym} atoms.")
    i = int(rng.choice(first))
    others = others[others != i]
    mic = bool(a.pbc.any())
    d = a.get_distances(i, others, mic=mic)
    j = int(others[np.argmin(d)])
    v = a.get_distance(i, j, mic=mic, vector=True)
    r = float(np.linalg.norm(v))
    shift = 0.5 * (r - float(distance)) * v / r
    a.positions[i] += shift
    a.positions[j] -= shift
    a.info["pair_distance"] = float(a.get_distance(i, j, mic=mic))
    return a


# --------------------------------------------------------------------------------------
# elemental reference phases
# --------------------------------------------------------------------------------------

#: ASE reference states that :func:`ase.build.bulk` builds as a crystal
_CRYSTALS = ("fcc", "bcc", "hcp", "diamond", "sc", "bct", "rhombohedral")


def reference_elements(atoms: Atoms) -> List[str]:
    """The elements of a multi-element cell whose reference state is a crystal (ASE's
    ``reference_states``): the phases that fix each element's energy apart from the
    compound's (an element of a one-element cell, or a molecular element such as O or N,
    gives none)."""
    from ase.data import atomic_numbers, reference_states

    elements = sorted(set(atoms.get_chemical_symbols()))
    if len(elements) < 2:
        return []
    return [e for e in elements if (reference_states[atomic_numbers[e]] or {}).get("symmetry") in _CRYSTALS]


def reference_crystal(symbol: str) -> Atoms:
    """The element's reference crystal at ASE's tabulated lattice constant (the conventional
    cell where there is one).

    >>> reference_crystal("Ni").get_chemical_formula(), reference_crystal("Al").cell.lengths()[0].round(2)
    ('Ni4', np.float64(4.05))
    """
    from ase.build import bulk

    try:
        return bulk(symbol, cubic=True)
    except Exception:  # hcp and other non-cubic references
        return bulk(symbol)


# --------------------------------------------------------------------------------------
# clusters
# --------------------------------------------------------------------------------------


def make_cluster(seed: Atoms, n_atoms: int, vacuum: float = 12.0, molecular: bool = False,
                 rng: Optional[np.random.Generator] = None) -> Atoms:
    """A non-periodic cluster of about ``n_atoms`` atoms cut from the bulk around an atom
    (the ``n_atoms`` atoms nearest to it; for molecular seeds, the whole molecules nearest
    to it), in a box with ``vacuum`` Å around it.

    With ``rng`` the cut is centred on a random point within one nearest-neighbour
    distance of that atom instead: an irregular cluster (steps, adatoms, facets of several
    kinds) rather than the symmetric shell of an atom-centred cut, which is what
    nanoparticles in MD look like.

    >>> from ase.build import bulk
    >>> c = make_cluster(bulk("Cu", "fcc", a=3.61, cubic=True), 13)
    >>> len(c), bool(c.pbc.any())
    (13, False)
    """
    from orbdistill.structures import supercell

    big = supercell(seed, max(8 * n_atoms, 64), at_least=True)
    mol = None
    if molecular:
        big, mol = whole_molecules(big)
    centre_cell = big.cell.array.sum(axis=0) / 2.0
    pos = big.positions
    centre_atom = int(np.argmin(np.linalg.norm(pos - centre_cell, axis=1)))
    centre = pos[centre_atom]
    if rng is not None:
        d_nn = np.sort(np.linalg.norm(pos - centre, axis=1))[1]
        direction = rng.normal(size=3)
        centre = centre + direction / np.linalg.norm(direction) * d_nn * rng.uniform(0.3, 1.0) ** (1 / 3)
    if mol is None:
        d = np.linalg.norm(pos - centre, axis=1)
        keep = np.argsort(d, kind="stable")[:n_atoms]
    else:
        centres = np.array([pos[mol == m].mean(axis=0) for m in range(mol.max() + 1)])
        order = np.argsort(np.linalg.norm(centres - centre, axis=1), kind="stable")
        keep, count = [], 0
        for m in order:
            members = np.flatnonzero(mol == m)
            keep.extend(members.tolist())
            count += len(members)
            if count >= n_atoms:
                break
        keep = np.array(keep)
    cluster = big[np.sort(keep)]
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    cluster.center(vacuum=vacuum / 2.0)
    cluster.info["cluster_size"] = len(cluster)
    return cluster
