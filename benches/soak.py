#!/usr/bin/env python3
"""Soak chunkgate under mixed, partly hostile traffic and check that nothing accumulates.

    benches/soak.py                      10 minutes (the acceptance run)
    benches/soak.py --duration 120       a shorter run (the RSS baseline is then taken at
                                         min(60 s, duration / 2))
    benches/soak.py --help               every option

Run it alone on the machine (it measures memory and timeouts), from a release build: it uses
`${CARGO_TARGET_DIR:-target}/release/chunkgate` unless `--bin` says otherwise, and builds
nothing. Python 3 standard library only.

What it starts, all on 127.0.0.1 and stopped by the script when it exits (and by the kernel
if the script dies: both children get PR_SET_PDEATHSIG):
  - the measurement upstream, `chunkgate bench upstream` (port base, `--exit-after` as a
    backstop),
  - the proxy at its default settings, `chunkgate serve --listen ... --upstream ...` (port
    base + 1); its log (the access log included, unless `--no-access-log`) goes to a file in
    the work directory, which is removed at the end unless `--keep`.

Load, all at once for `--duration` seconds (every loop bounded in count and time):
  - token streams: `chunkgate bench sse --json` in rounds, rotating three shapes (50 streams of
    200 tokens 20 ms apart, 200 of 40 at 50 ms, 20 of 1,000 at 5 ms); every stream must
    complete with every token in order and one event per chunk;
  - small POSTs: `chunkgate bench rps --json` rounds (`--rps-connections` connections for
    `--rps-seconds` s every `--rps-every` s); none may fail;
  - slow readers (`--slow-readers` at once): ask for a long stream with a 4 KiB receive
    buffer, read 2 to 16 bytes a second for 15 to 40 s, then leave (close with unread data).
    The proxy must not cut them first (its write-stall timeout is 60 s);
  - slow request bodies (`--slow-bodies` at once), cycling three kinds: chunked at a few
    bytes a second and Content-Length at a few bytes a second (the proxy must answer 408 once
    they fall under 240 B/s after the 5 s grace), and chunked at ~600 B/s for 8 s, which must
    finish with 200 and the upstream's exact byte count;
  - abrupt resets (`--resets-per-s`), cycling: half a request head, a head and half a body,
    a stream read partway; each then closed with SO_LINGER 0 (an RST);
  - slowloris (`--slowloris`, 1,000 by default, ramped up at 100 a second): each connection
    sends a request head one byte every ~2 s; the proxy's 10 s head timeout must close it
    (within 13 s of its first byte), and a new one takes its place.

Every `--sample-every` seconds it reads the proxy's VmRSS (/proc/PID/status) and open fds
(/proc/PID/fd). When the load stops it waits `--settle` seconds, then up to
`--settle-timeout` seconds for the fd count to come back to its idle value: idle upstream
connections stay in the proxy's keep-alive pool for `pool.idle_timeout` (90 s, reaped every
15 s), so the default waits up to 150 s. It reads which proxy sockets are still open from
/proc/net/tcp (client side, upstream side, listener).

It prints a per-minute table and a summary, and exits 1 if any check fails:
  - RSS at the end of the load more than `--rss-tolerance` (10%) above RSS after the first
    minute;
  - any token stream failed, or arrived split or merged; any small POST failed; any slow
    reader was cut by the proxy before it left;
  - fds did not come back to the idle count within the settle timeout;
  - a slow body got something else than its expected answer, a slowloris connection was held
    past the head timeout, or the proxy exited or logged a panic.
Exit 2: the setup failed (binary missing, port taken, proxy did not start).
`--json FILE` also writes the figures as one JSON object.
"""

import argparse
import asyncio
import ctypes
import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The proxy's defaults this script relies on (see `chunkgate check-config --reference`).
HEAD_TIMEOUT_S = 10.0  # timeouts.client_head
HEAD_TIMEOUT_SLACK_S = 3.0  # its 1 s bound on writing the 408, plus scheduling
WRITE_STALL_S = 60.0  # timeouts.client_write_stall
BODY_GRACE_S = 5.0  # timeouts.client_body_grace
BODY_MIN_RATE = 240  # limits.client_body_min_rate

SSE_SHAPES = [(50, 200, 20), (200, 40, 50), (20, 1000, 5)]  # (streams, tokens, gap ms)


