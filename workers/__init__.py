"""Process entry points: thin loops around ``model.loss_and_grad``."""
