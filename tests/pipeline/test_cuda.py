"""The device path of txt2img; skipped without CUDA. Every listed sampler runs a hires job on the built-in
model in fp16 (VAE in bf16) and gives a finite, non-blank image of the right size; the seeded CPU noise
makes the CUDA image close to the CPU one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.diffusion.samplers import api_samplers
from pipeline.models.checkpoints import CheckpointRegistry
from pipeline.models.manager import ModelManager
from tests.conftest import Env, pixels
from upscalers.registry import UpscalerRegistry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

HR = {"enable_hr": True, "hr_scale": 2.0, "steps": 6, "hr_second_pass_steps": 4, "denoising_strength": 0.5,
      "width": 64, "height": 64, "seed": 11}


@pytest.fixture(scope="module")
def cuda_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("models-cuda")
    mm = ModelManager(CheckpointRegistry(root, root / "data"), torch.device("cuda"), torch.float16,
                      vae_dtype=torch.bfloat16)
    return Env(mm, UpscalerRegistry(root, device=torch.device("cuda")))


@pytest.mark.parametrize("sampler", [s["name"] for s in api_samplers()])
@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_every_sampler_runs_a_hires_job_in_half_precision(cuda_env, env, sampler, upscaler):
    res = cuda_env.run(**HR, sampler_name=sampler, hr_upscaler=upscaler)
    img = pixels(res.images[0])
    assert res.images[0].size == (128, 128) and np.isfinite(img).all() and img.std() > 1
    on_cpu = pixels(env.run(**HR, sampler_name=sampler, hr_upscaler=upscaler).images[0])
    assert np.abs(img.astype(float) - on_cpu).mean() < 12  # same seeds, same noise: only rounding differs


# -- speed paths (pipeline/accel) on the GPU ------------------------------------------------------------

def _accel_env(root, **accel_kw) -> Env:
    from pipeline.models.accel import Accel, choose

    cuda = torch.device("cuda")
    policy = choose(cuda, "auto")
    mm = ModelManager(CheckpointRegistry(root, root / "data"), cuda, policy.dtype, policy.vae_dtype,
                      accel=Accel(policy, **accel_kw))
    return Env(mm, UpscalerRegistry(root, device=cuda))


def _device_of(module) -> str:
    return next(module.parameters()).device.type


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_memory_modes_keep_only_the_running_part_on_the_gpu(tmp_path, cuda_env, mode):
    env_m = _accel_env(tmp_path, memory=mode)
    model = env_m.model()
    parts = (model.text_encoders[0], model.unet, model.vae)
    assert [_device_of(m) for m in parts] == ["cpu", "cpu", "cpu"]  # loaded on the CPU, nothing waits on the GPU
    seen: dict[str, list[str]] = {}

    def record(name):
        def hook(*_):
            seen.setdefault(name, [_device_of(m) for m in parts])
        return hook

    handles = [model.text_encoders[0].register_forward_pre_hook(record("text")),
               model.vae.decoder.register_forward_pre_hook(record("vae"))]
    if mode == "medvram":
        handles.append(model.unet.register_forward_pre_hook(record("unet")))
    try:
        res = env_m.run(**HR)
    finally:
        for h in handles:
            h.remove()
    assert seen["text"] == ["cuda", "cpu", "cpu"]
    assert seen["vae"] == ["cpu", "cpu", "cuda"]
    if mode == "medvram":
        assert seen["unet"] == ["cpu", "cuda", "cpu"]
    normal = pixels(cuda_env.run(**HR).images[0]).astype(float)
    assert np.abs(pixels(res.images[0]) - normal).mean() < 1  # same kernels, same dtypes


def test_compiled_forwards_on_the_gpu_match_eager_without_recompiling(tmp_path, cuda_env):
    from torch._dynamo.utils import counters

    env_c = _accel_env(tmp_path, compile=True, cache_dir=tmp_path / "compile-cache")
    first = pixels(env_c.run(**HR).images[0]).astype(float)
    graphs = int(counters["stats"]["unique_graphs"])
    again = pixels(env_c.run(**HR).images[0]).astype(float)
    assert int(counters["stats"]["unique_graphs"]) == graphs  # the repeated job compiled nothing
    assert np.array_equal(first, again)
    eager = pixels(cuda_env.run(**HR).images[0]).astype(float)
    assert np.abs(first - eager).mean() < 2


# -- issue 12 part 3/4/5 paths on the GPU: fused QKV, SDPA backends, CUDA graphs, medvram pixel upscaler,
# -- the on-device 8-bit conversion ---------------------------------------------------------------------

def test_fused_qkv_on_the_gpu_gives_the_unfused_image(tmp_path, cuda_env):
    from pipeline.models.accel.fused_qkv import is_fused

    env_f = _accel_env(tmp_path, fused_qkv="on")
    assert is_fused(env_f.model().unet)
    fused = pixels(env_f.run(**HR).images[0]).astype(float)
    plain = pixels(cuda_env.run(**HR).images[0]).astype(float)
    assert np.abs(fused - plain).mean() < 1  # fp16 rounding of a differently blocked matrix product only


@pytest.mark.parametrize("backend", ["flash", "efficient", "cudnn", "math"])
def test_each_sdpa_backend_is_set_and_gives_the_same_image(tmp_path, cuda_env, backend):
    from torch.nn.attention import SDPBackend

    from pipeline.models.accel.sdpa import current_order, reset_sdpa_backend

    try:
        env_b = _accel_env(tmp_path, sdpa_backend=backend)
        model = env_b.model()
        wanted = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                  "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[backend]
        assert current_order()[0] == wanted
        seen = {}
        hook = model.unet.register_forward_pre_hook(lambda *_: seen.setdefault("enabled", (
            torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
            torch.backends.cuda.math_sdp_enabled())))
        try:
            image = pixels(env_b.run(**HR).images[0]).astype(float)
        finally:
            hook.remove()
        assert seen["enabled"][2]  # math stays as the fallback
    finally:
        reset_sdpa_backend()
    assert current_order() is None
    default = pixels(cuda_env.run(**HR).images[0]).astype(float)  # PyTorch's own order again
    assert np.abs(image - default).mean() < 2


def test_cuda_graphs_replay_and_match_eager(tmp_path, cuda_env):
    from torch._dynamo.utils import counters

    env_g = _accel_env(tmp_path, compile=True, cuda_graphs=True, cache_dir=tmp_path / "compile-cache")
    model = env_g.model()
    assert model.extra["compiled"] == "reduce-overhead"
    first = pixels(env_g.run(**HR).images[0]).astype(float)
    graphs = int(counters["stats"]["unique_graphs"])
    again = pixels(env_g.run(**HR).images[0]).astype(float)
    third = pixels(env_g.run(**{**HR, "seed": 12}).images[0]).astype(float)  # another seed: replays
    assert int(counters["stats"]["unique_graphs"]) == graphs
    assert np.array_equal(first, again) and not np.array_equal(first, third)
    eager = pixels(cuda_env.run(**HR).images[0]).astype(float)
    assert np.abs(first - eager).mean() < 2


def test_medvram_pixel_upscaler_sits_on_the_gpu_only_while_it_runs(tmp_path):
    import safetensors.torch
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(5)
    (tmp_path / "RealESRGAN").mkdir()
    state = Compact(num_feat=8, num_conv=2, upscale=4).state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()},
                                str(tmp_path / "RealESRGAN" / "Compact-x4.safetensors"))
    env_m = _accel_env(tmp_path, memory="medvram")
    env_m.upscalers = UpscalerRegistry(tmp_path, device=torch.device("cuda"), offload=torch.device("cpu"))
    env_m.upscalers.make_room = env_m.models.release_device
    model = env_m.model()
    loaded = env_m.upscalers.load(env_m.upscalers.resolve("Compact-x4"))
    assert _device_of(loaded.descriptor.model) == "cpu"
    seen = {}
    parts = (model.text_encoders[0], model.unet, model.vae)
    hook = loaded.descriptor.model.register_forward_pre_hook(lambda *_: seen.setdefault("at", (
        _device_of(loaded.descriptor.model), [_device_of(m) for m in parts])))
    try:
        env_m.run(**HR, hr_upscaler="Compact-x4")
    finally:
        hook.remove()
    assert seen["at"] == ("cuda", ["cpu", "cpu", "cpu"])  # the upscaler alone on the GPU
    assert _device_of(loaded.descriptor.model) == "cpu"


def test_on_device_8bit_conversion_equals_the_cpu_one():
    from pipeline.models.vae_codec import to_images

    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    on_cpu = [np.asarray(i) for i in to_images(x)]
    on_gpu = [np.asarray(i) for i in to_images(x.cuda())]
    assert all(np.array_equal(a, b) for a, b in zip(on_cpu, on_gpu, strict=True))
