"""The ``tensorboard`` logger: TensorBoard event files in ``<results_dir>/train/tensorboard``
(scalars by step, the training curves as an image, the best checkpoint's path as text)."""

from core import LoggerSpec, hookimpl, lazy


@hookimpl
def register_loggers(register):
    register(LoggerSpec(name="tensorboard", open=lazy("plugins.tensorboard_logger.run:TensorBoardRun"),
                        on_by_default=True, description="TensorBoard event files in <results_dir>/train/tensorboard"))
