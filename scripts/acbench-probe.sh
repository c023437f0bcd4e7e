#!/usr/bin/env bash
# Where do the bytes wait? A probe for lab-acbench's ACBENCH_PROBE hook (measurement only).
#
#   flock /work/bench.lock env ACBENCH_PROBE="bash scripts/acbench-probe.sh" PROBE_DIR=/tmp/p \
#       target/release/lab-acbench --secs 8 --repeat 1 --client openconnect --chan tls
#   bash scripts/acbench-probe.sh --summary /tmp/p/*.txt      # queues, drops, per-thread CPU
#
# lab-acbench starts it alongside every iperf3 with CLIENT_NS, GW_NS, INSIDE_NS, SERVER_PIDS,
# CLIENT_PIDS, SECS and ROW (up|down) in the environment. After PROBE_DELAY seconds (default 2,
# past iperf3's slow start) it takes PROBE_SAMPLES (default 12) samples PROBE_GAP seconds apart
# (default 0.25) and writes them to $PROBE_DIR (default /tmp/acbench-probe)/<time>-<server>-<row>.txt:
#   - before/after the sampling window: per-thread CPU ticks (utime+stime) and schedstat (time on
#     CPU, time runnable but waiting for a CPU, timeslices) of every process in the three
#     namespaces plus ksoftirqd, /proc/stat, the UDP and TcpExt counters of the client and
#     gateway namespaces (UDP RcvbufErrors = a UDP socket's receive buffer overflowed),
#     `ip -s -o link` of both (TX "dropped" on a TUN = the TUN's queue, txqueuelen packets, was
#     full: the process reading that TUN did not keep up), `uptime`;
#   - each sample: `ss -tinmpH` and `ss -uanmpH` (UDP incl. unconnected sockets) in the client
#     and gateway namespaces and `ss -tinmH` on the inside host: Recv-Q/Send-Q of the outer TLS
#     and UDP sockets (skmem d = that socket's drops), the inner iperf3 flow's rtt/cwnd/unacked.
# Reading it: the stage whose input queue is full (or drops) while the stage after it waits for
# work is the limit. Bytes queued in no socket can still wait in a TUN queue or in a process's
# own buffers, which `ss` does not show. schedstat "waiting" matters on a shared machine: with
# autogroup scheduling (kernel.sched_autogroup_enabled=1) the benchmark's client, server and
# iperf3 share one group's CPU share, so what one of them gets the others lose.
# The probe costs CPU (five `ip netns exec ss` per sample); use it to locate queues, not to
# measure throughput. /work/notes/oc-evidence.md is a worked example.
if [ "${1:-}" = --summary ]; then
    shift
    exec python3 - "$@" <<'PY'
"""Summarise acbench-probe.sh files: queues (median/max over samples), drops (T1-T0), per-thread CPU."""
import re, sys, statistics as st

CLK = 100

def med(v):
    return int(st.median(v)) if v else None

def kv(info, key):
    m = re.search(r'(?:^|\s)' + re.escape(key) + r':([0-9.]+)', info)
    return float(m.group(1)) if m else None

def parse(path):
    lines = open(path).read().splitlines()
    head = lines[0]
    samples = {}  # i -> list of (ns, sockline, infoline)
    t = {'T0': {}, 'T1': {}}
    times = {}
    last = None
    for ln in lines[1:]:
        parts = ln.split(' ', 2)
        if len(parts) < 3:
            continue
        lab, kind, rest = parts
        if lab in ('T0', 'T1'):
            d = t[lab]
            if kind == 'TIME':
                times[lab] = float(rest)
            elif kind == 'THREAD':
                f = rest.split()
                sched = (0, 0, 0)
                if len(f) == 9:
                    ns, pid, tid, comm, u, s = f[:6]; sched = tuple(map(int, f[6:9]))
                elif len(f) == 6:
                    ns, pid, tid, comm, u, s = f
                else:
                    ns = '?'; pid, tid, comm, u, s = f[:5]
                d.setdefault('thr', {})[(ns, pid, tid, comm)] = int(u) + int(s)
                d.setdefault('sched', {})[(ns, pid, tid, comm)] = sched
            elif kind == 'SNMP':
                tag, r = rest.split(' ', 1)
                d.setdefault('snmp', {}).setdefault(tag, []).append(r.split()[1:])
            elif kind == 'NETSTAT':
                tag, r = rest.split(' ', 1)
                d.setdefault('netstat', {}).setdefault(tag, []).append(r.split()[1:])
            elif kind == 'LINK':
                tag, r = rest.split(' ', 1)
                m = re.match(r'\d+: ([^:@]+)', r)
                nums = re.findall(r'RX:[^\\]*\\\s+([\d\s]+)\\\s+TX:[^\\]*\\\s+([\d\s]+)', r)
                if m and nums:
                    rx = list(map(int, nums[0][0].split())); tx = list(map(int, nums[0][1].split()))
                    d.setdefault('link', {})[(tag, m.group(1))] = (rx, tx)
            elif kind == 'UPTIME':
                d['uptime'] = rest.split('load average:')[-1].strip()
        elif lab.startswith('S'):
            if kind == 'TIME':
                continue
            if rest.startswith('\t') or rest.startswith(' \t'):
                if last is not None:
                    last[2] = rest
            else:
                last = [kind, rest, '']
                samples.setdefault(lab, []).append(last)
    return head, samples, t, times

