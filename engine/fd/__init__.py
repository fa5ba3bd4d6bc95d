"""What is perturbed and how the loop evaluates it: the flat index space, the schemes, the loop evaluator."""
