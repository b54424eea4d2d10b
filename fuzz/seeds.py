#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Run from anywhere: `python3 fuzz/seeds.py` (the mesh_record seeds need the
`cryptography` package for ed25519: `pip install cryptography`). The output
is deterministic; the files are committed, so CI never runs this.

Mesh records are signed exactly as dht::record signs them: ed25519 (RFC
8032, deterministic, as ed25519-dalek) over a domain tag and the compact
JSON of the body, fields in declaration order; the keys are the
`SigningKey::from_bytes(&[seed; 32])` of dht's tests.
"""

import hashlib
import hmac
import json
import os
import random
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
NOW = 1_800_000_000_000  # ms; the record targets' clock
HOUR = 3_600_000


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def compact(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------- ws_message
def ws_message():
    frames = {
        "hello": {"type": "hello", "id": 1, "version": 1, "token": "3q2+7w" * 8},
        "hello_resume": {"type": "hello", "id": 2, "version": 1, "token": "t", "resume": "d-0011"},
        "call": {"type": "call", "id": 3, "to": "bob@sants", "media": {"audio": True, "video": False}},
        "call_bare": {"type": "call", "id": 4, "to": "Bob", "media": {"audio": True, "video": True}},
        "accept": {"type": "accept", "id": 5, "call": "0123456789abcdef0123456789abcdef"},
        "reject": {"type": "reject", "id": 6, "call": "c1"},
        "hangup": {"type": "hangup", "id": 7, "call": "c1"},
        "offer": {"type": "signal", "id": 8, "call": "c1",
                  "signal": {"kind": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}},
        "ice": {"type": "signal", "id": 9, "call": "c1",
                "signal": {"kind": "ice", "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host",
                           "sdp_mid": "0", "sdp_m_line_index": 0}},
        "chat": {"type": "signal", "id": 10, "call": "c1", "signal": {"kind": "chat", "text": "hola \u00e0 tothom"}},
        "media": {"type": "signal", "id": 11, "call": "c1",
                  "signal": {"kind": "media", "media": {"audio": False, "video": True}}},
        "mark_read": {"type": "mark_read", "id": 12, "notice": 42},
        "ping": {"type": "ping", "id": 18446744073709551615},
        # Frames a node sends the browser (NodeToClient).
        "node_welcome": {"type": "welcome", "id": 1, "device": "d-1", "user": "alice@gracia", "resumed": False},
        "node_incoming": {"type": "incoming", "call": "c1", "from": "alice@gracia",
                          "media": {"audio": True, "video": False}},
        "node_ended": {"type": "ended", "call": "c1", "reason": "answered_elsewhere"},
        "node_error": {"type": "error", "id": 3, "code": "bad_message", "message": "missing field `to`"},
        "node_missed": {"type": "missed_call", "notice": {"id": 1, "call": "c1", "from": "bob@sants",
                                                           "at_ms": NOW, "reason": "no_answer", "read": False}},
    }
    for name, v in frames.items():
        write("ws_message", name, compact(v))
    write("ws_message", "bad_json", '{"type":"call","id":13,')
    write("ws_message", "unknown_type", '{"type":"fly","id":14}')


# -------------------------------------------------------------- mesh_request
def mesh_request():
    def req(service, body, user="alice"):
        r = {"v": 1, "service": service, "zone": "gracia"}
        if user:
            r["user"] = user
        r["body"] = body
        return compact(r)

    media = {"audio": True, "video": False}
    write("mesh_request", "invite", req("call", {"type": "invite", "call": "c1", "from": "alice@gracia",
                                                 "to": "bob@sants", "media": media}))
    write("mesh_request", "ringing", req("call", {"type": "ringing", "call": "c1"}, user="bob"))
    write("mesh_request", "ended", req("call", {"type": "ended", "call": "c1", "reason": "hung_up"}))
    write("mesh_request", "signal", req("call", {"type": "signal", "call": "c1",
                                                 "signal": {"kind": "answer", "sdp": "v=0\r\n"}}))
    write("mesh_request", "node_ping", req("node", {"type": "ping"}, user=None))
    write("mesh_request", "reply_ok", compact({"ok": {"body": None}}))
    write("mesh_request", "reply_pong", compact({"ok": {"body": {"type": "pong", "zone": "sants",
                                                                 "version": "0.1.0", "wall_ms": NOW}}}))
    write("mesh_request", "reply_refused", compact({"refused": {"code": "unauthorised", "reason": "no claim"}}))
    write("mesh_request", "node_to_node", compact({"type": "accepted", "call": "c1"}))


# --------------------------------------------------------------- mesh_record
def mesh_record():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    keys = {s: Ed25519PrivateKey.from_private_bytes(bytes([s]) * 32) for s in (1, 2, 3)}

    def node(s):
        return keys[s].public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def sign(s, tag, body):
        return keys[s].sign(tag + compact(body).encode()).hex()

    def claim(s, zone, seq, addrs=("/ip4/192.0.2.1/tcp/7447",), issued=NOW - 60_000, expires=NOW + HOUR):
        body = {"zone": zone, "node": node(s), "addrs": list(addrs), "seq": seq,
                "issued_at_ms": issued, "expires_at_ms": expires}
        return {"claim": body, "sig": sign(s, b"xarxa/zone-claim/v1\0", body)}

    def user(s, who, seq, c, addrs=()):
        body = {"user": who, "node": node(s), "addrs": list(addrs), "seq": seq,
                "issued_at_ms": NOW - 60_000, "expires_at_ms": NOW + HOUR}
        return {"record": body, "sig": sign(s, b"xarxa/user-record/v1\0", body), "claim": c}

    def zone_rec(c):
        return compact({"kind": "zone", **c})

    def user_rec(u):
        return compact({"kind": "user", **u})

    # The first byte is the target's context: bit 2 "holds sants' claim
    # under this key", bit 3 "holds it as the zone's claim"; 0 keys the value
    # under its own key.
    held = claim(1, "sants", 5)
    write("mesh_record", "zone_claim", b"\x00" + zone_rec(claim(1, "sants", 1)).encode())
    write("mesh_record", "zone_renewal", b"\x04" + zone_rec(claim(1, "sants", 6)).encode())
    write("mesh_record", "zone_held_again", b"\x04" + zone_rec(held).encode())
    write("mesh_record", "zone_taken", b"\x04" + zone_rec(claim(2, "sants", 99)).encode())
    write("mesh_record", "zone_other", b"\x00" + zone_rec(claim(2, "gracia", 1, addrs=())).encode())
    write("mesh_record", "user", b"\x08" + user_rec(user(1, "bob@sants", 1, held)).encode())
    write("mesh_record", "user_no_claim", b"\x00" + user_rec(user(3, "carme@poblenou", 2,
                                                                   claim(3, "poblenou", 1))).encode())
    write("mesh_record", "user_rogue", b"\x08" + user_rec(user(2, "bob@sants", 7, claim(2, "sants", 1))).encode())
    write("mesh_record", "expired", b"\x00" + zone_rec(claim(1, "sants", 2, expires=NOW)).encode())


# -------------------------------------------------------- mesh_record_signed
def mesh_record_signed():
    # Structured input (the `arbitrary` crate reads any bytes): a few
    # deterministic byte strings of different lengths to start from.
    rng = random.Random(18)
    for n in (16, 64, 256, 1024):
        write("mesh_record_signed", f"random_{n}", bytes(rng.randrange(256) for _ in range(n)))


# ----------------------------------------------------------------- stun_turn
MAGIC = 0x2112A442


def stun(msg_type, txn, attrs, key=None, fingerprint=True):
    body = b""
    for t, v in attrs:
        body += struct.pack(">HH", t, len(v)) + v + b"\0" * (-len(v) % 4)

    def header(extra):
        return struct.pack(">HHI", msg_type, len(body) + extra, MAGIC) + txn

    if key is not None:
        mac = hmac.new(key, header(24) + body, hashlib.sha1).digest()
        body += struct.pack(">HH", 0x0008, 20) + mac
    if fingerprint:
        crc = (zlib.crc32(header(8) + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += struct.pack(">HHI", 0x8028, 4, crc)
    return header(0) + body


def xor_v4(ip, port):
    a = bytes(int(x) for x in ip.split("."))
    cookie = struct.pack(">I", MAGIC)
    return struct.pack(">BBH", 0, 1, port ^ (MAGIC >> 16)) + bytes(x ^ y for x, y in zip(a, cookie))


def stun_turn():
    # RFC 5769 §2.1, the sample request (as in wire.rs's tests).
    rfc = bytes.fromhex(
        "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
        "002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020"
        "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf")
    write("stun_turn", "rfc5769_request", rfc)
    txn = bytes(range(1, 13))
    write("stun_turn", "binding", stun(0x0001, txn, [], fingerprint=False))
    write("stun_turn", "binding_fp", stun(0x0001, txn, [(0x8022, b"xarxa")]))
    username = b"1800000600:bob"
    key = hashlib.md5(username + b":sants:password").digest()
    write("stun_turn", "allocate", stun(0x0003, txn, [
        (0x0019, b"\x11\0\0\0"),  # REQUESTED-TRANSPORT UDP
        (0x0006, username),
        (0x0014, b"sants"),
        (0x0015, b"000000006b49d200" + b"ab" * 16),
        (0x000D, struct.pack(">I", 600)),
    ], key=key))
    write("stun_turn", "create_permission", stun(0x0008, txn, [
        (0x0012, xor_v4("198.51.100.9", 4000)), (0x0006, username)], key=b"key"))
    write("stun_turn", "channel_bind", stun(0x0009, txn, [
        (0x000C, b"\x40\x01\0\0"), (0x0012, xor_v4("198.51.100.9", 4000))], key=b"key"))
    write("stun_turn", "send_indication", stun(0x0016, txn, [
        (0x0012, xor_v4("198.51.100.9", 4000)), (0x0013, b"hello relay")], fingerprint=False))
    write("stun_turn", "channel_data", struct.pack(">HH", 0x4001, 11) + b"hello relay" + b"\0")


# -------------------------------------------------------------------- config
def config():
    write("config", "empty", "")
    write("config", "zone", 'zone = "gracia"\n')
    write("config", "full", """\