def parse_args():
    p = argparse.ArgumentParser(
        description="Soak chunkgate under mixed traffic (see the top of this file).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    target_dir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    p.add_argument("--bin", default=os.path.join(target_dir, "release", "chunkgate"),
                   help="chunkgate binary (a release build)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    p.add_argument("--port-base", type=int, default=18300,
                   help="upstream on this port, proxy on the next")
    p.add_argument("--slowloris", type=int, default=1000, help="slowloris connections held open")
    p.add_argument("--slow-readers", type=int, default=16, help="slow readers at once")
    p.add_argument("--slow-bodies", type=int, default=12, help="slow request bodies at once")
    p.add_argument("--resets-per-s", type=float, default=4.0, help="abrupt resets per second")
    p.add_argument("--rps-connections", type=int, default=4)
    p.add_argument("--rps-seconds", type=float, default=1.0, help="length of one rps round")
    p.add_argument("--rps-every", type=float, default=10.0, help="seconds between rps rounds")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds after the load before the first fd reading")
    p.add_argument("--settle-timeout", type=float, default=150.0,
                   help="longest wait for the fd count to come back to idle")
    p.add_argument("--rss-tolerance", type=float, default=0.10,
                   help="allowed RSS growth from minute 1 to the end")
    p.add_argument("--no-access-log", action="store_true",
                   help="start the proxy with --no-access-log")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    return p.parse_args()


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# The processes under test
# --------------------------------------------------------------------------------------------

