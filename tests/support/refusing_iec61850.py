"""A simulated bay controller that refuses some reads: every CF read (the controls' ctlModel,
the units) is answered "object access denied", as an IED with access control does for a client
it does not trust with configuration data.

    python -m tests.support.refusing_iec61850 --config SITE --ied IED-ID --port N

Stops on stdin EOF. Used by the discovery tests (a server that answers exceptions).
"""

from __future__ import annotations

import argparse
import sys

from gateway.config import load
from gateway.contract.settings import Iec61850Ied
from hil.iec61850_server import BayModel, BayServer
from protocols import _iec61850_ffi as c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--ied", required=True)
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args(argv)
    ied = load(args.config).ied(args.ied)
    assert isinstance(ied, Iec61850Ied)
    server = BayServer(BayModel(ied), sys.stdout)

    @c.ffi.callback(
        "int(LogicalDevice*, LogicalNode*, DataObject*, int, void*, void*)",
        onerror=lambda *a: c.DATA_ACCESS_ERROR_SUCCESS,
    )
    def refuse(_ld, _ln, _do, fc, _connection, _param):  # type: ignore[no-untyped-def]
        if fc == c.FC["CF"]:
            return c.DATA_ACCESS_ERROR_OBJECT_ACCESS_DENIED
        return c.DATA_ACCESS_ERROR_SUCCESS

    c.lib.IedServer_setReadAccessHandler(server.server, refuse, c.ffi.NULL)
    server.start("127.0.0.1", args.port)
    try:
        for line in sys.stdin:
            server.handle_line(line)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
