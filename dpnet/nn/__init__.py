"""The core maths, written once for NumPy and CuPy (``xp`` taken from the data):
flat parameter layouts, counter-based random numbers, activations, initializers,
losses and layers. Imports nothing from dpnet but ``dpnet.backend``."""
