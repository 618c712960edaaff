"""A stdin/stdout <-> TCP relay standing in for `gcloud compute start-iap-tunnel INSTANCE PORT --listen-on-stdin`.

Used as ssh's ProxyCommand in tests and the demo. Like IAP, it reaches instances by NAME: only names
given with --route are reachable (unknown ones are refused), so a connection that works proves it
went through the relay. Each connection is logged to --log when given. Standard library only, so it
runs as a plain script: `python tcp_relay.py --route NAME=ADDRESS [--log FILE] NAME PORT`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--route", action="append", default=[], metavar="NAME=ADDRESS",
                        help="where instance NAME really is (repeatable)")
    parser.add_argument("--log", help="append one line per connection to this file")
    parser.add_argument("instance")
    parser.add_argument("port", type=int)
    return parser.parse_args(argv)


def pump_stdin(sock: socket.socket) -> None:
    while chunk := os.read(0, 65536):
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    routes = dict(route.split("=", 1) for route in args.route)
    address = routes.get(args.instance)
    if address is None:
        print(f"relay: no route to instance {args.instance!r}", file=sys.stderr)
        return 4
    sock = socket.create_connection((address, args.port), timeout=10)
    sock.settimeout(None)
    if args.log:
        with open(args.log, "a") as log:
            log.write(f"{args.instance} {args.port} -> {address}\n")
    threading.Thread(target=pump_stdin, args=(sock,), daemon=True).start()
    while chunk := sock.recv(65536):
        os.write(1, chunk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
