#!/usr/bin/env node
// Drives the relay's own web client (served at / by the relay) in headless Chromium.
//
//   node web.mjs --page URL [--page URL ...] [--until joined|error|capabilities|media|keyed|group]
//       [--min-video-frames N] [--min-encrypted N] [--min-decrypted N] [--timeout SECS]
//       [--connect] [--screenshot DIR] [--click-lock] [--chat TEXT]
//       [--click-feature NAME] [--min-participants N] [--wait-stdin] [--min-members N]
//       [--answer-downgrade yes|no|click-yes|click-no] [--then COND] [--min-sent N]
//       [--hold SECS] [--media-via N=HOST:PORT] [--max-resolution N=HEIGHT|none]
//
// --hold SECS (a step, like --then): stay in the call that long, then record every page's
// state; with the state recorded before it, the report holds what changed over SECS.
// --max-resolution N=HEIGHT (a step): page N asks the relay for pictures at most HEIGHT
// tall of every remote video track (`none`: no limit), as window.blindrelay.maxResolution.
// --media-via N=HOST:PORT: page N sends its media to HOST:PORT instead of the relay's
// media address (a lossy path in front of the relay, for example): the host candidates
// in every SDP the relay sends that page are rewritten on the page's signalling socket.
// --media-via N=http://HOST:PORT/via: the same, but each distinct host candidate gets a
// path of its own, from `GET URL?to=IP:PORT`, which answers the address to use instead (an
// SFU with a port per peer connection, such as Janus, needs one path per port). Every
// WebSocket the page opens is rewritten, whatever its URL, and the page's own candidates
// in what it sends are made unreachable.
//
// --connect presses "Check settings" on each page (for URLs without autojoin=1).
// --click-feature NAME presses that call-feature button once the page has joined.
// --wait-stdin: once the condition is met, print "ready" on stderr and keep the pages in
// the call until a line arrives on stdin (the test releases them when it has seen what it
// waits for, e.g. a bot's packets in the relay's metrics).
// --answer-downgrade: once the condition is met (and released, with --wait-stdin), answer
// each page's downgrade question: yes/no through window.blindrelay.answerDowngrade,
// click-yes/click-no by clicking the question's buttons as a person does. With --screenshot,
// each page is first photographed with the question (question-N.png); the report's
// `question` holds what the page showed then. --then COND: after that, wait until every
// page meets COND too (the same conditions, plus `moved`: media again after a node went
// away, `settled`: an MLS member holding only its
// current epoch's keys, `left`, `sending` with --min-sent N:
// packets sent, and `downgrade_question`).
//
// Every page is opened in one browser (one context each). The driver polls
// window.blindrelay.state() until every page meets the --until condition or the timeout
// passes, then (for media) samples each remote video on a canvas. stdout gets one JSON
// line: [{url, ok, state, samples, toggle, lock, errors}] (ok = the condition was met).
// Exit status 0 when every page met it.
import { chromium } from 'playwright-core';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const a = { pages: [], steps: [], until: 'media', minVideoFrames: 100, minEncrypted: 0, minDecrypted: 0, minSent: 0, timeout: 60, chat: null };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const v = argv[i + 1];
  switch (argv[i]) {
    case '--page': a.pages.push(v); i++; break;
    case '--until': a.until = v; i++; break;
    case '--min-video-frames': a.minVideoFrames = Number(v); i++; break;
    case '--min-encrypted': a.minEncrypted = Number(v); i++; break;
    case '--timeout': a.timeout = Number(v); i++; break;
    case '--min-decrypted': a.minDecrypted = Number(v); i++; break;
    case '--connect': a.connect = true; break;
    case '--click-feature': a.clickFeature = v; i++; break;
    case '--min-participants': a.minParticipants = Number(v); i++; break;
    case '--min-members': a.minMembers = Number(v); i++; break;
    case '--wait-stdin': a.waitStdin = true; break;
    case '--answer-downgrade': a.answerDowngrade = v; i++; break;
    case '--then': a.steps.push({ then: v }); i++; break;
    case '--leave-page': a.steps.push({ leave: Number(v) }); i++; break;
    case '--late-page': a.steps.push({ open: v }); i++; break;
    case '--min-sent': a.minSent = Number(v); i++; break;
    case '--hold': a.steps.push({ hold: Number(v) }); i++; break;
    case '--max-resolution': {
      const [n, h] = v.split('=');
      a.steps.push({ maxResolution: { page: Number(n), height: h === 'none' ? null : Number(h) } });
      i++;
      break;
    }
    case '--media-via': {
      const [n, via] = v.split('=');
      (a.mediaVia ||= new Map()).set(Number(n), via);
      i++;
      break;
    }
    case '--screenshot': a.screenshot = v; i++; break;
    case '--click-lock': a.clickLock = true; break;
    case '--chat': a.chat = v; i++; break;
    case '--chromium': a.chromium = v; i++; break;
    default: throw new Error(`unknown argument ${argv[i]}`);
  }
}
if (!a.pages.length) throw new Error('--page is required');
const executablePath = a.chromium || '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  console.error(`${executablePath} not found: run scripts/install-test-deps.sh`);
  process.exit(3);
}

