"""Evaluation: per-image metrics (BTS-style), the authors' and DepthCLIP's protocols, and scoring
anyone's saved predictions (``clipdepth score``).
"""
