"""The runner's Jupyter kernels: nothing on the terminal but what the notebooks print, and a clean stop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.manager import AsyncKernelManager
from traitlets import Unicode


class QuietKernelManager(AsyncKernelManager):
    """The runner's kernels, which put nothing on the terminal but what the notebooks print.

    CurveZMQ keys encrypt the kernel's local TCP sockets (without them ipykernel warns at every start). A shutdown
    skips jupyter_client's SIGINT: papermill shuts the kernel down as soon as its last reply arrives, so the
    interrupt lands while the kernel is still leaving that request (logged as `ERROR | KeyboardInterrupt caught
    in kernel` after a successful run) or, in a stopped run, inside the running cell, which then replies on closed
    sockets (a `ZMQError` traceback). An idle kernel gets the shutdown request and `GRACEFUL_EXIT_S` to exit before
    SIGTERM (jupyter_client's 2.5 s is too short for a kernel that imported torch on a loaded machine, and a
    SIGTERM mid-teardown makes libzmq print `Assertion failed: pfd.revents & POLLIN`). A stopped run's busy
    kernel cannot answer a shutdown request: its wait for the running cell is cancelled (or it would log `Kernel
    died` and a lost task) and the kernel is killed at once, which prints nothing.

    What the kernel process itself writes to its standard error (not a cell's output, which goes to the notebook:
    ipykernel's own log lines, such as `IOStream.flush timed out` when its output thread lags on a loaded machine,
    and C libraries' messages before a crash) is appended to `stderr_log` when one is configured, instead of the
    runner's terminal.
    """

    GRACEFUL_EXIT_S = 30.0
    stderr_log = Unicode("", help="file the kernel process's standard error is appended to").tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if zmq.has("curve"):
            self.curve_publickey, self.curve_secretkey = zmq.curve_keypair()
        self.shutdown_wait_time = 2 * self.GRACEFUL_EXIT_S  # half waits for the exit, half after SIGTERM

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        if not self.stderr_log:
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        Path(self.stderr_log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_log, "ab") as log:  # the kernel keeps its own descriptor
            return await super()._async_launch_kernel(kernel_cmd, stderr=log, **kw)

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """Shut an idle kernel down gracefully; cancel what still waits on a busy one (a stopped run's running
        cell) and kill it at once."""
        waiting = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await super().shutdown_kernel(now=now or bool(waiting), restart=restart)

    async def _async_interrupt_kernel(self) -> None:
        if not self.shutting_down:
            await super()._async_interrupt_kernel()
