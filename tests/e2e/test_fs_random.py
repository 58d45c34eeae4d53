"""Differential random test: random operation sequences applied to the filesystem under
test and to a local directory side by side, compared after every step (see fsrandom.py).

A failure names its seed; `CKPT_SEED=<seed> pytest tests/e2e/test_fs_random.py` replays it
(the seed from the environment runs in addition to the fixed ones). CKPT_STEPS changes the
number of steps per seed.
"""

import os

import pytest

from fsfixtures import fsdir_pair  # noqa: F401
from fsrandom import DifferentialTester

FIXED_SEEDS = [1, 2, 3, 4, 5]
STEPS = int(os.environ.get("CKPT_STEPS", "400"))


def _seeds():
    extra = os.environ.get("CKPT_SEED")
    return FIXED_SEEDS + ([int(extra)] if extra else [])


@pytest.mark.parametrize("seed", _seeds())
def test_random_operations_match_reference(fsdir_pair, seed):
    reference, under_test = fsdir_pair
    # each seed in its own subdirectory pair, so a seed's run is independent of the others'
    ref_root, dut_root = os.path.join(reference, "t"), os.path.join(under_test, "t")
    os.mkdir(ref_root)
    os.mkdir(dut_root)
    DifferentialTester(ref_root, dut_root).run(seed, STEPS)
