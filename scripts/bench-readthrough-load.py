#!/usr/bin/env python3
"""Load generator for scripts/bench-readthrough.sh (python3 standard library only).

C client connections, spread round-robin over the given cacheside ports, send
`GET product:<id>` one at a time (pipelining depth 1). The ids are a fixed sequence drawn from
a Zipf distribution over 1..KEYS (P(rank k) ~ 1/k^s, rank k is id k) with a fixed seed, so every
run requests the same keys in the same global order; the clients take the next id from the
shared sequence as soon as their previous reply arrived.

Every reply must be the bulk string that `row_to_json` gives for that row of the seed data
(see expected()); anything else (error, nil, wrong bytes) stops the run with exit status 1.

Each request is classed, as the client sees it, by what happened before it was sent:
  miss       the first request of its key in this run (it goes down the read-through path)
  coalesced  a repeat of a key whose first request had not been answered yet
  hit        a repeat of a key whose first request had been answered (the value is in Redis)

Prints one JSON object on stdout.

With --probe P it instead measures unloaded latency: one client, one request at a time, GETs P
ids that the Zipf sequence never requests (a seeded sample), alternating over the ports; the
first GET of each is a miss, a second GET right after it a hit.

  bench-readthrough-load.py --ports P[,P...] [--clients 48] [--requests 20000] [--keys 10000]
                            [--zipf 1.1] [--seed 1]
  bench-readthrough-load.py --ports P[,P...] --probe P [--requests N] [--keys K] [--zipf S]
                            [--seed S]
  bench-readthrough-load.py --expected N      prints the values expected for ids 1..N, one a line
  bench-readthrough-load.py --distinct-only   prints how many distinct ids the sequence holds
"""

import argparse
import asyncio
import bisect
import json
import random
import socket
import sys
import time

CATEGORIES = ("books", "games", "garden", "kitchen", "toys")


