"""Train a VAE: ``python train.py [overrides]`` (``-m`` for a multirun sweep).

Examples:
    python train.py                                   # MLP VAE on MNIST
    python train.py model=conv_vae trainer.max_epochs=20
    python train.py -m model.latent_dim=2,8,32
"""

import sys

import hydra
from omegaconf import DictConfig

from vae_lightning.config import null_group_overrides, resume_in_run_dir
from vae_lightning.errors import report_user_errors
from vae_lightning.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with report_user_errors():
        return train(cfg)


if __name__ == "__main__":
    sys.argv = null_group_overrides(sys.argv)  # logger=null means: no logger
    sys.argv = resume_in_run_dir(sys.argv)  # ckpt_path=<run dir> goes on in that directory
    main()
