"""Exec a command the way systemd starts a socket-activated service.

    sd_launch.py FD [--pid PID] [--fds N] -- COMMAND...

FD (an inherited descriptor, or "none") becomes fd 3; LISTEN_FDS=N (1), LISTEN_PID=PID (this
process, which exec keeps), LISTEN_FDNAMES set. The test that started it keeps its own copy of the
socket open, as systemd does, and can start the next process on it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

START = 3  # SD_LISTEN_FDS_START


def main() -> None:
    cut = sys.argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("fd")
    p.add_argument("--pid", type=int, default=os.getpid())
    p.add_argument("--fds", default="1")
    a = p.parse_args(sys.argv[1:cut])
    cmd = sys.argv[cut + 1 :]
    if a.fd == "none":
        with contextlib.suppress(OSError):
            os.close(START)
    elif int(a.fd) != START:
        os.dup2(int(a.fd), START)
        os.close(int(a.fd))
    else:
        os.set_inheritable(START, True)
    os.environ.update(LISTEN_FDS=a.fds, LISTEN_PID=str(a.pid), LISTEN_FDNAMES="citadel-gateway.socket")
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