def pair(d):  # header row + value row -> dict
    out = {}
    for tag, rows in d.items():
        if len(rows) >= 2:
            out[tag] = dict(zip(rows[0], map(int, rows[1])))
    return out

def main(path):
    head, samples, t, times = parse(path)
    print('==', path.split('/')[-1], '|', head, '| load', t['T0'].get('uptime'), '->', t['T1'].get('uptime'))
    dt = times['T1'] - times['T0']
    # queues
    rows = {}
    def add(k, v):
        rows.setdefault(k, []).append(v)
    for i, socks in samples.items():
        inner = []
        for ns, s, info in socks:
            f = s.split()
            if '.' in ns:
                ns, proto = ns.split('.')
                state, rq, sq, local, peer = f[:5]
            elif ns in ('CLIENT', 'GW'):
                proto, state, rq, sq, local, peer = f[:6]
            else:
                proto = 'tcp'; state, rq, sq, local, peer = f[:5]
            rq, sq = int(rq), int(sq)
            drops = re.search(r'skmem:\([^)]*d(\d+)\)', info)
            drops = int(drops.group(1)) if drops else 0
            if ns == 'CLIENT' and peer.endswith('203.0.113.1:443'):
                add(f'client {proto} outer Recv-Q', rq); add(f'client {proto} outer Send-Q', sq)
                if proto == 'udp':
                    add('client udp skmem drops (cum)', drops)
                else:
                    add('client tcp outer unacked', int(kv(info, 'unacked') or 0))
                    add('client tcp outer notsent', int(kv(info, 'notsent') or 0))
            elif ns == 'GW' and local.endswith(':443') and ('203.0.113.10' in peer or proto == 'udp'):
                tag = 'gw %s %s' % (proto, 'conn' if '203.0.113.10' in peer else 'listen')
                add(f'{tag} Recv-Q', rq); add(f'{tag} Send-Q', sq)
                if proto == 'udp':
                    add(f'{tag} skmem drops (cum)', drops)
                else:
                    add('gw tcp outer unacked', int(kv(info, 'unacked') or 0))
            elif proto == 'tcp' and ('10.1.0.10' in local + peer):
                sent = kv(info, 'bytes_sent') or 0
                inner.append((sent, ns, rq, sq, info))
        if inner:
            sent, ns, rq, sq, info = max(inner, key=lambda x: x[0])
            add(f'inner sender ({ns}) Send-Q', sq)
            rtt = re.search(r'rtt:([0-9.]+)/', info)
            add('inner rtt ms x1000', int(float(rtt.group(1)) * 1000) if rtt else 0)
            for k in ('cwnd', 'unacked', 'notsent'):
                add(f'inner {k}', int(kv(info, k) or 0))
            for k in ('rwnd_limited', 'sndbuf_limited', 'busy'):
                m = re.search(k + r':(\d+)ms(?:\(([0-9.]+)%\))?', info)
                if m:
                    add(f'inner {k} ms (cum)', int(m.group(1)))
            add('inner bytes_retrans (cum)', int(kv(info, 'bytes_retrans') or 0))
            add('inner bytes_sent (cum)', int(sent))
            # receiver side Recv-Q
        for ns, s, info in socks:
            f = s.split()
            pass
    for k, v in rows.items():
        if '(cum)' in k:
            print(f'  {k:38s} first {v[0]} last {v[-1]}')
        else:
            print(f'  {k:38s} median {med(v)} max {max(v)} min {min(v)}  [{",".join(str(x) for x in v)}]')
    # drops
    for kind in ('snmp', 'netstat'):
        a, b = pair(t['T0'].get(kind, {})), pair(t['T1'].get(kind, {}))
        for tag in a:
            keys = ['RcvbufErrors', 'InErrors', 'SndbufErrors'] if kind == 'snmp' else ['TCPRcvQDrop', 'TCPBacklogDrop', 'TCPOFOQueue', 'TCPOFODrop', 'TCPZeroWindowDrop', 'TCPWantZeroWindowAdv', 'TCPToZeroWindowAdv', 'TCPFromZeroWindowAdv', 'TCPRcvCollapsed', 'TCPRcvPruned']
            diffs = {k: b[tag][k] - a[tag][k] for k in keys if k in a[tag]}
            if kind == 'snmp':
                diffs['InDatagrams'] = b[tag]['InDatagrams'] - a[tag]['InDatagrams']
                diffs['OutDatagrams'] = b[tag]['OutDatagrams'] - a[tag]['OutDatagrams']
            print(f'  delta {kind} {tag}: ' + ' '.join(f'{k}={v}' for k, v in diffs.items() if v or k in ('RcvbufErrors',)))
    la, lb = t['T0'].get('link', {}), t['T1'].get('link', {})
    for key in la:
        if key in lb and key[1] != 'lo':
            rx0, tx0 = la[key]; rx1, tx1 = lb[key]
            print(f'  delta link {key[0]} {key[1]}: rx pkts {rx1[1]-rx0[1]} rx_drop {rx1[3]-rx0[3]} | tx pkts {tx1[1]-tx0[1]} tx_drop {tx1[3]-tx0[3]}')
    # cpu
    a, b = t['T0'].get('thr', {}), t['T1'].get('thr', {})
    sa, sb = t['T0'].get('sched', {}), t['T1'].get('sched', {})
    procs = {}
    for k, v in b.items():
        if k in a:
            c = (v - a[k]) / CLK / dt
            ns, pid, tid, comm = k
            run = (sb[k][0] - sa[k][0]) / 1e9 / dt
            wait = (sb[k][1] - sa[k][1]) / 1e9 / dt
            sl = (sb[k][2] - sa[k][2]) / dt
            if c >= 0.005 or run >= 0.005:
                procs.setdefault((ns, pid), []).append((c, comm, tid, run, wait, sl))
    print(f'  CPU over {dt:.2f} s: ticks cores (schedstat: on-CPU / runnable-but-waiting share of wall time, switches/s):')
    for (ns, pid), th in sorted(procs.items(), key=lambda x: -sum(c[0] for c in x[1])):
        tot = sum(c[0] for c in th)
        print(f'    {ns:6s} {pid:>6s} total {tot:.2f}: ' + ', '.join(f'{comm}/{tid} {c:.2f} (run {r:.2f} wait {w:.2f} sw {s:.0f})' for c, comm, tid, r, w, s in sorted(th, reverse=True)))

