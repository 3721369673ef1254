"""Data beside dataset.py: the data-folder rules (folder.py) and the built-in synthetic signer (synth.py)."""
