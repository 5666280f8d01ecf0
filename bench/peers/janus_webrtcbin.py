#!/usr/bin/env python3
"""GStreamer webrtcbin as a Janus 1.1.2 VideoRoom participant, for blindrelay-bench's
paced side-by-side (bench/src/sidebyside.rs): the same sender and counting receiver as
tests/peers/webrtcbin_peer.py runs against the relay, so the two SFUs forward the same
load.

    python janus_webrtcbin.py --ws ws://IP:8188 --room N --name NAME --clip FILE.webm \
        --duration SECS [--progress SECS]

Publishes the clip (VP8 + Opus) on one peer connection and subscribes to every other
publisher of the room on one peer connection each (Janus's model), counting their RTP
packets without decoding. Prints {"rx": N} every --progress seconds and then one JSON
report on stdout (logs on stderr). Exit status 0 when it published.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "peers"))

import gi  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import Gst, GstWebRTC  # noqa: E402

from peerlib import WebSocket  # noqa: E402
from webrtcbin_peer import (  # noqa: E402
    apply_description,
    clip_pipeline,
    count_only,
    emit_action,
    ice_agent,
    patch_answer,
    print_progress,
)

log = logging.getLogger("janus-webrtcbin")


class Conn:
    """One webrtcbin in a pipeline of its own, with promise helpers."""

    def __init__(self, loop, pipe, name):
        self.loop, self.pipe, self.name = loop, pipe, name
        self.wb = pipe.get_by_name("wb")
        # WORKAROUND (webrtcbin_peer.ice_agent): hold a reference on the ICE agent, or
        # webrtcbin crashes once Python drops it.
        self.agent = ice_agent(self.wb)
        self.negotiation_needed = asyncio.Event()
        self.wb.connect("on-negotiation-needed", lambda *_: loop.call_soon_threadsafe(self.negotiation_needed.set))
        self.streams = []
        self.wb.connect("pad-added", self.on_pad_added)

    def on_pad_added(self, _wb, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        entry = {"packets": 0, "pad": pad.get_name()}
        self.streams.append(entry)
        if not count_only(self.pipe, pad, entry):
            log.error("%s: cannot link %s to a sink", self.name, pad.get_name())

    async def action(self, signal, *args):
        return await emit_action(self.loop, self.wb, signal, *args)

    async def set_description(self, local, kind, text):
        await apply_description(self.loop, self.wb, local, kind, text)

    async def gathered(self):
        end = time.monotonic() + 10
        while self.wb.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            if time.monotonic() > end:
                raise TimeoutError(f"{self.name}: ICE gathering did not complete")
            await asyncio.sleep(0.02)
        return self.wb.get_property("local-description").sdp.as_text()


class JanusError(RuntimeError):
    """An error reply, with Janus's (or the plugin's) error code."""

    def __init__(self, code, reason):
        super().__init__(f"Janus error {code}: {reason}")
        self.code = code


# The VideoRoom's "room already exists".
ROOM_EXISTS = 427


class Janus:
    """A Janus session over its WebSocket transport: requests matched to replies by
    transaction, plugin events handed to the handle's callback."""

    def __init__(self, ws):
        self.ws, self.session, self.txn = ws, None, 0
        self.waiting, self.handlers = {}, {}

    async def send(self, body):
        """A request whose only reply is an ack (a keepalive): sent, not awaited."""
        self.txn += 1
        body = dict(body, transaction=f"t{self.txn}", session_id=self.session)
        await self.ws.send(json.dumps(body))

    async def request(self, body):
        self.txn += 1
        t = f"t{self.txn}"
        body = dict(body, transaction=t)
        if self.session is not None:
            body["session_id"] = self.session
        fut = asyncio.get_running_loop().create_future()
        self.waiting[t] = fut
        await self.ws.send(json.dumps(body))
        return await asyncio.wait_for(fut, 15)

    async def message(self, handle, body, jsep=None):
        m = {"janus": "message", "handle_id": handle, "body": body}
        if jsep:
            m["jsep"] = jsep
        return await self.request(m)

    async def attach(self):
        return (await self.request({"janus": "attach", "plugin": "janus.plugin.videoroom"}))["data"]["id"]

    async def reader(self):
        while True:
            text = await self.ws.recv()
            if text is None:
                log.error("Janus closed the connection")
                for f in self.waiting.values():
                    if not f.done():
                        f.set_exception(ConnectionError("Janus closed the connection"))
                return
            try:
                self.handle(json.loads(text))
            except Exception:  # one bad message must not stop the reader
                log.exception("cannot handle a message from Janus: %s", text[:200])

    def handle(self, m):
        if m.get("janus") == "ack":
            return
        f = self.waiting.pop(m.get("transaction"), None)
        if f is not None and not f.done():
            data = (m.get("plugindata") or {}).get("data") or {}
            if m.get("janus") == "error":
                e = m.get("error") or {}
                f.set_exception(JanusError(e.get("code"), e.get("reason")))
            elif "error" in data:
                f.set_exception(JanusError(data.get("error_code"), data.get("error")))
            else:
                f.set_result(m)
            return
        if m.get("janus") in ("hangup", "detached", "timeout"):
            log.error("Janus: %s", json.dumps(m)[:300])
        h = self.handlers.get(m.get("sender"))
        if h is not None:
            h(m)

