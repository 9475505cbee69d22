"""Worker slots: how many gunicorn workers serve, and the device each one is pinned to.

One worker holds one copy of the model. On a multi-GPU instance one worker on one GPU leaves the others idle (TEI's
most asked deployment question, its issue #87: a g5.12xlarge using one of its four GPUs), so `serve` runs one
worker per GPU, each pinned to its own. A slot is a device, not a process: when a worker dies, gunicorn forks a new
one and it takes the slot that was freed, so the same GPU is loaded again and no other worker is touched.

On CPU one worker (using every core) serves best; a count (`SEARCHBOX_WORKERS`) splits the cores between the
workers, each pinned to its share with `sched_setaffinity`. The same code path as on GPUs, which is how it is tested
on machines without one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from container.gpus import on_gpu, visible_gpus
from container.settings import ENV_DEVICE, ENV_WORKERS, Settings, SettingsError


@dataclass(frozen=True)
class Slot:
    """One worker's place: its index, the device it loads the model on, the CPU cores it runs on (None: all)."""

    index: int
    device: str
    cores: tuple[int, ...] | None = None

    def settings(self, settings: Settings) -> Settings:
        """The settings of the worker in this slot: its device, and on a share of the cores, that many threads."""
        changes: dict = {"device": self.device}
        if self.cores is not None and settings.torch_threads is None:
            changes["torch_threads"] = len(self.cores)
        return dataclasses.replace(settings, **changes)

    def pin(self) -> None:
        """In the worker, before the model loads: run on this slot's cores only."""
        if self.cores is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, self.cores)


def slots(settings: Settings, gpus: int | None = None, cores: tuple[int, ...] | None = None) -> list[Slot]:
    """The workers to run and their devices.

    Raises:
        SettingsError: more workers asked for than there are GPUs (on a GPU device) or cores (on CPU).
    """
    gpus = visible_gpus() if gpus is None else gpus
    cores = tuple(sorted(os.sched_getaffinity(0))) if cores is None else cores
    device = settings.device
    gpu = on_gpu(device, gpus)
    if gpu and ":" in device:
        # one named GPU: the operator chose it; more workers on it would only hold more copies of the weights
        if settings.workers not in (None, 1):
            raise SettingsError(f"{ENV_WORKERS}={settings.workers} with {ENV_DEVICE}={device}: one GPU takes one "
                                f"worker; set {ENV_DEVICE}=cuda (or auto) to run one worker on each GPU")
        return [Slot(0, device)]
    if gpu:
        count = gpus if settings.workers is None else settings.workers
        if count > gpus:
            raise SettingsError(f"{ENV_WORKERS}={count}, but {gpus} GPU(s) are visible: one worker per GPU at most")
        return [Slot(index, f"cuda:{index}") for index in range(max(1, count))]
    count = 1 if settings.workers is None else settings.workers
    if count == 1:
        return [Slot(0, device)]
    if count > len(cores):
        raise SettingsError(f"{ENV_WORKERS}={count}, but this process may use {len(cores)} core(s): on CPU each "
                            "worker gets at least one core of its own")
    share, extra = divmod(len(cores), count)
    result, start = [], 0
    for index in range(count):
        size = share + (1 if index < extra else 0)
        result.append(Slot(index, device, cores[start:start + size]))
        start += size
    return result
