"""ngt's data-parallel Slurm launcher, where Hydra finds launcher plugins."""
