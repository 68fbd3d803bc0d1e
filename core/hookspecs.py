"""Hook specifications: how a plugin adds backbones, losses, dataset formats, exporters, engine
builders and experiment loggers to clipcore.

A plugin is a module exposed through the ``clipcore.plugins`` entry-point group::

    # pyproject.toml of your package
    [project.entry-points."clipcore.plugins"]
    my_backbone = "my_package.plugin"

    # my_package/plugin.py
    from core import BackboneFamily, hookimpl

    @hookimpl
    def register_backbones(register):
        register(BackboneFamily(name="mine", types=("mine-tiny",), build=build, tiny=tiny))

Every hook is a registration callback: it receives ``register`` and calls it once per thing it
provides. ``register`` validates what it receives (raising :class:`core.errors.PluginError`
naming the plugin and the rule), rejects a name another plugin already registered (naming both)
and records which distribution and version provided it. Hooks are called with keyword arguments
only; an implementation may take fewer arguments than its spec. Built-in plugins use exactly
this path. A plugin imports only ``core``'s public API (``core.__all__``); ``docs/plugins.md`` is
the guide, with a minimal example of each kind. Run ``core plugins check NAME`` or the kit in
:mod:`core.testing` to verify a plugin.
"""

from __future__ import annotations

import pluggy

PROJECT = "clipcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backbones(register):
    """Register model families.

    :param register: call ``register(family)`` with a :class:`core.backbone.BackboneFamily` for
        each family. Every name in ``family.types`` becomes a valid ``model.type``; a type may be
        registered by one family only. ``family.build(cfg)`` returns a
        :class:`core.backbone.ClipModel` honouring the full backbone contract documented there
        (encoders, tokenizer, preprocessing spec, parameter groups, tower locking, gradient
        checkpointing, FSDP wrap classes, export refusal) and the ``cfg.model`` keys as
        :class:`core.backbone.BackboneFamily` states them (``pretrained``, ``image_size``,
        ``tokenizer_path``, ``canonicalize_text``, ``adaptor_name``, the logit init core resolved);
        ``family.tiny(type)`` returns a tiny random instance for the conformance kit.
    """


@hookspec
def register_losses(register):
    """Register contrastive losses.

    :param register: call ``register(loss)`` with a :class:`core.loss.LossSpec`; its ``name`` is a
        valid ``train.loss_type``. The built module's call signature, distributed behaviour and
        default logit initialisation are specified on :class:`core.loss.LossSpec`.
    """


@hookspec
def register_dataset_formats(register):
    """Register dataset formats.

    :param register: call ``register(fmt)`` with a :class:`core.data.DatasetFormat`; its ``name``
        is a valid ``dataset.train.type``. Its loader yields batches as specified on
        :class:`core.data.BatchLoader` (shapes, per-rank disjoint samples, seeded order, defined
        epoch length, resumable position) and honours ``dataset.on_bad_sample``.
    """


@hookspec
def register_exporters(register):
    """Register model exporters.

    :param register: call ``register(exporter)`` with a :class:`core.exporter.Exporter`. ``core
        export`` uses the exporter whose suffix matches ``export.onnx_file``; deploy-time evaluate
        and inference use its ``open_runner``.
    """


@hookspec
def register_engine_builders(register):
    """Register inference-engine builders.

    :param register: call ``register(builder)`` with a :class:`core.exporter.EngineBuilder`. ``core
        gen_trt_engine`` uses it; ``unavailable()`` must explain, not crash, when its library or
        hardware is missing.
    """


@hookspec
def register_loggers(register):
    """Register experiment loggers (trackers).

    :param register: call ``register(logger)`` with a :class:`core.tracking.LoggerSpec`; its
        ``name`` is a valid entry of ``train.loggers``. What a logger receives, and when, is
        specified in :mod:`core.tracking`; only rank 0 opens loggers, and one that raises is
        dropped with a warning (it never stops training).
    """
