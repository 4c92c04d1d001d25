"""Sequential keep-alive client of bench/run.sh's instruction counts.

Usage: seqclient.py HOST:PORT PATH N

Sends N POST requests with the body of body.lua, one after the other, on one
keep-alive connection (reconnecting only if the server closes it), and exits
non-zero unless every answer is a 2xx. The headers are wrk's: Host,
Content-Type and Content-Length, no Accept-Encoding.
"""
import http.client
import sys

BODY = b'{"email":"bench@example.com","password":"s3cret"}'


def main() -> int:
    hostport, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    bad = 0
    for i in range(n):
        conn.putrequest("POST", path, skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(BODY)))
        conn.endheaders(BODY)
        response = conn.getresponse()
        response.read()
        if not 200 <= response.status < 300:
            bad += 1
            if bad == 1:
                print(f"seqclient: request {i + 1} got {response.status}", file=sys.stderr)
        if response.will_close:
            conn.close()
    conn.close()
    if bad:
        print(f"seqclient: {bad} of {n} responses were not 2xx", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
