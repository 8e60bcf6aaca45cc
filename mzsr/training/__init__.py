"""Training: pre-training, second-order MAML meta-training, TF-1's Adam, resumable training state,
and the learned kernel estimator's training."""
