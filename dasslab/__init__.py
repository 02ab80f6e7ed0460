"""dasslab: domain adaptive semantic segmentation by diffusion-based image translation with label guidance."""

from dasslab import resolvers  # noqa: F401  (the configs' resolvers exist as soon as dasslab is imported)