/** Whether a page's state meets the condition `cond`. */
// Every page's participant id when the first condition was met (see `moved`).
const firstIds = new Set();

function met(s, condition = a.until) {
  if (!s) return false;
  const [cond, arg] = condition.split(':');
  switch (cond) {
    case 'error': return !!s.error;
    case 'capabilities': return s.e2ee_option !== null;
    case 'joined': return s.joined;
    case 'participants': return s.joined && s.participants.length >= (a.minParticipants || 1);
    case 'keyed': return s.joined && s.e2ee && s.frames_encrypted >= a.minEncrypted && s.frames_decrypted >= a.minDecrypted;
    case 'media': {
      if (!s.joined) return false;
      if (s.call_mode === 'e2ee' && !s.e2ee) return false;
      if (s.frames_encrypted < a.minEncrypted) return false;
      const video = s.inbound.filter((i) => i.kind === 'video' && i.participant);
      const remotes = s.participants.length;
      return remotes > 0 && s.participants.every((p) => video.some((i) => i.participant === p && i.framesDecoded > a.minVideoFrames));
    }
    // A group call (scheme mls): at least --min-members in the group, and at least
    // --min-decrypted frames opened from each other member the group names.
    case 'group': {
      if (!s.joined || !s.e2ee || s.e2ee_scheme !== 'mls') return false;
      const n = (s.group_members || []).length;
      if (arg !== undefined ? n !== Number(arg) : n < (a.minMembers || 2)) return false;
      if (s.frames_encrypted < a.minEncrypted) return false;
      const others = (s.group_participants || []).filter((p) => p !== s.participant);
      return others.every((p) => (s.frames_decrypted_from[p] || 0) >= a.minDecrypted);
    }
    // A group member that holds keys for its current epoch only: the previous epochs'
    // grace has ended, so frames sealed in them no longer open.
    case 'settled': return s.joined && s.e2ee_scheme === 'mls' && s.previous_epoch_keys === 0;
    case 'downgrade_question': return !!s.pending_downgrade;
    // Video decoded from at least N participants (a late joiner's first pictures).
    case 'decoding': return s.joined && Object.keys(s.first_video_ms || {}).length >= Number(arg || 1);
    // After a node went away (a cluster): media again, and this page either joined again
    // (through another node) or sees only participants who did.
    case 'moved': return met(s, 'media') && (s.reconnects >= 1 || s.participants.every((p) => !firstIds.has(p)));
    case 'left': return !s.joined && !!s.left_reason;
    case 'sending': return s.joined && !s.pending_downgrade && (s.outbound || []).reduce((n, o) => n + o.packetsSent, 0) >= a.minSent;
    default: throw new Error(`unknown condition ${cond}`);
  }
}

