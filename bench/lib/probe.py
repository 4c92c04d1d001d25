"""The /healthz probe of bench/run.sh's burst case (python3 stdlib only).

Usage:
  probe.py run HOST:PORT SECS OUT
      Sends GET /healthz back to back on one keep-alive HTTP/1.1 connection
      for SECS seconds; writes one line per answer to OUT: the time it was
      sent (seconds since the epoch) and its latency in microseconds.
  probe.py p99 OUT [FROM TO]
      Prints the 99th percentile latency (microseconds) of the answers sent
      between FROM and TO (seconds since the epoch; default: all), and how
      many there were.
"""
import socket
import sys
import time

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n"


def read_answer(sock, buf):
    """Reads one answer (content-length framed); returns what is left over."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the probe's connection")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"not a 200: {head[:60]!r}")
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the probe's connection")
        rest += chunk
    return rest[length:]


def run(addr, secs, out):
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    buf = b""
    end = time.time() + secs
    while True:
        sent = time.time()
        if sent >= end:
            break
        t0 = time.perf_counter()
        sock.sendall(REQUEST)
        buf = read_answer(sock, buf)
        samples.append((sent, (time.perf_counter() - t0) * 1e6))
    sock.close()
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(f"{t:.6f} {us:.1f}\n" for t, us in samples)


def p99(out, lo=None, hi=None):
    lat = []
    with open(out, encoding="utf-8") as f:
        for line in f:
            t, us = map(float, line.split())
            if (lo is None or t >= lo) and (hi is None or t < hi):
                lat.append(us)
    if not lat:
        print("0 0")
        return
    lat.sort()
    print(f"{lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.0f} {len(lat)}")


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "run":
        run(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) in (3, 5) and sys.argv[1] == "p99":
        bounds = map(float, sys.argv[3:5]) if len(sys.argv) == 5 else ()
        p99(sys.argv[2], *bounds)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
