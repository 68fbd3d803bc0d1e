"""Exporter plugins (``register_exporters``)."""
