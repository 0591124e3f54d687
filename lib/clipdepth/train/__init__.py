"""Training: the trainer (run folder, loop, evaluation), one optimiser step, lockstep groups of rows
sharing a data stream, the SILog loss, the feature cache, and plans of row groups.
"""
