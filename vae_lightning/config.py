"""OmegaConf resolvers used by ``conf/`` (registered when ``vae_lightning`` is imported)."""

from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


def register_resolvers() -> None:
    """``${repo_root:}``: the checkout that holds ``conf/`` (where ``logs/`` and ``data/`` go)."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


def null_group_overrides(argv: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """``logger=null`` (any config group set to null) -> ``~logger``: Hydra 1.3 refuses a
    null override of a group that has a default, but deleting the entry means the same."""
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()} if conf_dir.is_dir() else set()
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        out.append(f"~{key}" if sep and value == "null" and key in groups else arg)
    return out
