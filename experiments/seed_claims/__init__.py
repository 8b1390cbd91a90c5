"""Table 6: every checkable numeric claim of the seed texts (``../shared/seeds/*.txt``),
recomputed with cnn_jax's own code (``claims.py``) and tabulated (``report.py``)."""