const browser = await chromium.launch({
  executablePath,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu',
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection',
    // Remote audio plays (and so is decoded and counted) without a click.
    '--autoplay-policy=no-user-gesture-required',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
console.error(`[web] chromium ${browser.version()}: ${a.pages.length} page(s), until ${a.until}`);
const results = [];
let allOk = true;
try {
  const pages = [];
  const open = async (n, url) => {
    const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    await context.grantPermissions(['camera', 'microphone']).catch(() => {});
    const page = await context.newPage();
    const errors = [];
    const via = a.mediaVia && a.mediaVia.get(n);
    if (via) {
      // Every host candidate the SFU names (in joined's answer and in its offers).
      const candidate = /(a=candidate:\S+ \d+ udp \d+ )(\S+) (\d+)( typ host)/g;
      let rewrite;
      if (via.startsWith('http')) {
        const paths = new Map();
        rewrite = async (text) => {
          for (const m of text.matchAll(candidate)) {
            const to = `${m[2]}:${m[3]}`;
            if (!paths.has(to)) paths.set(to, (await (await fetch(`${via}?to=${to}`)).text()).trim());
          }
          return text.replace(candidate, (_, pre, ip, port, post) => {
            const [h, p] = paths.get(`${ip}:${port}`).split(':');
            return `${pre}${h} ${p}${post}`;
          });
        };
      } else {
        const [host, port] = via.split(':');
        rewrite = async (text) => text.replace(candidate, `$1${host} ${port}$4`);
      }
      await page.routeWebSocket(via.startsWith('http') ? () => true : /\/v1\/signal/, (ws) => {
        const server = ws.connectToServer();
        // In order: a message waits for the paths of those before it.
        let order = Promise.resolve();
        server.onMessage((m) => {
          order = order.then(async () => ws.send(typeof m === 'string' ? await rewrite(m) : m))
            .catch((e) => console.error(`[page ${n}] media-via: ${e.message}`));
        });
        // A full-ICE SFU (Janus) would also check the page's own candidates and find the
        // direct way round the path: in the page's SDP each candidate is swapped for one
        // no route leads to (TEST-NET-1), so the SFU learns the page's address only from
        // checks that crossed the path (and it still has a candidate, which Janus needs).
        const dynamic = via.startsWith('http');
        let port = 9;
        const unroutable = (m) => m.replace(/(a=candidate:\S+ \d+ udp \d+ )\S+ \d+( typ host)/g, (_, pre, post) => `${pre}192.0.2.254 ${port++}${post}`);
        ws.onMessage((m) => server.send(dynamic && typeof m === 'string' ? unroutable(m) : m));
      });
    }
    page.on('console', (m) => console.error(`[page ${n}] ${m.text()}`));
    page.on('pageerror', (e) => { errors.push(e.message); console.error(`[page ${n}] pageerror ${e.message}`); });
    await page.goto(url);
    if (a.connect) await page.click('#connect');
    pages.push({ n, url, page, errors });
  };
  for (const [n, url] of a.pages.entries()) await open(n, url);
  const deadline = Date.now() + a.timeout * 1000;
  const states = new Map();
  const poll = async () => {
    for (const p of pages) states.set(p.n, await p.page.evaluate(() => window.blindrelay.state()).catch((e) => { p.errors.push(String(e.message)); return null; }));
  };
  await poll();
  const clicked = new Set();
  while (Date.now() < deadline && !pages.every((p) => met(states.get(p.n)))) {
    if (a.clickFeature) {
      for (const p of pages) {
        if (!clicked.has(p.n) && states.get(p.n)?.joined) {
          clicked.add(p.n);
          await p.page.click(`#feature-buttons button[data-feature="${a.clickFeature}"]`).catch((e) => p.errors.push(`click: ${e.message}`));
        }
      }
    }
    await new Promise((r) => setTimeout(r, 250));
    await poll();
  }
  if (a.waitStdin) {
    console.error('ready');
    await new Promise((resolve) => {
      const t = setTimeout(resolve, a.timeout * 1000);
      process.stdin.once('data', () => { clearTimeout(t); resolve(); });
    });
    process.stdin.pause();
  }
  const questions = new Map();
  let firstOk = pages.every((p) => met(states.get(p.n)));
  for (const p of pages) firstIds.add(states.get(p.n)?.participant);
  if (a.answerDowngrade) {
    const yes = a.answerDowngrade.endsWith('yes');
    for (const p of pages) {
      const q = await p.page.evaluate(() => {
        const box = document.getElementById('downgrade');
        const visible = !!box && !box.hidden && !!(box.offsetWidth || box.offsetHeight);
        return {
          visible,
          text: visible ? document.getElementById('downgrade-text').textContent : null,
          buttons: visible ? [...box.querySelectorAll('button')].map((b) => b.textContent) : [],
          chat_disabled: document.getElementById('chat-input').disabled && document.getElementById('chat-send').disabled,
          state: window.blindrelay.state(),
        };
      }).catch((e) => { p.errors.push(String(e.message)); return null; });
      questions.set(p.n, q);
      if (a.screenshot) {
        mkdirSync(a.screenshot, { recursive: true });
        await p.page.screenshot({ path: join(a.screenshot, `question-${p.n}.png`) });
      }
      if (a.answerDowngrade.startsWith('click-')) {
        await p.page.click(yes ? '#downgrade-continue' : '#downgrade-leave').catch((e) => p.errors.push(`answer: ${e.message}`));
      } else {
        const answered = await p.page.evaluate((y) => window.blindrelay.answerDowngrade(y), yes).catch((e) => { p.errors.push(String(e.message)); return false; });
        if (!answered) p.errors.push('answerDowngrade: no question was pending');
      }
    }
  }
  // The condition each page must meet last: `left` for the pages that left.
  const left = new Set();
  const want = (p, cond) => (left.has(p.n) ? 'left' : cond);
  let last = a.until;
  const stepStates = [{ step: { until: a.until }, states: pages.map((p) => states.get(p.n) ?? null) }];
  for (const step of a.steps) {
    if (step.leave !== undefined) {
      const p = pages.find((x) => x.n === step.leave);
      if (!p) throw new Error(`--leave-page ${step.leave}: no such page`);
      await p.page.click('#leave').catch((e) => p.errors.push(`leave: ${e.message}`));
      left.add(p.n);
    } else if (step.open !== undefined) {
      await open(pages.length, step.open);
    } else if (step.hold !== undefined) {
      await new Promise((r) => setTimeout(r, step.hold * 1000));
    } else if (step.maxResolution !== undefined) {
      const { page, height } = step.maxResolution;
      const p = pages.find((x) => x.n === page);
      if (!p) throw new Error(`--max-resolution ${page}: no such page`);
      await p.page.evaluate((h) => window.blindrelay.maxResolution(h), height).catch((e) => p.errors.push(`maxResolution: ${e.message}`));
    } else {
      last = step.then;
      const until = Date.now() + a.timeout * 1000;
      await poll();
      let ok;
      while (!(ok = pages.every((p) => met(states.get(p.n), want(p, step.then)))) && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 250));
        await poll();
      }
      firstOk &&= ok;
    }
    await poll();
    stepStates.push({ step, states: pages.map((p) => states.get(p.n) ?? null) });
  }
  if (a.chat) {
    for (const p of pages) {
      await p.page.fill('#chat-input', `${a.chat} from page ${p.n}`).catch((e) => p.errors.push(`chat: ${e.message}`));
      await p.page.click('#chat-send').catch((e) => p.errors.push(`chat: ${e.message}`));
    }
    // Wait for each page to receive the other pages' lines.
    const want = pages.length - 1;
    while (Date.now() < deadline + 10000) {
      await poll();
      if (pages.every((p) => (states.get(p.n)?.chat || []).filter((c) => !c.mine).length >= want)) break;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  await poll();
  for (const p of pages) {
    const s = states.get(p.n);
    // With steps, the page met every condition in turn.
    const ok = a.steps.length ? firstOk && met(s, want(p, last)) : met(s);
    allOk &&= ok;
    const samples = {};
    for (const who of s ? s.participants : []) samples[who] = await p.page.evaluate((w) => window.blindrelay.sampleVideo(w), who).catch(() => null);
    const toggle = await p.page.evaluate(() => {
      const t = document.getElementById('e2ee-toggle');
      return t ? { present: true, visible: !!(t.offsetWidth || t.offsetHeight), checked: t.checked, disabled: t.disabled } : { present: false };
    });
    const lock = await p.page.evaluate(() => {
      const l = document.getElementById('lock');
      return { visible: !!l && !l.hidden && !!(l.offsetWidth || l.offsetHeight) };
    });
    let shownCode = null;
    if (a.clickLock && lock.visible) {
      await p.page.click('#lock');
      shownCode = await p.page.textContent('#code');
    }
    const features = await p.page.evaluate(() => [...document.querySelectorAll('#feature-buttons button')].map((b) => ({ name: b.dataset.feature, disabled: b.disabled, reason: b.title })));
    const message = await p.page.evaluate(() => { const m = document.getElementById('message'); return m && !m.hidden ? m.textContent : null; });
    if (a.screenshot) {
      mkdirSync(a.screenshot, { recursive: true });
      await p.page.screenshot({ path: join(a.screenshot, `page-${p.n}.png`) });
    }
    results.push({ url: p.url, ok, state: s, steps: stepStates.map((x) => ({ step: x.step, state: x.states[p.n] ?? null })), samples, toggle, lock, shownCode, features, message, question: questions.get(p.n) ?? null, errors: p.errors });
  }
} catch (e) {
  console.error(`[web] ${e.stack || e}`);
  allOk = false;
} finally {
  await browser.close().catch(() => {});
}
// Exit once the report is written: stdout is a pipe, and process.exit() right after a
// write cuts it at the pipe's 64 KiB (a run of many steps reports more than that).
process.stdout.write(JSON.stringify(results) + '\n', () => process.exit(allOk ? 0 : 1));
