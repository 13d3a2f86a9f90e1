"""One command run as processes 0 and 1 of a JAX job on this machine (a localhost coordinator)."""

import os
import socket
import subprocess


def run_as_two_processes(
    command: list[str], env: dict | None = None, timeout: float = 120
) -> list[tuple[int, str, str]]:
    """``(return code, stdout, stderr)`` of each process; ``env`` (default: this process's)
    gets the coordinator, the process count and each process's id."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{s.getsockname()[1]}"
    procs = [
        subprocess.Popen(
            command,
            env=dict(
                os.environ if env is None else env,
                JAX_COORDINATOR_ADDRESS=coordinator,
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [proc.communicate(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    return [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs)]
