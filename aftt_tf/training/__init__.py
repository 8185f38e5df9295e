"""Training: configs, the paper's networks, the trainers and resumable run directories.

- `config`: `TrainConfig`, validated without TensorFlow.
- `networks`: the four paper architectures as Functional sub-networks.
- `trainers`: `AdversarialAutoencoder` (Games 1 and 2) and `ClassifierTrainer`
  (supervised fine-tuning, L1/L2, fault-aware training).
- `phases`: per-epoch checkpoints, resume, divergence guard.
- `train_lib`: `train_and_evaluate`, the library behind `aftt-train`.
- `complexity`: parameters, weight memory and FLOPs (paper section VI.E).
"""
