"""A driver killed with SIGKILL leaves none of the Ray processes it started (Ray's
agents used to outlive it). Its own module: no other Ray instance is up meanwhile (the
file shares a pytest-xdist worker with the other Ray tests, one after the other)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # Minutes: left out by `make test-fast`.

pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[1]


def test_a_killed_driver_leaves_no_ray_process(tmp_path):
    """kill -9 of a driver that started a local Ray instance: within seconds nothing it
    started is left (Ray's agents used to outlive it)."""
    import os
    import signal
    import time

    script = tmp_path / "driver.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from aftt_tf.campaigns import ray_executor\n"
        "ray_executor.connect(ray_executor.config_from_flags('', 0, 'cpu=1'))\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert driver.stdout.readline().strip() == "started"
        time.sleep(3)  # The agents start after ray.init returns.
        descendants = _descendants(driver.pid)
        assert descendants, "Ray started no process under the driver"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _alive(descendants):
            time.sleep(0.5)
        assert not _alive(descendants), _alive(descendants)
    finally:
        if driver.poll() is None:
            driver.kill()


def _process_table() -> dict[int, tuple[int, str]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
                table[int(name)] = (int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                pass
    return table


def _descendants(root: int) -> dict[int, str]:
    table = _process_table()
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def _alive(processes: dict[int, str]) -> list[int]:
    table = _process_table()
    return [pid for pid, started in processes.items() if table.get(pid, (0, None))[1] == started]
