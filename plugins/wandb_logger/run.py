"""One training run in Weights & Biases (``wandb.init`` with an explicit run object)."""

from __future__ import annotations

from pathlib import Path

from core import Run
from plugins.wandb_logger.config import SECTION

RUN_ID_FILE = "wandb_run_id"


class WandbRun:
    def __init__(self, run: Run):
        import wandb

        cfg = SECTION.of(run.cfg)
        id_file = run.out_dir / RUN_ID_FILE
        run_id = cfg.run_id or (id_file.read_text(encoding="utf-8").strip()
                                if run.resumed and id_file.is_file() else None)
        self._run = wandb.init(
            project=cfg.project, entity=cfg.entity or None, group=cfg.group or None, tags=list(cfg.tags) or None,
            name=cfg.name or run.name, id=run_id, resume="allow" if run_id else None, config=run.config,
            dir=str(run.out_dir), mode=cfg.mode, reinit="finish_previous" if cfg.reinit else None,
            sync_tensorboard=cfg.sync_tensorboard, save_code=cfg.save_code)
        id_file.write_text(self._run.id + "\n", encoding="utf-8")

    def log_metrics(self, metrics: dict[str, float], *, step: int, epoch: int) -> None:
        self._run.log({**metrics, "epoch": epoch}, step=step)

    def log_file(self, path: Path) -> None:
        self._run.save(str(path), base_path=str(path.parent), policy="now")

    def log_checkpoint(self, path: Path, metrics: dict[str, float]) -> None:
        self._run.summary["best_checkpoint"] = str(path)
        self._run.summary.update({f"best/{k}": v for k, v in metrics.items()})

    def close(self, *, failed: bool) -> None:
        self._run.finish(exit_code=1 if failed else 0)
