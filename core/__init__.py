"""clipcore: a plugin-registry framework for CLIP-family image-text models.

``core`` holds the contracts (``hookspecs``, ``backbone``, ``loss``, ``data``, ``export``), the
config schema, the plugin registry, the generic loops and the CLI. Model families, losses,
dataset formats, exporters and engine builders are plugins (see ``core plugins``).
"""

from core.hookspecs import hookimpl

__all__ = ["hookimpl"]
