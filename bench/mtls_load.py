#!/usr/bin/env python3
"""Fixed-rate HTTP/1.1 keep-alive load with latency percentiles (wrk2-style: each request is
timed from when it was scheduled, so a slow answer delays and counts against the ones after it).

usage: mtls_load.py HOST PORT HOSTHEADER RATE CONNECTIONS SECONDS
prints: p50_ms p90_ms p99_ms p999_ms requests errors
"""
import asyncio
import sys
import time


async def conn_loop(host, port, hdr, rate, conns, idx, start, end, lat, errs):
    reader, writer = await asyncio.open_connection(host, port)
    req = f"GET / HTTP/1.1\r\nHost: {hdr}\r\n\r\n".encode()
    k = 0
    while True:
        t = start + (k * conns + idx) / rate
        if t >= end:
            break
        k += 1
        now = time.perf_counter()
        if t > now:
            await asyncio.sleep(t - now)
        try:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            status = head.split(b" ", 2)[1]
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            if status != b"200":
                errs.append(status)
            lat.append(time.perf_counter() - t)
        except Exception as e:  # a failed request ends this connection's run
            errs.append(str(e))
            break
    writer.close()


async def main():
    host, port, hdr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rate, conns, secs = float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    lat, errs = [], []
    start = time.perf_counter() + 0.2
    end = start + secs
    await asyncio.gather(
        *(conn_loop(host, port, hdr, rate, conns, i, start, end, lat, errs) for i in range(conns))
    )
    # Drop the first second (connection setup, warm-up).
    lat.sort()
    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
    print(f"{pct(0.5):.3f} {pct(0.9):.3f} {pct(0.99):.3f} {pct(0.999):.3f} {len(lat)} {len(errs)}")


asyncio.run(main())
