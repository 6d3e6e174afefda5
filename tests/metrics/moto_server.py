"""Runs moto's server on 127.0.0.1:PORT (the only argument) and exits as soon
as the process that started it goes away, so a test run that dies never
leaves it behind (moto_server itself has no such watchdog)."""
import os
import sys
import threading
import time

parent = os.getppid()


def watch_parent():
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)


threading.Thread(target=watch_parent, daemon=True).start()

from moto.server import main  # noqa: E402  (after the watchdog starts)

main(["-H", "127.0.0.1", "-p", sys.argv[1]])
