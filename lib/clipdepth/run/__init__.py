"""Running: ``./run_all.sh``, executors (local, submitit, Slurm), parameter checks, ``clipdepth bench``
and the console entry point.
"""
