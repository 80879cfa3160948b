"""Loaded by every Python process started with this folder on PYTHONPATH (tests/test_offline.py).

It refuses any socket connection to a non-loopback address and writes each attempt to the file
named by POCKETREC_NET_LOG, so a test can tell "worked offline" from "tried the network and
fell back".
"""

import ipaddress
import os
import socket

_log = os.environ.get("POCKETREC_NET_LOG")
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name that is not localhost


def _refuse(address):
    if _log:
        with open(_log, "a", encoding="utf-8") as f:
            f.write(f"{address!r}\n")
    raise OSError(101, f"network blocked by the offline test: {address!r}")


def connect(self, address):
    if not _loopback(address):
        _refuse(address)
    return _connect(self, address)


def connect_ex(self, address):
    if not _loopback(address):
        _refuse(address)
    return _connect_ex(self, address)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
