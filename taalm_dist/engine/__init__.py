"""Training engines: the single-process meta-trainer (DeepSpeed/ZeRO-3 slots in beside it)."""
