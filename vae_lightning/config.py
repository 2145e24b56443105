"""OmegaConf resolvers used by ``conf/`` (registered when ``vae_lightning`` is imported)."""

from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]


def register_resolvers() -> None:
    """``${repo_root:}``: the checkout that holds ``conf/`` (where ``logs/`` and ``data/`` go)."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
