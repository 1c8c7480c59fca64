"""Training: loops, schedules and resumable checkpoints. The core library never imports this package."""