for p in sys.argv[1:]:
    try:
        main(p)
    except Exception as e:
        print('==', p, 'parse error', repr(e))
PY
fi
set -u
dir=${PROBE_DIR:-/tmp/acbench-probe}
mkdir -p "$dir"
delay=${PROBE_DELAY:-2}
n=${PROBE_SAMPLES:-12}
gap=${PROBE_GAP:-0.25}
srv=unknown
for p in ${SERVER_PIDS:-}; do
    c=$(cat /proc/$p/comm 2>/dev/null) && { srv=$c; break; }
done
out="$dir/$(date +%H%M%S)-$srv-${ROW:-row}.txt"

threads() { # label: one line per thread of every process in the namespaces, plus ksoftirqd
    local lbl=$1 ns p t s
    for ns in client:"$CLIENT_NS" gw:"$GW_NS" inside:"$INSIDE_NS" kernel:; do
        if [ -n "${ns#*:}" ]; then p=$(ip netns pids "${ns#*:}" 2>/dev/null); else p=$(pgrep -x 'ksoftirqd/[0-9]+'); fi
        for p in $p; do
            for t in /proc/$p/task/*; do
                # fields after "(comm) ": state ppid ... utime is the 12th, stime the 13th
                s=$(sed 's/.*) //' "$t/stat" 2>/dev/null) || continue
                set -- $s
                # schedstat: ns on CPU, ns runnable but waiting for a CPU, timeslices
                echo "$lbl THREAD ${ns%%:*} $p ${t##*/} $(tr ' ' '_' <"$t/comm") ${12} ${13} $(cat "$t/schedstat" 2>/dev/null)"
            done
        done
    done
}
counters() { # label
    echo "$1 TIME $(date +%s.%N)"
    echo "$1 UPTIME $(uptime)"
    echo "$1 PROCSTAT $(head -1 /proc/stat)"
    for ns in "$CLIENT_NS" "$GW_NS"; do
        tag=client; [ "$ns" = "$GW_NS" ] && tag=gw
        ip netns exec "$ns" cat /proc/net/snmp | grep '^Udp:' | sed "s/^/$1 SNMP $tag /"
        ip netns exec "$ns" cat /proc/net/netstat | grep '^TcpExt:' | sed "s/^/$1 NETSTAT $tag /"
        ip netns exec "$ns" ip -s -o link | sed "s/^/$1 LINK $tag /"
        ip netns exec "$ns" tc -s qdisc 2>/dev/null | tr '\n' ' ' | sed "s/^/$1 QDISC $tag /"; echo
    done
    threads "$1"
}

sleep "$delay"
{
    echo "ROW=${ROW:-} SERVER=$srv SERVER_PIDS=${SERVER_PIDS:-} CLIENT_PIDS=${CLIENT_PIDS:-} SECS=${SECS:-}"
    counters T0
    for i in $(seq 1 "$n"); do
        echo "S$i TIME $(date +%s.%N)"
        ip netns exec "$CLIENT_NS" ss -tinmpH | sed "s/^/S$i CLIENT.tcp /"
        ip netns exec "$CLIENT_NS" ss -uanmpH | sed "s/^/S$i CLIENT.udp /"
        ip netns exec "$GW_NS" ss -tinmpH | sed "s/^/S$i GW.tcp /"
        ip netns exec "$GW_NS" ss -uanmpH | sed "s/^/S$i GW.udp /"
        ip netns exec "$INSIDE_NS" ss -tinmH | sed "s/^/S$i INSIDE.tcp /"
        sleep "$gap"
    done
    counters T1
} >"$out" 2>&1
