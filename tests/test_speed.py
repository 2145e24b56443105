"""The fast paths (issue: performance): device-resident data, fused Adam, bf16 mixed
precision, channels-last and compiled networks, clipping with the step guard's norm.
Speed itself is measured in ``benchmarks/``, not here."""

import json
import math
import os

import pytest
import torch
from hydra.utils import instantiate

from vae_lightning.data import MNISTDataModule
from vae_lightning.data.device import DeviceBatches
from vae_lightning.errors import ConfigError
from vae_lightning.stability import StepGuard
from vae_lightning.training import train


def batches_of(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if getattr(loader, "sampler", None) is not None and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    return list(loader)


def test_device_batches_are_the_dataloaders_batches(tiny_mnist, monkeypatch):
    """on_device=true serves exactly the batches of the DataLoader path: same order for
    every epoch (a permutation of (seed, epoch)), same evaluation batches, same labels."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    host = MNISTDataModule(str(tiny_mnist), batch_size=48, val_size=100, on_device=False)
    device = MNISTDataModule(str(tiny_mnist), batch_size=48, val_size=100, on_device=True)
    for dm in (host, device):
        dm.setup("fit")
    assert isinstance(device.train_dataloader().loader, DeviceBatches)
    assert not isinstance(host.train_dataloader().loader, DeviceBatches)
    for epoch in (0, 1):
        ours = batches_of(device.train_dataloader(), epoch)
        reference = batches_of(host.train_dataloader(), epoch)
        assert len(ours) == len(reference) == len(device.train_dataloader()) == math.ceil(412 / 48)
        for (x, y), (x_ref, y_ref) in zip(ours, reference, strict=True):
            assert x.dtype == torch.uint8 and torch.equal(x, x_ref) and torch.equal(y, y_ref)
    first_epoch = torch.cat([y for _, y in batches_of(device.train_dataloader(), 0)])
    second_epoch = torch.cat([y for _, y in batches_of(device.train_dataloader(), 1)])
    assert not torch.equal(first_epoch, second_epoch)  # reshuffled every epoch
    for x, x_ref in zip(device.val_dataloader(), host.val_dataloader(), strict=True):
        assert torch.equal(x[0], x_ref[0])


def test_on_device_auto_keeps_data_on_the_host_without_a_gpu(tiny_mnist):
    dm = MNISTDataModule(str(tiny_mnist), val_size=100, on_device="auto")
    dm.setup("fit")
    if not torch.cuda.is_available():
        assert dm.data_device() is None
    assert MNISTDataModule(str(tiny_mnist), on_device=True).on_device == "true"
    with pytest.raises(ConfigError, match="data.on_device must be auto, true or false, got 'gpu'"):
        MNISTDataModule(str(tiny_mnist), on_device="gpu")


def test_training_on_device_equals_training_from_the_dataloader(make_cfg, tmp_path):
    """Same seed: the device-resident path trains to the same numbers as the DataLoader path
    (same batches, same binarisation noise), on CPU where the device is host memory."""
    metrics = {}
    for on_device in ("true", "false"):
        out = tmp_path / on_device
        train(make_cfg(f"data.on_device={on_device}", f"paths.output_dir={out}", "model.eval_iw_samples=4"))
        metrics[on_device] = json.loads((out / "metrics.json").read_text())
    assert metrics["true"].keys() == metrics["false"].keys()
    for key, value in metrics["false"].items():
        assert metrics["true"][key] == pytest.approx(value, rel=1e-5), key


def test_the_default_optimizer_is_fused_adam(make_cfg):
    model = instantiate(make_cfg("model.scheduler=null").model)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"] is True


def test_bf16_mixed_precision_trains_with_float32_loss_terms(make_cfg, tmp_path):
    """trainer.precision=bf16-mixed runs on CPU; the loss terms stay float32, so the
    numbers are close to a float32 run's."""
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        train(make_cfg(f"trainer.precision={precision}", f"paths.output_dir={out}", "test=false"))
        results[precision] = json.loads((out / "metrics.json").read_text())["val/nelbo"]
    assert math.isfinite(results["bf16-mixed"])
    assert results["bf16-mixed"] == pytest.approx(results["32-true"], rel=0.05)

    model = instantiate(make_cfg().model)
    x = torch.bernoulli(torch.rand(4, 1, 28, 28))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model._shared_step((x, None), "train")
    assert terms["loss"].dtype == terms["recon"].dtype == terms["kl"].dtype == torch.float32


def test_channels_last_conv_vae_computes_the_same_loss(make_cfg):
    cfg = make_cfg("model=conv_vae", "model.encoder.channels=[8,16]")
    plain = instantiate(cfg.model)
    cfg.model.channels_last = True
    fast = instantiate(cfg.model)
    fast.load_state_dict(plain.state_dict())
    conv = next(m for m in fast.model.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.bernoulli(torch.rand(8, 1, 28, 28))
    torch.manual_seed(0)
    a = plain._shared_step((x, None), "train")["nelbo"]
    torch.manual_seed(0)
    b = fast._shared_step((x, None), "train")["nelbo"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_compiled_networks_train_and_save_plain_keys(make_cfg, tmp_path):
    """model.compile=true: torch.compile of the encoder and decoder, in place; the
    checkpoint has the same keys as an uncompiled model's, so it loads without compiling."""
    cfg = make_cfg("model.compile=true", "test=false", "trainer.max_epochs=1", "data.batch_size=64")
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert math.isfinite(metrics["val/nelbo"])
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    plain_keys = set(instantiate(make_cfg().model).state_dict())
    assert set(ckpt["state_dict"]) == plain_keys


def test_the_guard_clips_with_the_norm_it_computed():
    w = torch.nn.Parameter(torch.zeros(4))
    w.grad = torch.full((4,), 3.0)  # norm 6
    norm, skipped = StepGuard().check([w], step=0, clip_norm=1.5)
    assert not skipped and norm == pytest.approx(6.0)
    assert torch.linalg.vector_norm(w.grad).item() == pytest.approx(1.5, rel=1e-5)
    w.grad = torch.full((4,), 0.5)  # norm 1: below the limit, untouched
    StepGuard().check([w], step=1, clip_norm=1.5)
    assert torch.equal(w.grad, torch.full((4,), 0.5))


def test_trainer_gradient_clip_val_is_applied_by_the_guard(make_cfg, tmp_path):
    """trainer.gradient_clip_val still clips (the guard does it with its norm): with SGD at
    lr 1 and a clip of 1e-6, no step moves the weights by more than 1e-6."""
    import lightning as L

    from vae_lightning.checkpoints import read_checkpoint

    cfg = make_cfg(
        "model.optimizer._target_=torch.optim.SGD",
        "model.optimizer.lr=1.0",
        "model.scheduler=null",  # plain SGD: one-cycle would also cycle SGD's momentum
        "trainer.gradient_clip_val=1e-6",
        "test=false",
    )
    L.seed_everything(cfg.seed)
    start = instantiate(cfg.model).state_dict()
    train(cfg)
    end = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    steps = end["global_step"]
    moved = torch.linalg.vector_norm(
        torch.cat([(end["state_dict"][k] - v).flatten() for k, v in start.items() if v.is_floating_point()])
    )
    assert steps > 10 and 0 < moved.item() <= steps * 1e-6 * 1.01


def test_the_nvml_probe_is_turned_off_only_where_nvml_does_not_load(monkeypatch):
    """Lightning's PYTORCH_NVML_BASED_CUDA_CHECK=1 makes torch try to load NVML on every
    torch.cuda.is_available() (optimizers ask every step): removed where the library does
    not load, kept where it does, and CUDA's answer is the same either way."""
    import ctypes

    from vae_lightning import speed

    answer = torch.cuda.is_available()
    monkeypatch.setenv(speed.NVML_PROBE, "1")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # a driver's NVML loads
    assert not speed.skip_failing_nvml_probe()
    assert os.environ[speed.NVML_PROBE] == "1"

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert speed.skip_failing_nvml_probe()
    assert speed.NVML_PROBE not in os.environ
    assert torch.cuda.is_available() == answer
    assert not speed.skip_failing_nvml_probe()  # nothing left to remove
    monkeypatch.setenv(speed.NVML_PROBE, "1")
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm: the check asks AMD's library, kept
    assert not speed.skip_failing_nvml_probe()
    assert os.environ[speed.NVML_PROBE] == "1"


def test_a_training_process_without_nvml_does_not_probe_it(make_cfg, tmp_path):
    """After ``import vae_lightning`` and a whole training run, the probe is off on a
    machine where NVML does not load (this one, unless it has an NVIDIA driver)."""
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        pytest.skip("NVML loads here: the probe is kept")
    except OSError:
        pass
    train(make_cfg("trainer.max_epochs=1", "test=false"))
    assert os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1"
