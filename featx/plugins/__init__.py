"""Extension points: the hooks (``hookspecs``), the pluggy plugin manager (``manager``) and the
backbone names it collects (``registry``)."""
