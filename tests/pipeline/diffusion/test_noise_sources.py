"""The noise sources (`randn_source` GPU / CPU / NV) and ENSD, against values derived independently of the
production code: Random123's published Philox4x32-10 known-answer vectors, a pure-Python Philox + Box-Muller
written from the algorithm's definition (a1111_rng.py), and the numbers A1111 documents for its NV generator
(which are what `torch.randn` gives on an NVIDIA card)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.diffusion.philox import PhiloxGenerator, philox4x32
from pipeline.diffusion.seeds import ImageNoise, image_noise, step_noise
from tests.pipeline.diffusion.a1111_rng import ImageRNGReference, NVReference, philox_words

# Random123 kat_vectors: philox4x32 10 rounds (counter, key, expected output)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_philox_matches_random123_known_answers(counter, key, expected):
    got = philox4x32(np.array(counter, dtype=np.uint32)[:, None], np.array(key, dtype=np.uint32)[:, None])
    assert tuple(int(w) for w in got[:, 0]) == expected
    assert philox_words(counter, key) == expected  # the tests' own reference agrees too


def test_nv_seed_0_gives_the_documented_cuda_numbers():
    """A1111's rng_philox documents these for Generator(0).randn((3, 4)); torch.manual_seed(0);
    torch.randn(3, 4, device="cuda") prints the same on NVIDIA cards."""
    expected = torch.tensor([[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                             [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                             [-1.07454231, -0.36314407, -1.67105067, 2.26550497]])
    got = PhiloxGenerator(0).randn((3, 4))
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=5e-7, rtol=0)


# (seed, shape, number of draws before the one compared): offsets, a latent shape, a seed over 2^32
CASES = [(0, (3, 4), 0), (1234, (4, 8, 8), 0), (1234, (4, 8, 8), 1), (31337 + 1234, (4, 8, 8), 2),
         (4294967294, (2, 5), 3), ((1 << 32) + 77, (7,), 0), (2**64 - 1, (1, 3), 1)]


@pytest.mark.parametrize(("seed", "shape", "skip"), CASES)
def test_nv_equals_the_algorithm_bit_for_bit(seed, shape, skip):
    ours, ref = PhiloxGenerator(seed), NVReference(seed)
    for _ in range(skip):  # a draw advances the offset by one whatever its size
        ours.randn((1,))
        ref.randn((1,))
    assert torch.equal(ours.randn(shape), ref.randn(shape))


@pytest.mark.parametrize("source", ["CPU", "NV"])
@pytest.mark.parametrize("ensd", [0, 31337])
def test_a_pass_draws_like_a1111s_image_rng(source, ensd):
    """The initial noise is each image's first draw; the sampler's draws continue that generator, or with
    ENSD a generator seeded with seed + ENSD (from its first draw)."""
    shape, seeds = (4, 8, 8), [1234, 1235]
    ours = ImageNoise(shape, seeds, source=source, ensd=ensd)
    ref = ImageRNGReference(source, shape, seeds, ensd)
    assert torch.equal(ours.first(), ref.noise())
    for _ in range(3):
        assert torch.equal(step_noise(ours, (2, *shape), "cpu", torch.float32), ref())


def test_gpu_source_on_the_cpu_is_the_cpu_source():
    shape, seeds = (4, 8, 8), [7, 8]
    gpu, cpu = ImageNoise(shape, seeds, source="GPU"), ImageNoise(shape, seeds, source="CPU")
    assert torch.equal(gpu.first(), cpu.first())
    assert torch.equal(gpu.next(), cpu.next())
    assert torch.equal(image_noise(shape, 7, source="GPU"), torch.randn(shape, generator=torch.Generator().manual_seed(7)))


def test_sources_and_ensd_change_the_noise():
    shape, seeds = (4, 8, 8), [1234]
    cpu, nv = ImageNoise(shape, seeds, source="CPU"), ImageNoise(shape, seeds, source="NV")
    assert not torch.equal(cpu.first(), nv.first())
    plain, delta = ImageNoise(shape, seeds, source="NV"), ImageNoise(shape, seeds, source="NV", ensd=31337)
    assert torch.equal(plain.first(), delta.first())  # ENSD leaves the initial noise alone
    assert not torch.equal(plain.next(), delta.next())


def test_an_unknown_source_is_refused():
    with pytest.raises(ValueError, match="GPU, CPU, NV"):
        ImageNoise((4, 8, 8), [1], source="XPU")
