"""The batched evaluator for layered models, and the detection of a model's loss."""