def expected(i):
    """The row_to_json text of product i, as the seed SQL in bench-readthrough.sh writes it:
    name 'Product <i>', price ((i * 7919) % 100000) / 100 as numeric(10,2),
    category CATEGORIES[i % 5]."""
    cents = (i * 7919) % 100000
    return (
        '{"id":%d,"name":"Product %d","price":%d.%02d,"category":"%s"}'
        % (i, i, cents // 100, cents % 100, CATEGORIES[i % 5])
    ).encode()


def zipf_sequence(n_keys, s, count, seed):
    """count ids in 1..n_keys, P(id k) proportional to 1/k^s: inverse CDF by bisect."""
    cdf, total = [], 0.0
    for k in range(1, n_keys + 1):
        total += 1.0 / k**s
        cdf.append(total)
    rng = random.Random(seed)
    last = n_keys - 1
    return [min(bisect.bisect_left(cdf, rng.random() * total), last) + 1 for _ in range(count)]


def pct(sorted_ns, p):
    """Nearest-rank percentile in milliseconds (None for an empty list)."""
    if not sorted_ns:
        return None
    k = max(1, -(-len(sorted_ns) * p // 100))  # ceil(n * p / 100), at least 1
    return sorted_ns[int(k) - 1] / 1e6


def summary(ns):
    ns = sorted(ns)
    return {
        "count": len(ns),
        "p50_ms": pct(ns, 50),
        "p99_ms": pct(ns, 99),
        "mean_ms": (sum(ns) / len(ns) / 1e6) if ns else None,
        "max_ms": (ns[-1] / 1e6) if ns else None,
    }


class Failure(Exception):
    pass


async def run(args):
    ports = [int(p) for p in args.ports.split(",")]
    seq = zipf_sequence(args.keys, args.zipf, args.requests, args.seed)
    want = {i: expected(i) for i in set(seq)}
    state = {}  # id -> "loading" while its first request is unanswered, then "done"
    lat = {"miss": [], "coalesced": [], "hit": []}
    per_port = {p: 0 for p in ports}
    nxt = 0

    async def client(n):
        nonlocal nxt
        port = ports[n % len(ports)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while nxt < len(seq):
                i = seq[nxt]
                nxt += 1
                st = state.get(i)
                if st is None:
                    kind = "miss"
                    state[i] = "loading"
                elif st == "loading":
                    kind = "coalesced"
                else:
                    kind = "hit"
                key = b"product:%d" % i
                t0 = time.perf_counter_ns()
                writer.write(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
                head = await reader.readline()
                if not head.startswith(b"$") or not head.endswith(b"\r\n"):
                    raise Failure(
                        "GET %s via port %d: reply %r" % (key.decode(), port, head[:300])
                    )
                size = int(head[1:-2])
                if size < 0:
                    raise Failure("GET %s via port %d: nil" % (key.decode(), port))
                body = await reader.readexactly(size + 2)
                t1 = time.perf_counter_ns()
                value = body[:-2]
                if value != want[i]:
                    raise Failure(
                        "GET %s via port %d: got %r, expected %r"
                        % (key.decode(), port, value[:300], want[i])
                    )
                lat[kind].append(t1 - t0)
                per_port[port] += 1
                if kind == "miss":
                    state[i] = "done"
        finally:
            writer.close()

    t_start = time.perf_counter()
    tasks = [asyncio.create_task(client(n)) for n in range(args.clients)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    elapsed = time.perf_counter() - t_start

    done = sum(len(v) for v in lat.values())
    return {
        "requests": done,
        "distinct_keys": len(state),
        "elapsed_s": elapsed,
        "rps": done / elapsed if elapsed > 0 else None,
        "per_port": {str(p): c for p, c in per_port.items()},
        "miss": summary(lat["miss"]),
        "coalesced": summary(lat["coalesced"]),
        "hit": summary(lat["hit"]),
    }


def probe(args):
    ports = [int(p) for p in args.ports.split(",")]
    used = set(zipf_sequence(args.keys, args.zipf, args.requests, args.seed))
    unused = [i for i in range(1, args.keys + 1) if i not in used]
    if len(unused) < args.probe:
        raise Failure("only %d ids are not in the sequence, %d wanted" % (len(unused), args.probe))
    ids = random.Random(args.seed + 1).sample(unused, args.probe)
    conns = []
    for port in ports:
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append((port, s, s.makefile("rb")))
    lat = {"miss": [], "hit": []}
    for n, i in enumerate(ids):
        port, s, f = conns[n % len(conns)]
        key = b"product:%d" % i
        req = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
        for kind in ("miss", "hit"):
            t0 = time.perf_counter_ns()
            s.sendall(req)
            head = f.readline()
            if not head.startswith(b"$") or int(head[1:-2]) < 0:
                raise Failure("probe GET %s via port %d: reply %r" % (key.decode(), port, head[:300]))
            body = f.read(int(head[1:-2]) + 2)
            t1 = time.perf_counter_ns()
            if body[:-2] != expected(i):
                raise Failure("probe GET %s via port %d: got %r, expected %r"
                              % (key.decode(), port, body[:300], expected(i)))
            lat[kind].append(t1 - t0)
    for _, s, f in conns:
        f.close()
        s.close()
    return {"keys": len(ids), "miss": summary(lat["miss"]), "hit": summary(lat["hit"])}


def main():
    ap = argparse.ArgumentParser(description="read-through load generator (see the docstring)")
    ap.add_argument("--ports")
    ap.add_argument("--clients", type=int, default=48)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--expected", type=int, metavar="N",
                    help="print the values expected for ids 1..N, one a line, and exit")
    ap.add_argument("--probe", type=int, metavar="P",
                    help="unloaded latency: P sequential misses, each followed by a hit")
    ap.add_argument("--distinct-only", action="store_true",
                    help="print how many distinct ids the sequence holds and exit")
    args = ap.parse_args()

    if args.expected is not None:
        sys.stdout.write("".join(expected(i).decode() + "\n" for i in range(1, args.expected + 1)))
        return 0
    if args.distinct_only:
        print(len(set(zipf_sequence(args.keys, args.zipf, args.requests, args.seed))))
        return 0
    if not args.ports:
        ap.error("--ports is required")
    try:
        result = probe(args) if args.probe else asyncio.run(run(args))
    except Failure as e:
        print("load: %s" % e, file=sys.stderr)
        return 1
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        print("load: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
