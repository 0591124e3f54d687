"""The study: the registry of paper rows (configurations as data), the authors' configs, the published
numbers and claims, seed statistics, the comparison with the paper, and Table 8's neighbours.
"""
