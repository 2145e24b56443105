"""The hierarchical VAE through the whole framework: train.py with DDP, bf16, resume,
the per-group metrics, the EMA weights, the panels and sample.py."""

import json
import math

import pytest
import torch
from test_ddp import TINY_DDP
from test_logging import train_py
from test_models import TINY
from test_resume import RUN

from vae_lightning.checkpoints import read_checkpoint
from vae_lightning.generate import generate
from vae_lightning.training import train

HVAE = ["model=hvae", *TINY["hvae"]]  # 4 groups: 1x1, 7x7 twice, 14x14
SHORT = ["++trainer.limit_train_batches=4", "++trainer.limit_val_batches=2", "++trainer.limit_test_batches=2"]


def metrics_of(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_hvae_trains_with_per_group_numbers_ema_and_panels(make_cfg, tmp_path):
    cfg = make_cfg(
        *HVAE,
        "trainer.max_epochs=2",
        "++trainer.limit_train_batches=6",
        "callbacks.images.temperatures=[1.0,0.7]",
    )
    train(cfg)
    run = tmp_path / "run"
    m = metrics_of(run)
    assert all(math.isfinite(v) for v in m.values()), m
    groups = sorted(k for k in m if k.startswith("val/kl_group/"))
    assert groups == [f"val/kl_group/{g:02d}" for g in range(4)]
    assert sum(m[k] for k in groups) == pytest.approx(m["val/kl"], rel=1e-4)
    assert m["test/nelbo"] == pytest.approx(m["test/recon"] + m["test/kl"], rel=1e-5)
    assert m["test/nll"] <= m["test/nelbo"]
    assert 0 <= m["val/active_units"] <= 2 * (1 + 49 + 49 + 196)
    assert not any("/kl_per_dim/" in k for k in m)  # a hierarchy reports per group
    for panel in ("prior_samples", "prior_samples_t0.7", "reconstructions", "traversals"):
        assert (run / "images" / panel / "epoch_001.png").is_file(), panel
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    ema = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.")}
    trained = {k[6:]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert ema.keys() == trained.keys() and any(not torch.equal(ema[k], trained[k]) for k in ema)
    assert ckpt["hyper_parameters"]["family"] == "vae_lightning.models.HierarchicalVAE"


def test_hvae_resume_at_an_epoch_boundary_is_bit_identical(make_cfg, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = [*HVAE, *RUN, *SHORT]
    train(make_cfg(*common, f"paths.output_dir={whole}"))
    stop = "+callbacks.stop._target_=hooks.StopAfterEpochs"
    train(make_cfg(*common, f"paths.output_dir={parts}", stop, "+callbacks.stop.epochs=1"))
    train(make_cfg(*common, f"paths.output_dir={parts}", f"ckpt_path={parts}"))
    a = read_checkpoint(whole / "checkpoints" / "last.ckpt")
    b = read_checkpoint(parts / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 2 * 4
    for key, value in a["state_dict"].items():  # the EMA copy included
        assert torch.equal(value, b["state_dict"][key]), key


def test_hvae_in_bf16_mixed_precision(make_cfg, tmp_path):
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        overrides = [*HVAE, *SHORT, "trainer.max_epochs=1", "test=false"]
        train(make_cfg(*overrides, f"trainer.precision={precision}", f"paths.output_dir={out}"))
        results[precision] = metrics_of(out)["val/nelbo"]
    assert math.isfinite(results["bf16-mixed"])
    assert results["bf16-mixed"] == pytest.approx(results["32-true"], rel=0.05)


def test_hvae_under_ddp_has_the_numbers_of_one_process(tiny_mnist, tmp_path, make_cfg):
    logs = tmp_path / "logs"
    train_py(
        f"paths.data_dir={tiny_mnist}", f"paths.log_dir={logs}", *TINY_DDP, *HVAE, "logger=csv", cwd=tmp_path
    )
    (run,) = (logs / "train" / "runs").iterdir()
    ddp = metrics_of(run)
    train(make_cfg("train=false", f"ckpt_path={run}", "data.batch_size=48", "model.eval_iw_samples=8"))
    single = metrics_of(tmp_path / "run")
    for key in ("test/nelbo", "test/kl", "test/nll", "test/active_units", "test/kl_group/03"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-5), key


def test_sample_py_takes_one_temperature_per_group(make_cfg, tmp_path):
    from test_sample import sample_cfg

    train(make_cfg(*HVAE, *SHORT, "trainer.max_epochs=1", "test=false"))
    run = tmp_path / "run"
    out = {}
    for name, t in (("warm", "[1.0,1.0,1.0,1.0]"), ("one", "1.0"), ("cold", "[1.0,0.5,0.5,0.0]")):
        written = generate(
            sample_cfg(f"ckpt_path={run}", "n=6", f"temperature={t}", f"out_dir={tmp_path / name}")
        )
        out[name] = written.grid.read_bytes()
    assert out["warm"] == out["one"] and out["cold"] != out["one"]
    with pytest.raises(Exception, match="list of 4"):
        generate(
            sample_cfg(f"ckpt_path={run}", "n=2", "temperature=[1.0,0.5]", f"out_dir={tmp_path / 'bad'}")
        )
