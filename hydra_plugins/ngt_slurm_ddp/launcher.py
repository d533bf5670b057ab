"""``hydra/launcher=slurm_ddp`` (``ngt/conf/hydra/launcher/slurm_ddp.yaml``): each job of a
grid is one data-parallel run over its Slurm tasks, one process per task.

The submitit plugin runs the same job in every task. Before Hydra starts it there, each
task is given torch.distributed's variables (rank, world size, the rendezvous on the first
node), as torchrun would set them, from submitit's view of the Slurm job; ranks > 0 get
the overrides that keep them out of the run directory (``ngt.screen.quiet_rank``).
"""

from typing import Any, List

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class SlurmDataParallel(SlurmLauncher):
    def __call__(self, sweep_overrides: List[str], *args: Any) -> Any:
        from submitit.helpers import TorchDistributedEnvironment

        from ngt.screen import quiet_rank

        # Each process takes its GPU as cuda:LOCAL_RANK among those Slurm shows it.
        env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return super().__call__([*sweep_overrides, *quiet_rank(env.rank)], *args)
