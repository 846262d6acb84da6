"""The bare loop the gateway is measured against: pymodbus + paho + msgpack, nothing else.

One asyncio task per IED reads its whole register block every period and publishes the
registers that changed since the last read as one msgpack message `{"t": ms, "v": [[i, v], ...]}`
on `<prefix>/<device>`, QoS 1, over the same TLS broker as the gateway. No process image, no
quality, no dead-bands, no spool, no reconnection: the least work that moves the same values.
The benchmark runs it as its own process and measures its CPU from /proc.

    python tests/bench/bare_poller.py --ports 5020,5021 --registers 100 --period-ms 100 \
        --broker-port 8883 --ca ca.crt --cert client.crt --key client.key --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.client import AsyncModbusTcpClient


async def poll_device(
    port: int, name: str, registers: int, period_s: float, end: float, publisher: mqtt.Client, prefix: str, qos: int
) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    last: list[int | None] = [None] * registers
    topic = f"{prefix}/{name}"
    next_at = time.monotonic()
    try:
        while time.monotonic() < end:
            rr = await client.read_holding_registers(0, count=registers, device_id=1)
            regs = rr.registers
            changed = [(i, v) for i, v in enumerate(regs) if last[i] != v]
            last[:] = regs
            if changed:
                publisher.publish(topic, msgpack.packb({"t": round(time.time() * 1000), "v": changed}), qos=qos)
            next_at += period_s
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()
    finally:
        client.close()


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    publisher = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"{args.prefix}-poller")
    publisher.max_inflight_messages_set(100)
    publisher.max_queued_messages_set(0)
    if args.ca:
        publisher.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key)
    publisher.connect("127.0.0.1", args.broker_port)
    publisher.loop_start()
    end = time.monotonic() + args.seconds
    ports = [int(p) for p in args.ports.split(",")]
    try:
        await asyncio.gather(
            *[
                poll_device(
                    port, f"D{d:02d}", args.registers, args.period_ms / 1000.0, end, publisher, args.prefix, args.qos
                )
                for d, port in enumerate(ports)
            ]
        )
    finally:
        publisher.loop_stop()
        publisher.disconnect()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ports", required=True, help="comma-separated Modbus TCP ports, one device each")
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--period-ms", type=float, default=100.0)
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--prefix", default="bare")
    parser.add_argument("--seconds", type=float, default=60.0)
    asyncio.run(main(parser.parse_args()))
