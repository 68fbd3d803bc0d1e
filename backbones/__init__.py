"""Built-in backbone plugins, one package per model family (``siglip2``, ``openclip``, ``radio``),
each registered through the ``clipcore.plugins`` entry-point group like any third-party plugin."""
