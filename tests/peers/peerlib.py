"""Shared by the Python peers: a minimal WebSocket client (RFC 6455, text frames, on
asyncio streams: nothing to install) and SDP helpers."""

import asyncio
import base64
import os
import struct
from urllib.parse import urlparse


# --- minimal WebSocket client (text frames only) --------------------------------------
class WebSocket:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, url, protocol=None):
        """`protocol`: a subprotocol to ask for (Janus wants "janus-protocol")."""
        u = urlparse(url)
        port = u.port or 80
        reader, writer = await asyncio.open_connection(u.hostname, port)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                + (f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else "")
                + "\r\n"
            ).encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"websocket upgrade refused: {status!r}")
        return cls(reader, writer)

    async def send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.w.write(hdr + mask + masked)
        await self.w.drain()

    async def _frame(self):
        b0, b1 = await self.r.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.r.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.r.readexactly(8))
        mask = await self.r.readexactly(4) if b1 & 0x80 else None
        data = await self.r.readexactly(n)
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return b0 & 0x80, b0 & 0x0F, data

    async def recv(self):
        """The next text message; None when the connection closes."""
        buf = b""
        while True:
            try:
                fin, op, data = await self._frame()
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if op == 0x8:
                return None
            if op == 0x9:  # ping -> pong
                mask = os.urandom(4)
                self.w.write(struct.pack("!BB", 0x8A, 0x80 | len(data)) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
                continue
            if op in (0x1, 0x2, 0x0):
                buf += data
                if fin:
                    return buf.decode()

    async def close(self):
        try:
            self.w.write(struct.pack("!BB", 0x88, 0x80) + os.urandom(4))
            await self.w.drain()
            self.w.close()
        except Exception:
            pass


# --- SDP helpers -----------------------------------------------------------------------
def msid_by_mid(sdp):
    """mid -> msid stream id (from a=msid, or a=ssrc ... msid:)."""
    out, mid, stream = {}, None, None

    def flush():
        if mid is not None and stream:
            out[mid] = stream

    for line in sdp.splitlines():
        line = line.strip()
        if line.startswith("m="):
            flush()
            mid, stream = None, None
        elif line.startswith("a=mid:"):
            mid = line[6:]
        elif line.startswith("a=msid:"):
            stream = line[7:].split(" ")[0]
        elif line.startswith("a=ssrc:") and " msid:" in line and not stream:
            stream = line.split(" msid:", 1)[1].split(" ")[0]
    flush()
    return out


def msid_by_ssrc(sdp):
    """ssrc -> msid stream id (from a=ssrc:N msid:STREAM TRACK)."""
    out = {}
    for line in sdp.splitlines():
        line = line.strip()
        if line.startswith("a=ssrc:") and " msid:" in line:
            ssrc = line[7:].split(" ", 1)[0]
            if ssrc.isdigit():
                out[int(ssrc)] = line.split(" msid:", 1)[1].split(" ")[0]
    return out


def sections(sdp):
    """Split an SDP into its session part and its m-sections (lists of lines, no CRLF)."""
    lines = [l for l in sdp.replace("\r\n", "\n").split("\n") if l]
    session, media = [], []
    for l in lines:
        if l.startswith("m="):
            media.append([l])
        elif media:
            media[-1].append(l)
        else:
            session.append(l)
    return session, media


def join_sections(session, media):
    return "\r\n".join(session + [l for m in media for l in m]) + "\r\n"


DIRECTIONS = ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")


def direction(section):
    return next((l[2:] for l in section if l in DIRECTIONS), "sendrecv")


def mid_by_ssrc(sdp):
    """ssrc -> mid of the m-line whose a=ssrc lines list it."""
    out = {}
    _, media = sections(sdp)
    for m in media:
        mid = next((l[6:] for l in m if l.startswith("a=mid:")), None)
        for l in m:
            if l.startswith("a=ssrc:"):
                ssrc = l[7:].split(" ", 1)[0]
                if ssrc.isdigit() and mid is not None:
                    out.setdefault(int(ssrc), mid)
    return out
