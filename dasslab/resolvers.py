"""The OmegaConf resolvers the configs use, registered when ``dasslab`` is imported (before any compose).

* ``${dasslab.deepest_depth:${ptl.t_max},${ptl.N}}`` — the deepest timestep PTL translates from:
  ``ptl.t_max`` under domain striding, else ``ptl.N`` (the Appendix C augmentation's noise range).
* ``${dasslab.folder_size:ROOT,MAX_SIDE,MULTIPLE}`` — a folder pair's working size from its images
  (:func:`dasslab.data.folder.working_size`).
"""

from __future__ import annotations

from omegaconf import OmegaConf


def deepest_depth(t_max, n) -> int:
    return int(t_max) if t_max is not None else int(n)


def folder_size(root, max_side=512, multiple=8) -> list[int]:
    from dasslab.data.folder import working_size

    return working_size(root, int(max_side), int(multiple))


def register() -> None:
    OmegaConf.register_new_resolver("dasslab.deepest_depth", deepest_depth, replace=True)
    OmegaConf.register_new_resolver("dasslab.folder_size", folder_size, replace=True, use_cache=True)


register()
