"""What runs in and around the optimizer loop: the SFTTrainer and its loss, padding-free packing, model loading,
devices, checkpoints and preemption, trackers."""
