"""Hyper-parameter search over spec fields (``core hpo``), on Optuna: the search space
(:mod:`core.hpo.space`), the study (:mod:`core.hpo.study`), one trial as a real training run
(:mod:`core.hpo.trial`) and what a person reads at the end (:mod:`core.hpo.report`)."""
