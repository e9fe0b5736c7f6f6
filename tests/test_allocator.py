"""The tuned allocator (orbdistill.utils.tune_allocator): a student step reuses freed memory
instead of faulting fresh pages in."""

import platform
import subprocess
import sys

import pytest

CODE = """
import resource, sys
from ase.build import bulk
from orbdistill import StudentCalculator
atoms = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(11)   # 5,324 atoms: per-edge tensors of ~57 MB
atoms.rattle(0.01, seed=0)
atoms.calc = StudentCalculator("cu-sevennet-v2", num_threads=2, on_extrapolation="ignore",
                               tune_allocator=(sys.argv[1] == "tuned"), fused_kernels=(sys.argv[2] == "fused"))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for seed in (1, 2):                                                  # warm-up steps
    atoms.rattle(0.001, seed=seed); atoms.get_forces()
before = faults()
for seed in (3, 4):
    atoms.rattle(0.001, seed=seed); atoms.get_forces()
print((faults() - before) // 2)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_tuned_student_step_reuses_memory_instead_of_faulting_pages_in():
    """The eager model (fused_kernels=False; the default kernels avoid the per-edge tensors).
    With glibc's defaults a block above 32 MB (the most its dynamic mmap threshold rises to)
    is mapped afresh at every allocation, so each step of a 5,324-atom cell faults its
    per-edge tensors in again: about 920,000 page faults per step, measured twice, which is
    what makes large steps up to 2.6x slower. With tune_allocator=True freed blocks are
    reused: 1,700 and 233,000 in two runs (the heap sometimes still grows as it fragments,
    the reason the tuning is opt-in)."""
    faults = {(mode, path): int(subprocess.check_output([sys.executable, "-c", CODE, mode, path], text=True).split()[-1])
              for mode, path in (("system", "eager"), ("tuned", "eager"), ("system", "fused"))}
    assert faults[("system", "eager")] > 300_000
    assert faults[("tuned", "eager")] < 0.5 * faults[("system", "eager")]
    # the fused kernels (the default) write no per-edge tensors of width F: few pages to fault
    assert faults[("system", "fused")] < 0.2 * faults[("system", "eager")]


def test_tune_allocator_says_whether_it_applied():
    """(in a subprocess: the setting is process-wide and the suite runs without it)"""
    out = subprocess.check_output([sys.executable, "-c", "from orbdistill.utils import tune_allocator; "
                                   "print(tune_allocator(), tune_allocator())"], text=True).split()
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out == [str(glibc)] * 2
