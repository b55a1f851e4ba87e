"""Backbone adapters.  ``base`` holds the contract; ``timm`` and ``hf`` are the built-in plugins."""
