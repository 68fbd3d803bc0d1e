"""Embedding and scoring: encoders over a model or a deployed runner, retrieval and
classification metrics, and the retrieval and zero-shot classification runs."""
