"""Where training runs: torchrun on this machine, or (later) PyTorchJob / TrainJob on a cluster."""
