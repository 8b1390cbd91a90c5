"""Table 1, the evolution of CNN architectures: published figures beside measured ones.

``rows`` holds the static data (papers, published depth, top-1 and parameter counts with
their sources), ``run`` measures the models on this machine, ``report`` builds the table
and plots from the two. See ``experiments/evolution/README.md``.
"""
