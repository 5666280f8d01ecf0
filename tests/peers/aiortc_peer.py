#!/usr/bin/env python3
"""aiortc as a blindrelay participant.

    python aiortc_peer.py --url ws://127.0.0.1:PORT/v1/signal --token JWT --call CALL \
        --duration SECS --name NAME [--leave-after SECS] [--join-after SECS]

Joins through the relay's signalling protocol (hello, join with a full offer, answers the
relay's renegotiation offers), sends a synthetic audio tone and synthetic 320x240 video,
decodes every remote track, and prints one JSON report on stdout (logs on stderr).
Exit status 0 when it joined.

Runs in the interpreter that scripts/install-test-deps.sh prepares
(/opt/blindrelay-venv/bin/python). Signalling: peerlib.WebSocket (stdlib only).
"""

import argparse
import asyncio
import fractions
import json
import logging
import math
import sys
import time
from array import array

import aioice.ice

# The relay's only candidate is on loopback, and aioice skips 127.0.0.1 when it gathers:
# offer exactly one host candidate there.
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]

from av import AudioFrame, VideoFrame  # noqa: E402
from aiortc import (  # noqa: E402
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError  # noqa: E402

from peerlib import WebSocket, msid_by_mid, msid_by_ssrc  # noqa: E402

log = logging.getLogger("aiortc-peer")


# --- synthetic sources -----------------------------------------------------------------
class ToneTrack(MediaStreamTrack):
    """A 440 Hz tone, 48 kHz mono, 20 ms frames."""

    kind = "audio"
    RATE, PTIME = 48000, 0.020

    def __init__(self):
        super().__init__()
        n = int(self.RATE * self.PTIME)
        self._samples = n
        # 440 Hz divides 48 kHz into 109.09 samples: precompute one second and slide.
        self._wave = array("h", (int(3000 * math.sin(2 * math.pi * 440 * i / self.RATE)) for i in range(self.RATE + n)))
        self._ts = 0
        self._start = None

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        else:
            self._ts += self._samples
            wait = self._start + self._ts / self.RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        off = self._ts % self.RATE
        frame = AudioFrame(format="s16", layout="mono", samples=self._samples)
        frame.planes[0].update(self._wave[off : off + self._samples].tobytes())
        frame.pts = self._ts
        frame.sample_rate = self.RATE
        frame.time_base = fractions.Fraction(1, self.RATE)
        return frame


class PatternTrack(MediaStreamTrack):
    """320x240 video at 30 fps whose brightness changes every frame (so VP8 has work)."""

    kind = "video"
    W, H, FPS = 320, 240, 30

    def __init__(self):
        super().__init__()
        self._n = 0
        self._start = None
        self._u = bytes([128]) * (self.W * self.H // 4)

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        else:
            self._n += 1
            wait = self._start + self._n / self.FPS - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = VideoFrame(width=self.W, height=self.H, format="yuv420p")
        y = self._n * 4 % 220 + 16
        # a bar moving down the frame over a changing background
        bar = (self._n * 2) % self.H
        rows = bytearray([y]) * (self.W * self.H)
        rows[bar * self.W : min(self.H, bar + 16) * self.W] = bytes([235 - y // 2]) * (self.W * (min(self.H, bar + 16) - bar))
        frame.planes[0].update(bytes(rows))
        frame.planes[1].update(self._u)
        frame.planes[2].update(self._u)
        frame.pts = self._n * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


def receiver_streams(receiver):
    """{ssrc: (packets received, packets lost)} for every SSRC a receiver got packets from.

    WORKAROUND (aiortc 1.16): RTCRtpReceiver.getStats() gives every remote SSRC the same
    stats id, so with two SSRCs on one receiver (a packet routed to it before the relay
    signalled the SSRC) the report keeps whichever came last. Read the per-SSRC counters
    directly; fall back to getStats() if aiortc's internals change."""
    streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
    if isinstance(streams, dict):
        return {ssrc: (st.packets_received, st.packets_lost) for ssrc, st in streams.items()}
    return None


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--call", required=True)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--name", default="aiortc")
    ap.add_argument("--leave-after", type=float, default=None)
    ap.add_argument("--join-after", type=float, default=0, help="wait this long before connecting")
    return ap.parse_args()


async def main(a):
    if a.join_after > 0:
        await asyncio.sleep(a.join_after)
    report = {
        "name": a.name,
        "joined": False,
        "participant": None,
        "offers_answered": 0,
        "inbound": [],
        "outbound": [],
        "connectionState": None,
        "events": [],
        "errors": [],
    }

    def err(msg):
        log.error("%s", msg)
        report["errors"].append(str(msg))

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    audio, video = ToneTrack(), PatternTrack()
    pc.addTransceiver(audio, direction="sendrecv")
    pc.addTransceiver(video, direction="sendrecv")
    remotes = []  # [{track, transceiver, kind, frames, samples}]
    consumers = []
    remote_msid = {}  # the relay's latest description: mid -> msid stream id
    ssrc_owner = {}  # every ssrc -> msid stream id the relay ever signalled

    def signalled(sdp):
        remote_msid.clear()
        remote_msid.update(msid_by_mid(sdp))
        ssrc_owner.update(msid_by_ssrc(sdp))

    @pc.on("connectionstatechange")
    def _state():
        report["connectionState"] = pc.connectionState
        log.info("connectionState %s", pc.connectionState)
        if pc.connectionState == "failed":
            err("peer connection failed")

    @pc.on("track")
    def _track(track):
        tr = next((t for t in pc.getTransceivers() if t.receiver.track is track), None)
        mid = tr.mid if tr else None
        entry = {
            "track": track,
            "transceiver": tr,
            "kind": track.kind,
            "frames": 0,
            "samples": 0,
            "ssrcs": {},  # ssrc -> (packets received, packets lost)
            # the participant the description that made this track signalled for its mid
            "participant": remote_msid.get(mid) if mid is not None else None,
        }
        remotes.append(entry)
        log.info("ontrack %s mid %s id %s", track.kind, tr.mid if tr else None, track.id)

        async def consume():
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                except Exception as e:  # a decoder error is a finding, not a crash
                    err(f"recv {track.kind}: {e!r}")
                    return
                entry["frames"] += 1
                if track.kind == "audio":
                    entry["samples"] += getattr(frame, "samples", 0)

        consumers.append(asyncio.ensure_future(consume()))

    # Local offer: aiortc gathers all candidates inside setLocalDescription.
    await pc.setLocalDescription(await pc.createOffer())
    offer_sdp = pc.localDescription.sdp
    if "a=candidate:" not in offer_sdp:
        err("no local ICE candidate gathered")

    ws = await WebSocket.connect(a.url)
    await ws.send(json.dumps({"type": "hello", "token": a.token}))
    joined = asyncio.get_running_loop().create_future()
    closed = asyncio.Event()

    async def handle(m):
        t = m.get("type")
        if t == "capabilities":
            await ws.send(json.dumps({"type": "join", "call": a.call, "e2ee_enabled": False, "offer_sdp": offer_sdp}))
        elif t == "joined":
            report["participant"] = m["participant"]
            report["events"].append({"type": "joined", "participants": [p["participant"] for p in m.get("participants", [])]})
            signalled(m["answer_sdp"])
            await pc.setRemoteDescription(RTCSessionDescription(sdp=m["answer_sdp"], type="answer"))
            report["joined"] = True
            if not joined.done():
                joined.set_result(True)
        elif t == "offer":
            log.info("offer revision %s", m.get("revision"))
            signalled(m["sdp"])
            await pc.setRemoteDescription(RTCSessionDescription(sdp=m["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await ws.send(json.dumps({"type": "answer", "sdp": pc.localDescription.sdp, "revision": m.get("revision")}))
            report["offers_answered"] += 1
        elif t == "participant_joined":
            report["events"].append({"type": t, "participant": (m.get("participant") or {}).get("participant")})
        elif t == "participant_left":
            report["events"].append({"type": t, "participant": m.get("participant"), "reason": m.get("reason")})
        elif t == "error":
            err(f"relay error {m.get('code')}: {m.get('message')}")
        else:
            report["events"].append({"type": t})

    async def reader():
        while True:
            text = await ws.recv()
            if text is None:
                log.info("signalling closed")
                closed.set()
                if not joined.done():
                    joined.set_exception(ConnectionError("signalling closed before joined"))
                return
            try:
                m = json.loads(text)
            except ValueError:
                err("bad JSON from relay")
                continue
            log.info("<- %s", m.get("type"))
            try:
                await handle(m)  # strictly in order: one offer at a time
            except Exception as e:
                err(f"{m.get('type')}: {e!r}")

    async def sample(e):
        rs = receiver_streams(e["transceiver"].receiver)
        if rs is None:
            rs = {}
            try:
                for st in (await e["transceiver"].receiver.getStats()).values():
                    if st.type == "inbound-rtp":
                        rs[st.ssrc] = (st.packetsReceived, st.packetsLost)
            except Exception:
                pass
        for ssrc, v in rs.items():
            e["ssrcs"][ssrc] = v

    async def sample_stats():
        # Sampled while the call runs: a receiver whose m-line the relay turns inactive
        # keeps its last numbers.
        while True:
            await asyncio.sleep(1)
            for e in remotes:
                await sample(e)

    rd = asyncio.ensure_future(reader())
    sampler = asyncio.ensure_future(sample_stats())
    try:
        await asyncio.wait_for(joined, 15)
        stay = a.duration if a.leave_after is None else min(a.leave_after, a.duration)
        try:
            await asyncio.wait_for(closed.wait(), stay)
            err("signalling closed during the call")
        except asyncio.TimeoutError:
            pass
        if a.leave_after is not None and a.leave_after < a.duration and not closed.is_set():
            log.info("leaving")
            await ws.send(json.dumps({"type": "leave"}))
            report["left"] = True
    except Exception as e:
        err(repr(e))

    # Report before tearing down (teardown ends the tracks).
    sampler.cancel()
    for e in remotes:
        tr = e["transceiver"]
        mid = tr.mid if tr else None
        if tr is not None:
            await sample(e)
        # the SSRC this receiver got most packets from
        ssrc, (packets, lost) = max(e["ssrcs"].items(), key=lambda kv: kv[1][0], default=(None, (0, 0)))
        # The receiver (m-line) is the track: attribute it by the msid its m-line was
        # signalled with; only without one by the SSRC it mostly received.
        participant = e["participant"] or ssrc_owner.get(ssrc) or (remote_msid.get(mid) if mid is not None else None)
        item = {
            "participant": participant,
            "kind": e["kind"],
            "mid": mid,
            "ssrc": ssrc,
            "trackId": e["track"].id,
            "packetsReceived": packets,
            "packetsLost": lost,
            "framesDecoded": e["frames"],
        }
        if e["kind"] == "audio":
            item["samplesDecoded"] = e["samples"]
        if len(e["ssrcs"]) > 1:  # packets of other SSRCs reached this receiver
            item["otherSsrcs"] = {str(k): v[0] for k, v in e["ssrcs"].items() if k != ssrc}
        report["inbound"].append(item)
    for tr in pc.getTransceivers():
        if tr.sender.track is not None:
            item = {"kind": tr.kind, "mid": tr.mid, "ssrc": tr.sender._ssrc, "packetsSent": 0}
            try:
                for s in (await tr.sender.getStats()).values():
                    if s.type == "outbound-rtp":
                        item["packetsSent"] = s.packetsSent
            except Exception:
                pass
            report["outbound"].append(item)
    report["connectionState"] = pc.connectionState
    rd.cancel()
    for c in consumers:
        c.cancel()
    await ws.close()
    try:
        await asyncio.wait_for(pc.close(), 5)
    except Exception:
        pass
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    args = parse_args()
    try:
        rep = asyncio.run(main(args))
    except Exception as e:  # still one JSON line
        logging.exception("peer crashed")
        rep = {"name": args.name, "joined": False, "participant": None, "offers_answered": 0, "inbound": [], "errors": [repr(e)]}
    sys.stdout.write(json.dumps(rep) + "\n")
    sys.stdout.flush()
    sys.exit(0 if rep.get("joined") else 1)
