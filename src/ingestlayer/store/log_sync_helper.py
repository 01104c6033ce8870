"""The log sync process (see ``log_sync_process``): ``python -I -S log_sync_helper.py FD``.

It runs nothing but the standard library's os, signal and sys, so it starts in about 10 ms and
holds no lock or thread of the server's. FD is the SQLite log's file descriptor, inherited.
Each byte read from stdin asks for one ``fdatasync``; each byte written to stdout answers one
request: 0 when the sync succeeded, else its errno. It exits when stdin ends (the server
closed it, or died).
"""

from __future__ import annotations

import os
import signal
import sys

# An errno that does not fit in a byte is answered as EIO.
_EIO = 5


def main() -> None:
    # A Ctrl-C or a supervisor's SIGTERM to the group is for the server, which ends this
    # process by closing its input once it has drained.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd = int(sys.argv[1])
    while True:
        asked = os.read(0, 4096)
        if not asked:
            return
        try:
            os.fdatasync(fd)
            answer = 0
        except OSError as exc:
            answer = exc.errno if exc.errno is not None and 0 < exc.errno < 256 else _EIO
        try:
            os.write(1, bytes([answer]) * len(asked))
        except OSError:  # the server is gone
            return


if __name__ == "__main__":
    main()
