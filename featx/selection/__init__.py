"""Choosing a setup: the sweep (``sweep``), transferability scores (``transferability``) and the run
folder's report (``report``)."""
