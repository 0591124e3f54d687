"""The model: CLIP loading and checkpoints, dense image features, the frozen text encoder, the
prompt learner, depth bins, the bin-prompt head, and the factory from a registry row to a model.
"""