async def run(a):
    loop = asyncio.get_running_loop()
    report = {"name": a.name, "joined": False, "subscribed": [], "errors": []}
    ws = await WebSocket.connect(a.ws, protocol="janus-protocol")
    j = Janus(ws)
    rd = asyncio.ensure_future(j.reader())
    j.session = (await j.request({"janus": "create"}))["data"]["id"]
    handle = await j.attach()
    # The run's room, made by whichever participant comes first.
    try:
        await j.message(handle, {"request": "create", "room": a.room, "publishers": 6, "bitrate": 0,
                                 "audiocodec": "opus", "videocodec": "vp8", "notify_joining": True})
    except JanusError as e:
        if e.code != ROOM_EXISTS:  # else made by the other participant
            raise
    subs = {}

    async def subscribe(feed):
        if feed in subs:
            return
        pipe = Gst.Pipeline.new(f"sub-{feed}")
        wb = Gst.ElementFactory.make("webrtcbin", "wb")
        wb.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        wb.set_property("latency", 100)
        pipe.add(wb)
        c = Conn(loop, pipe, f"sub-{feed}")
        subs[feed] = c
        h = await j.attach()
        r = await j.message(h, {"request": "join", "ptype": "subscriber", "room": a.room, "streams": [{"feed": feed}]})
        pipe.set_state(Gst.State.PLAYING)
        offer = r["jsep"]["sdp"]
        await c.set_description(False, "offer", offer)
        reply = await c.action("create-answer", None)
        answer = reply.get_value("answer").sdp.as_text()
        # WORKAROUND (webrtcbin 1.22): it answers an offered sendonly line with sendonly.
        await c.set_description(True, "answer", patch_answer(offer, answer))
        local = await c.gathered()
        await j.message(h, {"request": "start"}, {"type": "answer", "sdp": local, "trickle": False})
        report["subscribed"].append(feed)

    def subscribed(f):
        # Logged as well as reported: the bench stops peers with a signal, and reads
        # their logs when media never came.
        if not f.cancelled() and f.exception() is not None:
            log.error("subscribing failed: %r", f.exception())
            report["errors"].append(repr(f.exception()))

    def publishers(lst):
        for p in lst or []:
            asyncio.ensure_future(subscribe(p["id"])).add_done_callback(subscribed)

    j.handlers[handle] = lambda m: publishers((m.get("plugindata") or {}).get("data", {}).get("publishers"))
    joined = await j.message(handle, {"request": "join", "ptype": "publisher", "room": a.room, "display": a.name})
    pub_pipe = Gst.parse_launch(clip_pipeline(a.clip))
    pub = Conn(loop, pub_pipe, "pub")
    pub_pipe.set_state(Gst.State.PLAYING)
    await asyncio.wait_for(pub.negotiation_needed.wait(), 10)
    for i in range(2):
        t = pub.wb.emit("get-transceiver", i)
        if t is not None:
            t.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
    # The reply owns the description: keep it while the description is read.
    reply = await pub.action("create-offer", None)
    await pub.set_description(True, "offer", reply.get_value("offer").sdp.as_text())
    local = await pub.gathered()
    r = await j.message(handle, {"request": "publish", "audio": True, "video": True},
                        {"type": "offer", "sdp": local, "trickle": False})
    await pub.set_description(False, "answer", r["jsep"]["sdp"])
    report["joined"] = True
    publishers(joined["plugindata"]["data"].get("publishers"))

    async def keepalive():
        # Janus answers a keepalive with an ack only, so it is not awaited; without
        # them Janus ends the session after its session_timeout (60 s).
        while True:
            await asyncio.sleep(20)
            await j.send({"janus": "keepalive"})

    async def watch():
        # GStreamer's errors and each connection's state, into the log.
        states = {}
        while True:
            for c in [pub, *subs.values()]:
                st = c.wb.get_property("connection-state").value_nick
                if states.get(c.name) != st:
                    states[c.name] = st
                    (log.error if st == "failed" else log.info)("%s: connection %s", c.name, st)
                bus = c.pipe.get_bus()
                while (msg := bus.pop_filtered(Gst.MessageType.ERROR)) is not None:
                    log.error("%s: gstreamer error from %s: %s", c.name, msg.src.get_name(), msg.parse_error()[0].message)
            await asyncio.sleep(0.25)

    tasks = [rd, asyncio.ensure_future(keepalive()), asyncio.ensure_future(watch())]
    if a.progress > 0:
        tasks.append(asyncio.ensure_future(print_progress(
            a.progress, lambda: sum(s["packets"] for c in subs.values() for s in c.streams))))
    await asyncio.sleep(a.duration)
    report["packetsReceived"] = sum(s["packets"] for c in subs.values() for s in c.streams)
    for t in tasks:
        t.cancel()
    for c in [pub, *subs.values()]:
        c.pipe.set_state(Gst.State.NULL)
    await ws.close()
    return report


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--ws", required=True)
    ap.add_argument("--room", type=int, required=True)
    ap.add_argument("--name", default="janus-webrtcbin")
    ap.add_argument("--clip", required=True)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--progress", type=float, default=0)
    a = ap.parse_args()
    Gst.init(None)
    try:
        rep = asyncio.run(run(a))
    except Exception as e:  # still one JSON line
        logging.exception("peer crashed")
        rep = {"name": a.name, "joined": False, "errors": [repr(e)]}
    sys.stdout.write(json.dumps(rep) + "\n")
    sys.stdout.flush()
    sys.exit(0 if rep.get("joined") else 1)


if __name__ == "__main__":
    main()
