"""The runner's Jupyter kernels: nothing on the terminal but what the notebooks print, and a clean stop."""

from __future__ import annotations

import asyncio
from typing import Any

import zmq
from jupyter_client.manager import AsyncKernelManager


class QuietKernelManager(AsyncKernelManager):
    """The runner's kernels, which put nothing on the terminal but what the notebooks print.

    CurveZMQ keys encrypt the kernel's local TCP sockets (without them ipykernel warns at every start). A shutdown
    skips jupyter_client's SIGINT: papermill shuts the kernel down as soon as its last reply arrives, so the
    interrupt lands while the kernel is still leaving that request (logged as `ERROR | KeyboardInterrupt caught
    in kernel` after a successful run) or, in a stopped run, inside the running cell, which then replies on closed
    sockets (a `ZMQError` traceback); the kernel gets the shutdown request, then SIGTERM. A stopped run's wait for
    the running cell is cancelled first, or it would see the kernel go and log `Kernel died` and a lost task.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if zmq.has("curve"):
            self.curve_publickey, self.curve_secretkey = zmq.curve_keypair()

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """Cancel what still waits on the kernel (a stopped run's running cell), then shut the kernel down."""
        waiting = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await super().shutdown_kernel(now=now, restart=restart)

    async def _async_interrupt_kernel(self) -> None:
        if not self.shutting_down:
            await super()._async_interrupt_kernel()
