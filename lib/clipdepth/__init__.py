"""clipdepth: a reproducibility study of learned prompts for CLIP monocular depth estimation.

The package holds the model, data, metric, training and report code; the notebooks in
``notebooks/`` only wire these pieces together (see ``README.md``).
"""

__version__ = "0.1.0"
