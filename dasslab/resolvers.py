"""The OmegaConf resolvers the configs use, registered when ``dasslab`` is imported (before any compose).

* ``${dasslab.deepest_depth:${ptl.t_max},${ptl.N}}`` — the deepest timestep PTL translates from:
  ``ptl.t_max`` under domain striding, else ``ptl.N`` (the Appendix C augmentation's noise range).
* ``${dasslab.folder_size:ROOT,MAX_SIDE,MULTIPLE}`` — a folder pair's working size from its images
  (:func:`dasslab.data.folder.working_size`).
* ``${dasslab.folder_domain:ROOT,DOMAIN}`` — a folder pair's optional split (``target_test``): its dataset entry
  where ``ROOT/DOMAIN/images`` exists, else null (the split is absent).
* ``${dasslab.options:GROUP}`` — the options of a config group, comma-separated and wrapped (the commands'
  ``--help``, ``hydra.help.template``).
"""

from __future__ import annotations

from omegaconf import OmegaConf


def deepest_depth(t_max, n) -> int:
    return int(t_max) if t_max is not None else int(n)


def folder_size(root, max_side=512, multiple=8) -> list[int]:
    from dasslab.data.folder import working_size

    return working_size(root, int(max_side), int(multiple))


def folder_domain(root, domain):
    from pathlib import Path

    if not (Path(str(root)).expanduser() / str(domain) / "images").is_dir():
        return None
    return {"_target_": "dasslab.data.folder.FolderDomain", "root": str(root), "domain": str(domain)}


def options(group: str, indent: int = 25, width: int = 118) -> str:
    """The options of config group ``group`` (``conf/<group>/*.yaml``), as Hydra's config loader sees them."""
    import textwrap

    try:
        from hydra.core.global_hydra import GlobalHydra

        names = GlobalHydra.instance().config_loader().get_group_options(str(group))
    except Exception:  # noqa: BLE001 - no Hydra context: the packaged folder
        from pathlib import Path

        from dasslab.config import CONF_DIR

        names = sorted(p.stem for p in (Path(CONF_DIR) / str(group)).glob("*.yaml"))
    lines = textwrap.wrap(", ".join(names), width=width - int(indent))
    return ("\n" + " " * int(indent)).join(lines)


def register() -> None:
    OmegaConf.register_new_resolver("dasslab.deepest_depth", deepest_depth, replace=True)
    OmegaConf.register_new_resolver("dasslab.folder_size", folder_size, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("dasslab.options", options, replace=True)
    OmegaConf.register_new_resolver("dasslab.folder_domain", folder_domain, replace=True)


register()
