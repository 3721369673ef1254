"""Data sources beside dataset.py: the built-in synthetic signer (synth.py)."""
