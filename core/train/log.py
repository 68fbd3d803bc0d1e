"""What a training run reports: a rich progress bar on rank 0, one log file per rank, the metrics
(``metrics.jsonl`` and the loggers of ``train.loggers``: :mod:`core.train.trackers`), and
``training_curves.png`` at the end."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from core.tracking import Run, read_metrics
from core.train.trackers import Trackers

CURVES_FILE = "training_curves.png"


def rank_logger(log_dir: Path, rank: int) -> logging.Logger:
    """``clipcore.train.rank<r>``, writing to ``log_dir/rank<r>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"clipcore.train.rank{rank}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    _close_handlers(logger)
    file_handler = logging.FileHandler(log_dir / f"rank{rank}.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(file_handler)
    return logger


def console_logger(file_logger: logging.Logger, console: Console) -> logging.Logger:
    """A child of ``file_logger`` that also prints on ``console`` (its records reach the file too)."""
    from rich.logging import RichHandler

    logger = file_logger.getChild("console")
    _close_handlers(logger)
    logger.addHandler(RichHandler(console=console, show_path=False, show_time=False, markup=False))
    return logger


def _close_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


class TrainLog:
    """Logging for one rank. Only rank 0 (``main``) draws the bar and writes metrics."""

    def __init__(self, out_dir: Path, *, rank: int, main: bool):
        self.out_dir, self.main = out_dir, main
        self.console = Console(stderr=True) if main else None
        self.file_logger = rank_logger(out_dir / "logs", rank)
        self.logger = console_logger(self.file_logger, self.console) if main else self.file_logger
        self.trackers: Trackers | None = None
        self._progress: Progress | None = None
        self._task = None
        self._last_time = time.perf_counter()
        self._last_samples = 0

    def open_trackers(self, run: Run) -> Trackers:
        """Start the loggers of ``train.loggers`` (rank 0); their failures become warnings here."""
        self.trackers = Trackers(run, main=self.main, warn=self.warning)
        return self.trackers

    # -- text ---------------------------------------------------------------------------
    def info(self, message: str) -> None:
        self.logger.info(message)

    def warning(self, message: str) -> None:
        self.logger.warning(message)

    # -- progress -----------------------------------------------------------------------
    def start(self, *, total_steps: int, done_steps: int, samples_seen: int) -> None:
        self._last_time, self._last_samples = time.perf_counter(), samples_seen
        if not self.main:
            return
        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} samples/s  loss {task.fields[loss]}  lr {task.fields[lr]}  "
                       "scale {task.fields[scale]}"),
            TimeRemainingColumn(), console=self.console, disable=not self.console.is_terminal)
        self._task = self._progress.add_task("train", total=total_steps, completed=done_steps, epoch="-",
                                             rate="-", loss="-", lr="-", scale="-")
        self._progress.start()

    def advance(self, *, step: int, epoch: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, epoch=epoch)

    def samples_per_second(self, samples_seen: int) -> float:
        """Throughput since the previous call."""
        now = time.perf_counter()
        rate = (samples_seen - self._last_samples) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_samples = now, samples_seen
        return rate

    def failed(self, exc: BaseException) -> None:
        """Record why the run stopped in this rank's log file (the console gets it from the CLI)."""
        self.file_logger.error("training stopped: %s: %s", type(exc).__name__, exc)

    def rank_loss(self, *, step: int, loss: float) -> None:
        """This rank's own loss, in its log file."""
        self.file_logger.info(f"step {step}: loss on this rank {loss:.6g}")

    def train_metrics(self, *, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """Record logged training scalars (rank 0) and show them on the bar."""
        if not self.main:
            return
        self.write(step=step, epoch=epoch, metrics=metrics)
        lr = next((v for k, v in metrics.items() if k.startswith("train/lr")), float("nan"))
        if self._progress is not None:
            self._progress.update(self._task, rate=f"{metrics['train/samples_per_s']:.1f}",
                                  loss=f"{metrics['train/loss']:.4f}", lr=f"{lr:.2e}",
                                  scale=f"{metrics['train/logit_scale']:.2f}")
        line = f"epoch {epoch} step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        # on a terminal the bar shows them; the log file always gets them
        (self.file_logger if self.console.is_terminal else self.logger).info(line)

    def write(self, *, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """Send the scalars to the loggers (rank 0)."""
        if self.trackers is not None:
            self.trackers.log_metrics(metrics, step=step, epoch=epoch)

    def close(self, *, failed: bool = False) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.trackers is not None:
            self.trackers.close(failed=failed)
            self.trackers = None
        _close_handlers(self.logger)
        _close_handlers(self.file_logger)


def plot_curves(metrics_path: Path, png_path: Path) -> Path:
    """``training_curves.png``: training loss, learning rates, and validation metrics by step."""
    from core.plots import png

    records = read_metrics(metrics_path)
    train = [r for r in records if "train/loss" in r]
    val = [r for r in records if any(k.startswith("val/") for k in r)]
    val_keys = [k for k in ("val/t2i_R@1", "val/i2t_R@1", "val/t2i_R@5", "val/i2t_R@5", "val/t2i_mAP", "val/i2t_mAP")
                if any(k in r for r in val)]
    with png(png_path, figsize=(15, 4), ncols=3) as (_, axes):
        axes[0].plot([r["step"] for r in train], [r["train/loss"] for r in train])
        axes[0].set(title="training loss", xlabel="step")
        for key in sorted({k for r in train for k in r if k.startswith("train/lr")}):
            axes[1].plot([r["step"] for r in train if key in r], [r[key] for r in train if key in r],
                         label=key.removeprefix("train/lr/"))
        axes[1].set(title="learning rate", xlabel="step")
        for key in val_keys:
            points = [(r["step"], r[key]) for r in val if key in r and math.isfinite(r[key])]
            axes[2].plot([s for s, _ in points], [v for _, v in points], marker="o", label=key.removeprefix("val/"))
        axes[2].set(title="validation", xlabel="step")
        for ax in axes[1:]:
            if ax.lines:
                ax.legend()
    return png_path
