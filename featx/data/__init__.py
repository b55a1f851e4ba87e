"""Data in: samples and their content keys (``samples``), datasets on disk (``loaders``), labels (``labels``)."""
