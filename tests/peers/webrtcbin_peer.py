#!/usr/bin/env python3
"""GStreamer webrtcbin as a blindrelay participant.

    python webrtcbin_peer.py --url ws://127.0.0.1:PORT/v1/signal --token JWT --call CALL \
        --duration SECS --name NAME [--leave-after SECS]

Sends videotestsrc ! vp8enc ! rtpvp8pay (PT 96) and audiotestsrc ! opusenc ! rtpopuspay
(PT 111), joins through the relay's signalling protocol, answers the relay's
renegotiation offers, decodes every incoming stream (decodebin ! fakesink, counted with
pad probes) and prints one JSON report on stdout (logs on stderr). Exit status 0 when it
joined.

Needs Debian's python3-gst-1.0, gir1.2-gst-plugins-bad-1.0 and gstreamer1.0-nice; runs in
/opt/blindrelay-venv/bin/python (made with --system-site-packages) or /usr/bin/python3.

Workarounds for webrtcbin (GStreamer 1.22), each marked WORKAROUND below:
- libnice never gathers loopback addresses: the ICE agent is told to use 127.0.0.1.
- On a re-offer that adds m-lines to the BUNDLE group, webrtcbin's answer gives the new
  m-lines their own ICE credentials / fingerprint / setup and then refuses that answer
  itself; and it answers an offered sendonly line with sendonly. The answer is patched
  before set-local-description (credentials copied from the first m-line, recvonly for
  lines offered sendonly, BUNDLE group listing every accepted mid).
"""

import argparse
import asyncio
import ctypes
import difflib
import json
import logging
import os
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import Gst, GstSdp, GstWebRTC  # noqa: E402

from peerlib import (  # noqa: E402
    WebSocket,
    direction,
    join_sections,
    mid_by_ssrc,
    msid_by_mid,
    msid_by_ssrc,
    sections,
)

log = logging.getLogger("webrtcbin-peer")

VIDEO_PT, AUDIO_PT = 96, 111
PIPELINE = f"""
webrtcbin name=wb bundle-policy=max-bundle latency=100
audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audio/x-raw,rate=48000,channels=1
  ! audioconvert ! audioresample ! queue ! opusenc bitrate=32000 frame-size=20
  ! rtpopuspay pt={AUDIO_PT}
  ! application/x-rtp,media=audio,encoding-name=OPUS,payload={AUDIO_PT},clock-rate=48000
  ! wb.
videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1
  ! videoconvert ! queue ! vp8enc deadline=1 cpu-used=8 threads=1 target-bitrate=300000
    keyframe-max-dist=60 error-resilient=partitions
  ! rtpvp8pay pt={VIDEO_PT} picture-id-mode=15-bit
  ! application/x-rtp,media=video,encoding-name=VP8,payload={VIDEO_PT},clock-rate=90000
  ! wb.
"""



def clip_pipeline(clip):
    """What a participant sends in the paced side-by-side bench (bench/src/sidebyside.rs):
    a pre-encoded WebM (VP8 + Opus) played at its own pace (clocksync: webrtcbin's sinks
    do not sync) and payloaded as PIPELINE's live sources are, with no encoder on the
    peer's CPU."""
    return f"""
webrtcbin name=wb bundle-policy=max-bundle latency=100
filesrc location="{clip}" ! matroskademux name=d
d.audio_0 ! queue ! clocksync ! rtpopuspay pt={AUDIO_PT}
  ! application/x-rtp,media=audio,encoding-name=OPUS,payload={AUDIO_PT},clock-rate=48000
  ! wb.
d.video_0 ! queue ! clocksync ! rtpvp8pay pt={VIDEO_PT} picture-id-mode=15-bit mtu=1200
  ! application/x-rtp,media=video,encoding-name=VP8,payload={VIDEO_PT},clock-rate=90000
  ! wb.
"""


def count_only(pipe, pad, entry):
    """Count an incoming stream's RTP packets into entry["packets"] and drop them: no
    decoder, so a bench's peers spend their core on sending and receiving only."""
    sink = Gst.ElementFactory.make("fakesink")
    sink.set_property("sync", False)
    sink.set_property("async", False)
    pipe.add(sink)
    sink.sync_state_with_parent()

    def count_packets(_pad, _info):
        entry["packets"] += 1
        return Gst.PadProbeReturn.OK

    pad.add_probe(Gst.PadProbeType.BUFFER, count_packets)
    return pad.link(sink.get_static_pad("sink")) == Gst.PadLinkReturn.OK


