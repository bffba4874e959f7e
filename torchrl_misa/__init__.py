"""MISA (Mutual Information Regularized Offline RL) for TorchRL."""
