"""Training: the loss, the learning-rate schedules, atomic checkpoints, torchrun set-up, and the Trainer loop."""
