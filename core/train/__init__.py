"""The training engine: the loop (:mod:`.trainer`), exact contrastive accumulation, optimizer and
schedule, RNG capture, logs and curves, and validation during training.

``torchrun -m core.train --config clip.toml`` runs one worker (:mod:`core.cli.train`).
"""