zone = "sants"
data_dir = "/var/lib/xarxa"
registration = "invite"

[http]
listen = "0.0.0.0:8443"

[tls]
cert = "/etc/xarxa/cert.pem"
key = "/etc/xarxa/key.pem"

[timeouts]
ring = "30s"
grace = "10s"
hello = "10s"
session = "30days"
idle = "1m 30s"

[limits]
max_frame_bytes = 65536
max_sdp_bytes = 16384
max_chat_bytes = 4096
max_body_bytes = 65536
ws_messages_per_second = 50
max_devices_per_user = 10
max_connections = 16384
login_failures_per_account = 5
login_failures_per_address = 20
login_window = "5m"
registrations_per_address = 20
max_sessions_per_user = 50
max_history_per_user = 1000

[mesh]
enabled = true
listen = ["/ip4/0.0.0.0/tcp/7447", "/ip4/0.0.0.0/udp/7447/quic-v1"]
bootstrap = ["/ip4/10.1.2.3/tcp/7447/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]
relays = []
external = ["/ip4/10.1.2.4/tcp/7447"]
mdns = false
relay_server = true
claim_ttl = "1day"
user_ttl = "6h"
republish = "1h"
cache_ttl = "1m"
request_timeout = "5s"
retries = 2
max_connections = 256
idle_timeout = "2m"
bootstrap_interval = "5m"
peer_requests_per_second = 1000

[turn]
enabled = true
listen = "0.0.0.0:3478"
public_host = "sants.example"
relay_ip = "192.0.2.10"
relay_port_min = 49152
relay_port_max = 65535
realm = "sants"
credential_ttl = "1day"
secret = "a secret of sixteen+"
allowed_peer_ranges = ["10.0.0.0/8"]
allow_loopback_peers = false
max_allocations_per_user = 10
max_allocations = 1000
max_kbps_per_allocation = 10000
""")
    write("config", "lone_zone", 'zone = "poblenou"\nregistration = "admin-only"\n\n[mesh]\nenabled = false\n'
          '\n[turn]\nenabled = false\n')
    write("config", "invalid", 'zone = "Not A Zone!"\n\n[limits]\nmax_sdp_bytes = 0\n')


if __name__ == "__main__":
    ws_message()
    mesh_request()
    mesh_record()
    mesh_record_signed()
    stun_turn()
    config()
