#!/usr/bin/env python3
"""Extracts IKEv2 AUTH signature test vectors from a strongSwan responder log written with
`ike = 4` and `enc = 4` (scripts/lab-certs-strongswan with IKE_LOG=4 ENC_LOG=4 KEEP=1).

For the first IKE SA in the log it writes two vectors: the initiator's AUTH as the responder
parsed it with the octets the responder checked it against, and the responder's own AUTH with
the octets it signed. Output: one file per vector with lines `method N`, `auth HEX`,
`octets HEX`, `skp HEX` (the SK_p that keyed prf(SK_p, IDx')). Usage: strongswan-auth-vectors.py CHARON.LOG OUT-PREFIX
"""
import re
import sys

LINE = re.compile(r"^\S+ \d+\[(\w+)\] <[^>]*> ?(.*)$")
HEX = re.compile(r"^\s*\d+: ((?:[0-9A-F]{2} )+)")


def dump(lines, i, n):
    """Reads an n-byte hex dump starting after line i."""
    out = bytearray()
    j = i + 1
    while len(out) < n and j < len(lines):
        m = HEX.match(lines[j])
        if not m:
            break
        out += bytes.fromhex(m.group(1).replace(" ", ""))
        j += 1
    assert len(out) == n, (i, n, len(out))
    return bytes(out), j


def main():
    log, prefix = sys.argv[1], sys.argv[2]
    lines = []
    for raw in open(log, encoding="utf-8", errors="replace"):
        m = LINE.match(raw.rstrip("\n"))
        lines.append(m.group(2) if m else "")
    octets, auths, skps = [], [], []
    last_skp = None
    mode = None
    method = None
    for i, l in enumerate(lines):
        if l.startswith("parsing AUTH payload,"):
            mode = "parse"
        elif l.startswith("generating payload of type AUTH"):
            mode = "gen"
        elif mode and re.match(r"^\s*(parsing|generating) rule 10 U_INT_8", l):
            method = int(re.match(r"^\s*=> (\d+)", lines[i + 1]).group(1))
        elif mode and re.match(r"^\s*(parsing|generating) rule 14 CHUNK_DATA", l):
            n = int(re.match(r"^\s*=> (\d+) bytes", lines[i + 1]).group(1))
            data, _ = dump(lines, i + 1, n)
            auths.append((mode, method, data))
            mode = None
        elif l.startswith("SK_p =>"):
            n = int(re.search(r"=> (\d+) bytes", l).group(1))
            last_skp, _ = dump(lines, i, n)
        elif l.startswith("octets = message + nonce + prf(Sk_px, IDx') =>"):
            n = int(re.search(r"=> (\d+) bytes", l).group(1))
            data, _ = dump(lines, i, n)
            octets.append(data)
            skps.append(last_skp)
    parsed = [a for a in auths if a[0] == "parse"]
    gen = [a for a in auths if a[0] == "gen"]
    assert parsed and gen and len(octets) >= 2, (len(parsed), len(gen), len(octets))
    # The responder checks the initiator's AUTH first, then signs its own.
    for name, (_, method, data), octs, skp in (("initiator", parsed[0], octets[0], skps[0]), ("responder", gen[0], octets[1], skps[1])):
        with open(f"{prefix}-{name}.txt", "w") as f:
            f.write(f"method {method}\nauth {data.hex()}\noctets {octs.hex()}\n")
            if skp:
                f.write(f"skp {skp.hex()}\n")


if __name__ == "__main__":
    main()