async def print_progress(every, total):
    """One line `{"rx": N}` on stdout every `every` seconds, N = total(): the bench reads
    the packets received so far when it opens and closes its measuring window."""
    while True:
        sys.stdout.write(json.dumps({"rx": total()}) + "\n")
        sys.stdout.flush()
        await asyncio.sleep(every)


async def emit_action(loop, wb, signal, *args):
    """Emit a promise-taking action signal of webrtcbin `wb` and wait for its reply (in a
    thread)."""
    p = Gst.Promise.new()
    wb.emit(signal, *args, p)
    res = await loop.run_in_executor(None, p.wait)
    if res != Gst.PromiseResult.REPLIED:
        raise RuntimeError(f"{signal}: promise {res.value_nick}")
    reply = p.get_reply()
    if reply is not None and reply.has_field("error"):
        raise RuntimeError(f"{signal}: {reply.get_value('error')}")
    return reply


async def apply_description(loop, wb, local, kind, text):
    """Set `wb`'s local or remote description ("offer" or "answer") from SDP text."""
    ok, msg = GstSdp.SDPMessage.new_from_text(text)
    if ok != GstSdp.SDPResult.OK:
        raise RuntimeError(f"SDP does not parse: {ok}")
    t = {"offer": GstWebRTC.WebRTCSDPType.OFFER, "answer": GstWebRTC.WebRTCSDPType.ANSWER}[kind]
    desc = GstWebRTC.WebRTCSessionDescription.new(t, msg)
    await emit_action(loop, wb, "set-local-description" if local else "set-remote-description", desc)
    # webrtcbin replies to a refused description without an error field in some
    # versions: check that it took.
    cur = wb.get_property("local-description" if local else "remote-description")
    if cur is None or cur.type != t:
        raise RuntimeError(f"webrtcbin did not apply the {'local' if local else 'remote'} {kind}")


CREDENTIALS = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:")


