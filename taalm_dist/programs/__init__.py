"""The three trainers, the layer above the engine: ``meta_train`` (φ), ``ckl_run`` (θ on LAMA-CKL with a method's
weights) and ``learn`` (θ on a user's documents). Each assembles the engine's pieces (runtime, run directory, θ and
φ learners, checkpoints, trackers, stop signals); nothing below this package imports it."""
