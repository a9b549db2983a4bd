"""Running trials: grid files into trials, the Ray scheduler, the DeepSpeed trainer, checkpoints and live progress."""