def patch_answer(offer_sdp, answer_sdp):
    """WORKAROUND (see module doc): make webrtcbin's answer to a re-offer acceptable."""
    _, offered = sections(offer_sdp)
    session, answered = sections(answer_sdp)
    first = answered[0]
    creds = [l for l in first if l.startswith(CREDENTIALS)]
    mids = []
    for i, m in enumerate(answered):
        rejected = m[0].split()[1] == "0"
        if i > 0 and not rejected and sorted(l for l in m if l.startswith(CREDENTIALS)) != sorted(creds):
            rest = [l for l in m if not l.startswith(CREDENTIALS)]
            at = next((k + 1 for k, l in enumerate(rest) if l.startswith("c=")), 1)
            m[:] = rest[:at] + creds + rest[at:]
        if i < len(offered):
            want = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}.get(
                direction(offered[i])
            )
            if want and direction(m) != want:
                m[:] = [l for l in m if l not in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")]
                m.append("a=" + want)
        mid = next((l[6:] for l in m if l.startswith("a=mid:")), None)
        if mid is not None and not rejected:
            mids.append(mid)
    group = "a=group:BUNDLE " + " ".join(mids)
    if mids and group not in session:
        session = [l for l in session if not l.startswith("a=group:BUNDLE")] + [group]
    return join_sections(session, answered)


def ice_agent(wb):
    """webrtcbin's ICE agent. WORKAROUND (GStreamer 1.22 + PyGObject 3.42): the agent is a
    GstObject webrtcbin never sinks, so the Python wrapper takes webrtcbin's only reference
    and frees the agent when it goes away (webrtcbin then crashes). Give it one more."""
    agent = wb.get_property("ice-agent")
    gobject = ctypes.CDLL("libgobject-2.0.so.0")
    gobject.g_object_ref.restype = ctypes.c_void_p
    gobject.g_object_ref.argtypes = [ctypes.c_void_p]
    ptr = hash(agent) & (2**64 - 1)  # PyGObject hashes a wrapper by its C pointer
    if f"at {ptr:#x})" not in repr(agent):
        raise RuntimeError(f"cannot find the ICE agent's pointer in {agent!r}")
    gobject.g_object_ref(ptr)
    return agent


class Peer:
    def __init__(self, args, loop):
        self.a = args
        self.loop = loop
        self.report = {
            "name": args.name,
            "joined": False,
            "participant": None,
            "offers_answered": 0,
            "inbound": [],
            "outbound": [],
            "connectionState": None,
            "events": [],
            "errors": [],
        }
        self.streams = []  # one per webrtcbin src pad
        self.remote_sdp = ""
        # Every ssrc -> msid stream / mid the relay ever signalled (kept after a sender
        # leaves and its m-line turns inactive).
        self.ssrc_owner, self.ssrc_mid = {}, {}
        self.negotiation_needed = asyncio.Event()
        self.pipe = Gst.parse_launch(clip_pipeline(args.clip) if args.clip else PIPELINE)
        self.wb = self.pipe.get_by_name("wb")
        # WORKAROUND: libnice skips loopback; the relay is on 127.0.0.1 (or, with
        # --local-ip, reached over an interface of that address: libnice then gathers
        # only the addresses it is given).
        agent = ice_agent(self.wb)
        if not agent.emit("add-local-ip-address", args.local_ip):
            self.err(f"ice agent refused {args.local_ip}")
        self.wb.connect("on-negotiation-needed", lambda *_: loop.call_soon_threadsafe(self.negotiation_needed.set))
        self.wb.connect("pad-added", self.on_pad_added)
        self.wb.connect("notify::connection-state", self.on_state)
        for t in self.transceivers():
            t.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDRECV)

    def err(self, msg):
        log.error("%s", msg)
        self.report["errors"].append(str(msg))

    def transceivers(self):
        out, i = [], 0
        while True:
            t = self.wb.emit("get-transceiver", i)
            if t is None:
                return out
            out.append(t)
            i += 1

    def on_state(self, wb, _pspec):
        s = wb.get_property("connection-state").value_nick
        self.report["connectionState"] = s
        log.info("connectionState %s", s)
        if s == "failed":
            self.loop.call_soon_threadsafe(self.err, "peer connection failed")

    # --- incoming media (streaming threads) ---------------------------------------------
    def on_pad_added(self, wb, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        st = caps.get_structure(0)
        kind = st.get_string("media")
        ok, ssrc = st.get_uint("ssrc")
        t = pad.get_property("transceiver")
        mid = t.get_property("mid") if t is not None else None
        entry = {"kind": kind, "mid": mid, "ssrc": ssrc if ok else None, "packets": 0, "frames": 0, "pad": pad.get_name()}
        self.streams.append(entry)
        # Under BUNDLE, webrtcbin 1.22 may hand the pad the first transceiver whatever its
        # kind: trust the pad's mid only when the kinds agree (the report prefers the mid
        # whose m-line lists this SSRC).
        if t is not None and t.get_property("kind").value_nick != kind:
            entry["mid"] = None
        log.info("incoming %s pad %s mid %s ssrc %s caps %s", kind, pad.get_name(), entry["mid"], entry["ssrc"], caps.to_string())
        if self.a.count_only:
            if not count_only(self.pipe, pad, entry):
                self.loop.call_soon_threadsafe(self.err, f"cannot link incoming {kind} to a sink")
            return

        def count_packets(_pad, _info):
            entry["packets"] += 1
            return Gst.PadProbeReturn.OK

        pad.add_probe(Gst.PadProbeType.BUFFER, count_packets)
        dec = Gst.ElementFactory.make("decodebin")

        def on_decoded_pad(_dec, dpad):
            q = Gst.ElementFactory.make("queue")
            sink = Gst.ElementFactory.make("fakesink")
            sink.set_property("sync", False)
            sink.set_property("async", False)
            self.pipe.add(q)
            self.pipe.add(sink)
            q.link(sink)
            q.sync_state_with_parent()
            sink.sync_state_with_parent()

            def count_frames(_pad, _info):
                entry["frames"] += 1
                return Gst.PadProbeReturn.OK

            dpad.add_probe(Gst.PadProbeType.BUFFER, count_frames)
            dpad.link(q.get_static_pad("sink"))

        dec.connect("pad-added", on_decoded_pad)
        self.pipe.add(dec)
        dec.sync_state_with_parent()
        if pad.link(dec.get_static_pad("sink")) != Gst.PadLinkReturn.OK:
            self.loop.call_soon_threadsafe(self.err, f"cannot link incoming {kind} to decodebin")

    # --- promises --------------------------------------------------------------------------
    async def action(self, signal, *args):
        return await emit_action(self.loop, self.wb, signal, *args)

    def signalled(self, sdp):
        self.remote_sdp = sdp
        self.ssrc_owner.update(msid_by_ssrc(sdp))
        self.ssrc_mid.update(mid_by_ssrc(sdp))

    async def set_description(self, local, kind, text):
        await apply_description(self.loop, self.wb, local, kind, text)

    async def wait_for(self, pred, timeout, what):
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                raise TimeoutError(what)
            await asyncio.sleep(0.02)

    def poll_bus(self):
        bus = self.pipe.get_bus()
        while True:
            m = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.WARNING)
            if m is None:
                return
            if m.type == Gst.MessageType.ERROR:
                e, dbg = m.parse_error()
                self.err(f"gstreamer error from {m.src.get_name()}: {e.message}")
            else:
                w, dbg = m.parse_warning()
                log.warning("gstreamer warning from %s: %s", m.src.get_name(), w.message)

    # --- the call --------------------------------------------------------------------------
    async def run(self):
        a = self.a
        self.pipe.set_state(Gst.State.PLAYING)
        try:
            await asyncio.wait_for(self.negotiation_needed.wait(), 10)
        except asyncio.TimeoutError:
            self.err("webrtcbin never asked for negotiation")
        reply = await self.action("create-offer", None)
        offer = reply.get_value("offer")
        await self.set_description(True, "offer", offer.sdp.as_text())
        await self.wait_for(
            lambda: self.wb.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE,
            10,
            "ICE gathering did not complete",
        )
        offer_sdp = self.wb.get_property("local-description").sdp.as_text()
        log.info("local offer:\n%s", offer_sdp)
        if "a=candidate:" not in offer_sdp:
            self.err("no local ICE candidate gathered")
        _, ms = sections(offer_sdp)
        for m in ms:
            ssrc = next((int(l[7:].split()[0]) for l in m if l.startswith("a=ssrc:")), None)
            self.report["outbound"].append({"kind": m[0][2:].split()[0], "ssrc": ssrc})

        ws = await WebSocket.connect(a.url)
        await ws.send(json.dumps({"type": "hello", "token": a.token}))
        joined = self.loop.create_future()
        closed = asyncio.Event()

        async def handle(m):
            t = m.get("type")
            if t == "capabilities":
                await ws.send(json.dumps({"type": "join", "call": a.call, "e2ee_enabled": False, "offer_sdp": offer_sdp}))
            elif t == "joined":
                self.report["participant"] = m["participant"]
                self.report["events"].append({"type": "joined", "participants": [p["participant"] for p in m.get("participants", [])]})
                self.signalled(m["answer_sdp"])
                log.info("relay answer:\n%s", m["answer_sdp"])
                await self.set_description(False, "answer", m["answer_sdp"])
                self.report["joined"] = True
                if not joined.done():
                    joined.set_result(True)
            elif t == "offer":
                log.info("offer revision %s", m.get("revision"))
                self.signalled(m["sdp"])
                log.info("relay offer:\n%s", m["sdp"])
                await self.set_description(False, "offer", m["sdp"])
                # Diagnostic: widen the window between applying an offer and answering it
                # (media for the offer's new tracks arriving in it kills webrtcbin 1.22's
                # receive path unless the relay holds it back until the answer).
                delay = float(os.environ.get("WEBRTCBIN_PEER_ANSWER_DELAY", "0") or 0)
                if delay > 0:
                    await asyncio.sleep(delay)
                reply = await self.action("create-answer", None)
                raw = reply.get_value("answer").sdp.as_text()
                patched = patch_answer(m["sdp"], raw)
                if os.environ.get("WEBRTCBIN_PEER_NO_PATCH"):  # to check whether it is still needed
                    patched = raw
                if patched != raw:
                    diff = difflib.unified_diff(raw.splitlines(), patched.splitlines(), "webrtcbin", "patched", n=0, lineterm="")
                    log.info("patched webrtcbin's answer (re-offer workaround):\n%s", "\n".join(diff))
                await self.set_description(True, "answer", patched)
                local = self.wb.get_property("local-description").sdp.as_text()
                log.info("local answer:\n%s", local)
                await ws.send(json.dumps({"type": "answer", "sdp": local, "revision": m.get("revision")}))
                self.report["offers_answered"] += 1
            elif t == "participant_joined":
                self.report["events"].append({"type": t, "participant": (m.get("participant") or {}).get("participant")})
            elif t == "participant_left":
                self.report["events"].append({"type": t, "participant": m.get("participant"), "reason": m.get("reason")})
            elif t == "error":
                self.err(f"relay error {m.get('code')}: {m.get('message')}")
            else:
                self.report["events"].append({"type": t})

        async def reader():
            while True:
                text = await ws.recv()
                if text is None:
                    closed.set()
                    if not joined.done():
                        joined.set_exception(ConnectionError("signalling closed before joined"))
                    return
                try:
                    m = json.loads(text)
                except ValueError:
                    self.err("bad JSON from relay")
                    continue
                log.info("<- %s", m.get("type"))
                try:
                    await handle(m)
                except Exception as e:
                    self.err(f"{m.get('type')}: {e}")

        async def bus():
            while True:
                self.poll_bus()
                await asyncio.sleep(0.25)

        rd = asyncio.ensure_future(reader())
        bw = asyncio.ensure_future(bus())
        tasks = [rd, bw]
        if a.progress > 0:
            tasks.append(asyncio.ensure_future(print_progress(a.progress, lambda: sum(s["packets"] for s in self.streams))))
        try:
            await asyncio.wait_for(joined, 15)
            stay = a.duration if a.leave_after is None else min(a.leave_after, a.duration)
            try:
                await asyncio.wait_for(closed.wait(), stay)
                self.err("signalling closed during the call")
            except asyncio.TimeoutError:
                pass
            if a.leave_after is not None and a.leave_after < a.duration and not closed.is_set():
                await ws.send(json.dumps({"type": "leave"}))
                self.report["left"] = True
        except Exception as e:
            self.err(repr(e))
        self.poll_bus()

        by_mid = msid_by_mid(self.remote_sdp)
        for s in self.streams:
            s["mid"] = self.ssrc_mid.get(s["ssrc"], s["mid"])
            participant = self.ssrc_owner.get(s["ssrc"]) or (by_mid.get(s["mid"]) if s["mid"] is not None else None)
            self.report["inbound"].append(
                {
                    "participant": participant,
                    "kind": s["kind"],
                    "mid": s["mid"],
                    "ssrc": s["ssrc"],
                    "pad": s["pad"],
                    "packetsReceived": s["packets"],
                    "framesDecoded": s["frames"],
                }
            )
        self.report["connectionState"] = self.wb.get_property("connection-state").value_nick
        for t in tasks:
            t.cancel()
        await ws.close()
        self.pipe.set_state(Gst.State.NULL)
        return self.report


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--call", required=True)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--name", default="webrtcbin")
    ap.add_argument("--leave-after", type=float, default=None)
    ap.add_argument("--local-ip", default="127.0.0.1", help="the address ICE gathers on")
    ap.add_argument("--clip", default=None, help="send this WebM (VP8 + Opus) instead of live test sources")
    ap.add_argument("--count-only", action="store_true", help="count incoming packets, decode nothing")
    ap.add_argument("--progress", type=float, default=0, help='print {"rx": packets} every this many seconds')
    return ap.parse_args()


async def main(args):
    return await Peer(args, asyncio.get_running_loop()).run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args()
    Gst.init(None)
    try:
        rep = asyncio.run(main(args))
    except Exception as e:  # still one JSON line
        logging.exception("peer crashed")
        rep = {"name": args.name, "joined": False, "participant": None, "offers_answered": 0, "inbound": [], "errors": [repr(e)]}
    sys.stdout.write(json.dumps(rep) + "\n")
    sys.stdout.flush()
    sys.exit(0 if rep.get("joined") else 1)
