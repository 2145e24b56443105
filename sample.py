"""Generate images from a trained VAE: ``python sample.py ckpt_path=PATH [overrides]``.

Examples:
    python sample.py ckpt_path=logs/train/runs/<time>                       # 64 prior samples
    python sample.py ckpt_path=logs/train/runs/<time> mode=reconstruct n=16
    python sample.py ckpt_path=logs/train/runs/<time> mode=interpolate path=slerp
    python sample.py ckpt_path=logs/train/runs/<time> mode=traverse dims=[0,3]
    python sample.py ckpt_path=last.ckpt mode=manifold                      # latent_dim = 2 only

All options, with their defaults, are in conf/sample.yaml.
"""

import hydra
from omegaconf import DictConfig

from vae_lightning.errors import report_user_errors
from vae_lightning.generate import generate


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        generate(cfg)


if __name__ == "__main__":
    main()