def _die_with_parent():
    # PR_SET_PDEATHSIG = 1: the child gets SIGKILL when this script dies, however it dies.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def spawn(argv, out_path):
    out = open(out_path, "wb")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    finally:
        out.close()


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_for_ephemeral_ports(seconds=120.0):
    """Wait until a loopback connect gets a local port. Another program's load can leave the
    ephemeral range full of TIME_WAIT sockets for a minute (connects fail with EADDRNOTAVAIL)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    end = time.monotonic() + seconds
    warned = False
    try:
        while True:
            try:
                socket.create_connection(listener.getsockname(), timeout=1).close()
                return True
            except OSError as e:
                if time.monotonic() > end:
                    log(f"soak: loopback connects still fail after {seconds:.0f} s: {e}")
                    return False
                if not warned:
                    log(f"soak: loopback connects fail ({e}); waiting for TIME_WAIT sockets "
                        f"of earlier load to expire")
                    warned = True
                time.sleep(2.0)
    finally:
        listener.close()


def wait_listening(port, proc, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def read_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def count_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def field(line, key):
    """The value after `key` in a log line, up to the next space."""
    start = line.find(key)
    if start < 0:
        return "-"
    start += len(key)
    end = line.find(b" ", start)
    return line[start:end if end >= 0 else len(line)].strip().decode(errors="replace")


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")),
                         "?")
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / (1 << 20):.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"Linux {os.uname().release}, {os.cpu_count()} cores ({model}), {mem}"


def fd_breakdown(pid, proxy_port, upstream_port):
    """The proxy's open fds by kind: listener, client and upstream connections, other."""
    inodes = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local_port = int(parts[1].rsplit(":", 1)[1], 16)
                    remote_port = int(parts[2].rsplit(":", 1)[1], 16)
                    inodes[parts[9]] = (local_port, remote_port, parts[3])
        except OSError:
            pass
    kinds = {"listener": 0, "client": 0, "upstream": 0, "other socket": 0, "not a socket": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if not link.startswith("socket:["):
            kinds["not a socket"] += 1
            continue
        entry = inodes.get(link[8:-1])
        if entry is None:
            kinds["other socket"] += 1
        elif entry[2] == "0A":  # LISTEN
            kinds["listener"] += 1
        elif entry[0] == proxy_port:
            kinds["client"] += 1
        elif entry[1] == upstream_port:
            kinds["upstream"] += 1
        else:
            kinds["other socket"] += 1
    return kinds


# --------------------------------------------------------------------------------------------
# The load
# --------------------------------------------------------------------------------------------

class Soak:
    def __init__(self, args, pid, proxy_port, upstream_port):
        self.args = args
        self.pid = pid
        self.addr = ("127.0.0.1", proxy_port)
        self.url = f"http://127.0.0.1:{proxy_port}"
        self.stop = asyncio.Event()
        self.t0 = time.monotonic()
        self.samples = []  # (t, rss KiB, fds, slowloris open)
        self.anomalies = {}  # kind -> [count, first example]
        self.sse = dict(rounds=0, started=0, completed=0, failed=0, split=0, merged=0,
                        events=0, round_errors=0, first_error=None)
        self.rps = dict(rounds=0, requests=0, failed=0, round_errors=0, first_error=None)
        self.readers = dict(started=0, left=0, cut_early=0, stalled=0, bad_head=0, bytes=0,
                            connect_failed=0)
        self.bodies = {k: dict(started=0, expected=0, unexpected=0)
                       for k in ("chunked-slow", "length-slow", "chunked-ok")}
        self.resets = {k: 0 for k in ("half-head", "half-body", "half-stream")}
        self.resets_failed = 0
        self.loris = dict(opened=0, open=0, peak_open=0, closed_by_proxy=0, answered_408=0,
                          connect_failed=0, held_too_long=0, longest_s=0.0, lifetimes=0.0)

    def now(self):
        return time.monotonic() - self.t0

    def anomaly(self, kind, example):
        entry = self.anomalies.setdefault(kind, [0, example])
        entry[0] += 1

    async def nap(self, seconds):
        """Sleep, or return early (True) when the load stops."""
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    # ---- sockets -----------------------------------------------------------------------------

    async def connect(self, rcvbuf=None):
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, self.addr), 10)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def reset(sock):
        """Close with SO_LINGER 0: the kernel sends an RST and drops what is unsent."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        sock.close()

    @staticmethod
    async def recv(sock, n, timeout):
        """`None` on timeout, b"" at EOF; a reset counts as EOF."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.sock_recv(sock, n), timeout)
        except asyncio.TimeoutError:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return b""

    async def read_response(self, sock, data, timeout):
        """Read one response (head and Content-Length body, or to EOF): (status, body)."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data:
            more = await self.recv(sock, 4096, max(0.0, deadline - time.monotonic()))
            if not more:
                return (None, data)
            data += more
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            return (None, data)
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while length is None or len(body) < length:
            more = await self.recv(sock, 4096, max(0.0, deadline - time.monotonic()))
            if not more:
                break
            body += more
        return (status, body)

    def chat_request(self, tokens, gap_ms):
        return (f"POST /v1/chat/completions?tokens={tokens}&gap_ms={gap_ms} HTTP/1.1\r\n"
                f"host: soak\r\naccept: text/event-stream\r\ncontent-type: application/json\r\n"
                f"content-length: 2\r\n\r\n{{}}").encode()

    # ---- token streams and small POSTs (the project's own load tools) ------------------------

    async def run_tool(self, argv):
        proc = await asyncio.create_subprocess_exec(
            self.args.bin, "bench", *argv, "--target", self.url, "--json",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        try:
            return json.loads(out), None
        except ValueError:
            return None, f"exit {proc.returncode}: {err.decode(errors='replace').strip()[:300]}"

    async def sse_loop(self):
        n = 0
        while not self.stop.is_set():
            streams, tokens, gap = SSE_SHAPES[n % len(SSE_SHAPES)]
            n += 1
            report, err = await self.run_tool(
                ["sse", "-c", str(streams), "--tokens", str(tokens), "--gap-ms", str(gap)])
            s = self.sse
            s["rounds"] += 1
            s["started"] += streams
            if report is None:
                s["round_errors"] += 1
                s["failed"] += streams
                s["first_error"] = s["first_error"] or f"round {n}: {err}"
            else:
                s["completed"] += report["ok"]
                s["failed"] += report["failed"]
                s["split"] += report.get("split_chunks", 0)
                s["merged"] += report.get("merged_chunks", 0)
                s["events"] += report.get("events", 0)
                if report["failed"] or report.get("split_chunks") or report.get("merged_chunks"):
                    s["first_error"] = s["first_error"] or (
                        f"round {n} ({streams}x{tokens}@{gap}ms) at {self.now():.0f} s: "
                        f"{report['failed']} failed, {report.get('split_chunks')} split, "
                        f"{report.get('merged_chunks')} merged: {report.get('first_error')}")
            await self.nap(1.0)

    async def rps_loop(self):
        while not self.stop.is_set():
            report, err = await self.run_tool(
                ["rps", "-c", str(self.args.rps_connections), "--warmup", "0",
                 "--duration", str(self.args.rps_seconds)])
            r = self.rps
            r["rounds"] += 1
            if report is None:
                r["round_errors"] += 1
                r["first_error"] = r["first_error"] or err
            else:
                r["requests"] += report["ok"]
                r["failed"] += report["failed"]
                if report["failed"]:
                    r["first_error"] = r["first_error"] or (
                        f"at {self.now():.0f} s: {report.get('first_error')}")
            await self.nap(max(0.0, self.args.rps_every - self.args.rps_seconds))

    # ---- slow readers --------------------------------------------------------------------------

    async def slow_reader(self, slot):
        await self.nap(slot * 0.5)
        r = self.readers
        while not self.stop.is_set():
            stay = random.uniform(15.0, 40.0)
            rate = random.choice((2, 4, 8, 16))
            try:
                sock = await self.connect(rcvbuf=4096)
            except (OSError, asyncio.TimeoutError):
                r["connect_failed"] += 1
                self.anomaly("slow reader could not connect", f"at {self.now():.0f} s")
                await self.nap(1.0)
                continue
            r["started"] += 1
            loop = asyncio.get_running_loop()
            start = time.monotonic()
            got = b""
            outcome = "left"
            try:
                await loop.sock_sendall(sock, self.chat_request(5000, 10))
                while time.monotonic() - start < stay and not self.stop.is_set():
                    data = await self.recv(sock, rate, 15.0)
                    if data is None:
                        outcome = "stalled"
                        break
                    if not data:
                        outcome = "cut"
                        break
                    if len(got) < 12:
                        got += data
                        if len(got) >= 12 and not got.startswith(b"HTTP/1.1 200"):
                            outcome = "bad_head"
                            break
                    r["bytes"] += len(data)
                    if await self.nap(1.0):
                        break
            except OSError:
                outcome = "cut"
            finally:
                sock.close()
            held = time.monotonic() - start
            if outcome == "left":
                r["left"] += 1
            elif outcome == "cut":
                r["cut_early"] += 1
                self.anomaly("slow reader cut by the proxy before it left",
                             f"after {held:.1f} s at {self.now():.0f} s")
            elif outcome == "stalled":
                r["stalled"] += 1
                self.anomaly("slow reader got nothing for 15 s", f"at {self.now():.0f} s")
            else:
                r["bad_head"] += 1
                self.anomaly("slow reader got no 200", repr(got[:40]))

    # ---- slow request bodies -------------------------------------------------------------------

    async def slow_body(self, slot):
        kinds = ("chunked-slow", "length-slow", "chunked-ok")
        n = slot
        await self.nap(slot * 0.7)
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            kind = kinds[n % len(kinds)]
            n += 1
            try:
                sock = await self.connect()
            except (OSError, asyncio.TimeoutError):
                self.anomaly("slow body could not connect", f"at {self.now():.0f} s")
                await self.nap(1.0)
                continue
            stats = self.bodies[kind]
            stats["started"] += 1
            start = time.monotonic()
            if kind == "chunked-ok":
                pieces, size, interval = 80, 60, 0.1  # 600 B/s for 8 s
            else:
                pieces, size, interval = 40, random.choice((2, 4, 8)), 1.0  # a few B/s
            total = pieces * size
            if kind == "length-slow":
                head = f"content-length: {total}\r\n"
            else:
                head = "transfer-encoding: chunked\r\n"
            status, body, answer = None, b"", None
            try:
                await loop.sock_sendall(sock, (
                    "POST /upload HTTP/1.1\r\nhost: soak\r\n"
                    f"content-type: application/octet-stream\r\n{head}\r\n").encode())
                for _ in range(pieces):
                    payload = b"x" * size
                    if kind != "length-slow":
                        payload = b"%x\r\n%s\r\n" % (size, payload)
                    await loop.sock_sendall(sock, payload)
                    answer = await self.recv(sock, 4096, interval)
                    if answer is not None:  # an answer (or EOF) before the body ended
                        break
                    if self.stop.is_set():
                        break
                else:
                    if kind != "length-slow":
                        await loop.sock_sendall(sock, b"0\r\n\r\n")
                    answer = b""
                if answer is not None and not self.stop.is_set():
                    status, body = await self.read_response(sock, answer, 15.0)
            except OSError as e:
                status, body = None, repr(e).encode()
            finally:
                sock.close()
            if self.stop.is_set() and status is None:
                continue  # cut by the end of the run, not judged
            took = time.monotonic() - start
            if kind == "chunked-ok":
                ok = status == 200 and body.strip() == b'{"bytes":%d}' % total
            else:
                # Under 240 B/s from the first byte: the proxy must answer 408 shortly after
                # the 5 s grace.
                ok = status == 408 and took < BODY_GRACE_S + 5.0
            if ok:
                stats["expected"] += 1
            else:
                stats["unexpected"] += 1
                self.anomaly(f"slow body ({kind}) answered unexpectedly",
                             f"status {status} after {took:.1f} s at {self.now():.0f} s: "
                             f"{body[:120]!r}")

    # ---- abrupt resets -------------------------------------------------------------------------

    async def one_reset(self, kind):
        loop = asyncio.get_running_loop()
        try:
            sock = await self.connect()
        except (OSError, asyncio.TimeoutError):
            self.resets_failed += 1
            return
        try:
            if kind == "half-head":
                await loop.sock_sendall(sock, b"POST /v1/chat/completions HTTP/1.1\r\nhost: so")
                await asyncio.sleep(random.uniform(0.0, 0.5))
            elif kind == "half-body":
                if random.random() < 0.5:
                    await loop.sock_sendall(sock, b"POST /upload HTTP/1.1\r\nhost: soak\r\n"
                                            b"content-length: 600000\r\n\r\n" + b"x" * 300000)
                else:
                    await loop.sock_sendall(sock, b"POST /upload HTTP/1.1\r\nhost: soak\r\n"
                                            b"transfer-encoding: chunked\r\n\r\n"
                                            b"1000\r\n" + b"x" * 4096 + b"\r\n800\r\n" + b"x" * 100)
                await asyncio.sleep(random.uniform(0.0, 0.5))
            else:
                await loop.sock_sendall(sock, self.chat_request(400, 5))
                want = random.randint(2000, 30000)  # of ~80 KB
                got = 0
                deadline = time.monotonic() + 10.0
                while got < want and time.monotonic() < deadline:
                    data = await self.recv(sock, 65536, max(0.0, deadline - time.monotonic()))
                    if not data:
                        break
                    got += len(data)
            self.resets[kind] += 1
        except OSError:
            self.resets_failed += 1
        finally:
            self.reset(sock)

    async def reset_loop(self):
        kinds = ("half-head", "half-body", "half-stream")
        pending = set()
        n = 0
        interval = 1.0 / self.args.resets_per_s if self.args.resets_per_s > 0 else None
        if interval is None:
            return
        while not await self.nap(interval):
            if len(pending) < 64:
                t = asyncio.ensure_future(self.one_reset(kinds[n % len(kinds)]))
                pending.add(t)
                t.add_done_callback(pending.discard)
                n += 1
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # ---- slowloris -----------------------------------------------------------------------------

    async def slowloris_conn(self, slot):
        await self.nap(slot * 0.01)  # 100 new connections a second
        l = self.loris
        head = (b"GET /v1/models HTTP/1.1\r\nhost: soak\r\nuser-agent: slowloris\r\nx-pad: "
                + b"a" * 400)
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            try:
                sock = await self.connect()
            except (OSError, asyncio.TimeoutError):
                l["connect_failed"] += 1
                await self.nap(1.0)
                continue
            l["opened"] += 1
            l["open"] += 1
            l["peak_open"] = max(l["peak_open"], l["open"])
            start = time.monotonic()
            closed, answer = False, b""
            try:
                for i in range(len(head)):
                    await loop.sock_sendall(sock, head[i:i + 1])
                    data = await self.recv(sock, 1024, random.uniform(1.5, 2.5))
                    if data is not None:
                        closed, answer = True, data
                        break
                    if self.stop.is_set():
                        break
            except OSError:
                closed = True
            finally:
                sock.close()
                l["open"] -= 1
            held = time.monotonic() - start
            if closed:
                l["closed_by_proxy"] += 1
                l["lifetimes"] += held
                l["longest_s"] = max(l["longest_s"], held)
                if answer.startswith(b"HTTP/1.1 408"):
                    l["answered_408"] += 1
            if held > HEAD_TIMEOUT_S + HEAD_TIMEOUT_SLACK_S and (closed or not self.stop.is_set()):
                l["held_too_long"] += 1
                self.anomaly("slowloris connection held past the head timeout",
                             f"{held:.1f} s at {self.now():.0f} s")

    # ---- sampling ------------------------------------------------------------------------------

    def sample(self):
        s = (self.now(), read_rss_kib(self.pid), count_fds(self.pid), self.loris["open"])
        self.samples.append(s)
        return s

    async def sampler(self, proxy):
        next_print = 60.0
        while not self.stop.is_set():
            if proxy.poll() is not None:
                self.anomaly("proxy exited during the run", f"status {proxy.returncode}")
                self.stop.set()
                return
            try:
                t, rss, fds, lopen = self.sample()
            except OSError:
                continue  # the process just exited: the next turn reports it
            if t >= next_print:
                next_print += 60.0
                log(f"  [{t:4.0f} s] RSS {rss} KiB, {fds} fds, slowloris open {lopen}, "
                    f"streams {self.sse['completed']}/{self.sse['started']} complete, "
                    f"small POSTs {self.rps['requests']}, anomalies "
                    f"{sum(c for c, _ in self.anomalies.values())}")
            await self.nap(self.args.sample_every)

    async def run(self, proxy):
        a = self.args
        tasks = [asyncio.ensure_future(self.sse_loop()),
                 asyncio.ensure_future(self.rps_loop()),
                 asyncio.ensure_future(self.reset_loop())]
        tasks += [asyncio.ensure_future(self.slow_reader(i)) for i in range(a.slow_readers)]
        tasks += [asyncio.ensure_future(self.slow_body(i)) for i in range(a.slow_bodies)]
        tasks += [asyncio.ensure_future(self.slowloris_conn(i)) for i in range(a.slowloris)]
        sampler = asyncio.ensure_future(self.sampler(proxy))
        await self.nap(a.duration)
        # The last reading under load.
        if proxy.poll() is None:
            self.end_of_load = self.sample()
        else:
            self.end_of_load = self.samples[-1] if self.samples else None
        self.stop.set()
        try:
            await sampler
        except Exception as e:
            self.anomaly("sampler crashed", repr(e))
        # Every loop stops within its own bound (an sse round is at most tokens x gap + 30 s).
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                self.anomaly("load task crashed", repr(r))
        self.load_stopped = self.now()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def main():
    args = parse_args()
    if not os.access(args.bin, os.X_OK):
        log(f"soak: no chunkgate binary at {args.bin} (build with cargo build --release, "
            f"or pass --bin)")
        return 2
    up_port, px_port = args.port_base, args.port_base + 1
    for port in (up_port, px_port):
        if not port_free(port):
            log(f"soak: port {port} is taken (use --port-base)")
            return 2
    if not wait_for_ephemeral_ports():
        return 2
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.slowloris + args.slow_readers + args.slow_bodies + 512
    if limit[0] < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, limit[1]), limit[1]))

    work = tempfile.mkdtemp(prefix="chunkgate-soak-")
    proxy_log = os.path.join(work, "proxy.log")
    upstream_log = os.path.join(work, "upstream.log")
    upstream = proxy = None
    started = time.time()
    try:
        backstop = int(args.duration + args.settle + args.settle_timeout + 300)
        upstream = spawn([args.bin, "bench", "upstream", "--listen", f"127.0.0.1:{up_port}",
                          "--exit-after", str(backstop)], upstream_log)
        if not wait_listening(up_port, upstream):
            log("soak: the upstream did not start:\n" + open(upstream_log).read())
            return 2
        serve = [args.bin, "serve", "--listen", f"127.0.0.1:{px_port}",
                 "--upstream", f"http://127.0.0.1:{up_port}"]
        if args.no_access_log:
            serve.append("--no-access-log")
        proxy = spawn(serve, proxy_log)
        if not wait_listening(px_port, proxy):
            log("soak: the proxy did not start:\n" + open(proxy_log).read())
            return 2
        time.sleep(1.0)
        idle_fds = count_fds(proxy.pid)
        idle_rss = read_rss_kib(proxy.pid)
        idle_kinds = fd_breakdown(proxy.pid, px_port, up_port)
        cpu_before = cpu_seconds(proxy.pid)
        log(f"soak: {args.duration:.0f} s against chunkgate pid {proxy.pid} on 127.0.0.1:{px_port} "
            f"(upstream 127.0.0.1:{up_port}), access log "
            f"{'off' if args.no_access_log else 'on'}; "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        log(f"  machine: {machine()}")
        log(f"  idle: RSS {idle_rss} KiB, {idle_fds} fds {idle_kinds}")

        soak = Soak(args, proxy.pid, px_port, up_port)
        asyncio.run(soak.run(proxy))
        load_s = soak.load_stopped

        alive = proxy.poll() is None
        settle_samples = []
        settled_fds = settled_rss = settled_kinds = None
        back_after = None
        if alive:
            time.sleep(args.settle)
            settled_fds = count_fds(proxy.pid)
            settled_rss = read_rss_kib(proxy.pid)
            settled_kinds = fd_breakdown(proxy.pid, px_port, up_port)
            waited = args.settle
            fds = settled_fds
            while fds != idle_fds and waited < args.settle_timeout and proxy.poll() is None:
                time.sleep(2.0)
                waited += 2.0
                fds = count_fds(proxy.pid)
                settle_samples.append((waited, fds))
            if fds == idle_fds:
                back_after = waited
            final_fds = fds
            final_kinds = fd_breakdown(proxy.pid, px_port, up_port) if proxy.poll() is None else {}
            final_rss = read_rss_kib(proxy.pid) if proxy.poll() is None else None
            proxy_cpu = cpu_seconds(proxy.pid) - cpu_before if proxy.poll() is None else None
            alive = proxy.poll() is None
        else:
            final_fds = final_kinds = final_rss = proxy_cpu = None

        # ---- verdicts ----------------------------------------------------------------------
        baseline_at = min(60.0, args.duration / 2)
        base = next((s for s in soak.samples if s[0] >= baseline_at), None)
        end = soak.end_of_load
        failures = []
        rss_ratio = None
        if base and end:
            rss_ratio = end[1] / base[1]
            if rss_ratio > 1.0 + args.rss_tolerance:
                failures.append(f"RSS grew {100 * (rss_ratio - 1):.1f}% from {base[0]:.0f} s "
                                f"to the end (limit {100 * args.rss_tolerance:.0f}%)")
        else:
            failures.append("no RSS reading at the baseline or at the end")
        s = soak.sse
        if s["failed"] or s["completed"] != s["started"] or s["split"] or s["merged"]:
            failures.append(f"token streams: {s['failed']} failed, "
                            f"{s['started'] - s['completed']} not complete, {s['split']} split "
                            f"chunks, {s['merged']} merged chunks; first: {s['first_error']}")
        if s["started"] == 0:
            failures.append("no token stream ran")
        r = soak.rps
        if r["failed"] or r["round_errors"]:
            failures.append(f"small POSTs: {r['failed']} failed, {r['round_errors']} rounds "
                            f"broken; first: {r['first_error']}")
        if final_fds != idle_fds:
            failures.append(f"fds: {final_fds} open {args.settle_timeout:.0f} s after the load, "
                            f"{idle_fds} when idle: {final_kinds}")
        for kind, (count, example) in soak.anomalies.items():
            failures.append(f"{kind}: {count} (first: {example})")
        panics, errors, warnings = [], [], []
        log_lines = log_bytes = 0
        tally = {}  # (status, outcome) -> exchanges, from the access log
        with open(proxy_log, "rb") as f:
            for line in f:
                log_lines += 1
                log_bytes += len(line)
                if b" access: " in line:
                    key = (field(line, b" status="), field(line, b" outcome="))
                    tally[key] = tally.get(key, 0) + 1
                    continue
                for marker, found in ((b"panicked", panics), (b" ERROR ", errors),
                                      (b" WARN ", warnings)):
                    if marker in line:
                        found.append(line.decode(errors="replace").rstrip()[:300])
        if panics:
            failures.append(f"proxy log: {len(panics)} panics, first: {panics[0]}")
        if not alive:
            failures.append(f"the proxy is not running (exit status {proxy.returncode})")

        # ---- report ------------------------------------------------------------------------
        log("")
        log("minute  RSS KiB     fds  slowloris open")
        for minute in range(1, int(args.duration // 60) + 1):
            m = next((x for x in soak.samples if x[0] >= minute * 60.0), None)
            if m:
                log(f"{minute:6d}  {m[1]:7d}  {m[2]:6d}  {m[3]:14d}")
        log("")
        peak_rss = max((x[1] for x in soak.samples), default=0)
        peak_fds = max((x[2] for x in soak.samples), default=0)
        if base and end:
            log(f"RSS: {base[1]} KiB after {base[0]:.0f} s, {end[1]} KiB at the end of the load "
                f"({end[0]:.0f} s): ratio {rss_ratio:.3f} (limit {1 + args.rss_tolerance:.2f}); "
                f"idle {idle_rss}, peak {peak_rss}, {settled_rss} KiB {args.settle:.0f} s after, "
                f"{final_rss} KiB at the last reading")
        log(f"fds: {idle_fds} idle; {end[2] if end else '?'} at the end of the load "
            f"(peak {peak_fds}); {settled_fds} {args.settle:.0f} s after {settled_kinds}; "
            + (f"back to {idle_fds} {back_after:.0f} s after the load"
               if back_after is not None else
               f"{final_fds} after {args.settle_timeout:.0f} s {final_kinds}"))
        log(f"token streams: {s['started']} started, {s['completed']} completed, {s['failed']} "
            f"failed in {s['rounds']} rounds; {s['events']} events, {s['split']} split and "
            f"{s['merged']} merged chunks")
        log(f"small POSTs: {r['requests']} requests in {r['rounds']} rounds, {r['failed']} failed")
        rd = soak.readers
        log(f"slow readers (cut on purpose): {rd['started']} started, {rd['left']} left as "
            f"planned after {rd['bytes']} bytes in all, {rd['cut_early']} cut early by the "
            f"proxy, {rd['stalled']} stalled")
        log("slow bodies: " + "; ".join(
            f"{k} {v['started']} started, {v['expected']} as expected "
            f"({'200 + byte count' if k == 'chunked-ok' else '408'}), {v['unexpected']} not"
            for k, v in soak.bodies.items()))
        log(f"resets (cut on purpose): " + ", ".join(f"{k} {v}" for k, v in soak.resets.items())
            + f"; {soak.resets_failed} could not connect or send")
        lo = soak.loris
        mean_open = (sum(x[3] for x in soak.samples if x[0] >= 15) /
                     max(1, sum(1 for x in soak.samples if x[0] >= 15)))
        log(f"slowloris: {lo['opened']} connections opened, peak {lo['peak_open']} open, "
            f"{mean_open:.0f} open on average after 15 s; {lo['closed_by_proxy']} closed by the "
            f"proxy ({lo['answered_408']} with a 408), mean held "
            f"{lo['lifetimes'] / max(1, lo['closed_by_proxy']):.1f} s, longest "
            f"{lo['longest_s']:.1f} s (limit {HEAD_TIMEOUT_S + HEAD_TIMEOUT_SLACK_S:.0f} s); "
            f"{lo['connect_failed']} connects failed")
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        log(f"CPU: proxy {proxy_cpu if proxy_cpu is None else round(proxy_cpu, 1)} s; this "
            f"script {own.ru_utime + own.ru_stime:.1f} s; load tools "
            f"{kids.ru_utime + kids.ru_stime:.1f} s; over {load_s:.0f} s of load")
        log(f"proxy log: {log_lines} lines, {log_bytes / 1e6:.1f} MB, {len(panics)} panics, "
            f"{len(errors)} ERROR and {len(warnings)} WARN lines"
            + (f" (kept in {work})" if args.keep else ""))
        for line in (errors[:3] + warnings[:3]):
            log(f"  {line}")
        if tally:
            log("access log, exchanges by status and outcome: " + ", ".join(
                f"{st} {oc} {n}" for (st, oc), n in sorted(tally.items(), key=lambda x: -x[1])))
        if failures:
            log("FAIL:")
            for f in failures:
                log(f"  - {f}")
        else:
            log("PASS")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(
                    started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                    duration_s=args.duration, access_log=not args.no_access_log,
                    idle=dict(rss_kib=idle_rss, fds=idle_fds),
                    rss=dict(baseline_at_s=base[0] if base else None,
                             baseline_kib=base[1] if base else None,
                             end_kib=end[1] if end else None, ratio=rss_ratio,
                             peak_kib=peak_rss, settled_kib=settled_rss),
                    fds=dict(end_of_load=end[2] if end else None, peak=peak_fds,
                             settled=settled_fds, settled_kinds=settled_kinds,
                             final=final_fds, back_to_idle_after_s=back_after),
                    streams=s, small_posts=r, slow_readers=rd, slow_bodies=soak.bodies,
                    resets=soak.resets, slowloris=lo,
                    samples=soak.samples, failures=failures), f, indent=1)
        return 1 if failures else 0
    finally:
        for p in (proxy, upstream):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=35)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
