#!/usr/bin/env node
// Headless Chromium as blindrelay participant(s).
//
//   node peer.mjs --url ws://127.0.0.1:PORT/v1/signal --token T1[,T2,...] --call CALL \
//       --duration SECS --name NAME[,NAME2,...] [--peers N] [--leave-after SECS]
//       [--prefer-codec CODEC[,CODEC2,...]]   (per page, e.g. H264,,VP9; empty = default)
//
// With --peers N, N pages (one participant each, token i and name i from the comma lists;
// a single name gets "-i" appended) share one browser process. Logs go to stderr; stdout
// gets exactly one JSON line: the report object for one peer, or an array of N reports.
// Exit status 0 when every page joined the call.
import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const a = { duration: 10, peers: 1, name: 'chromium' };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    switch (k) {
      case '--url': a.url = v; i++; break;
      case '--token': a.token = v; i++; break;
      case '--call': a.call = v; i++; break;
      case '--duration': a.duration = Number(v); i++; break;
      case '--name': a.name = v; i++; break;
      case '--peers': a.peers = Number(v); i++; break;
      case '--leave-after': a.leaveAfter = Number(v); i++; break;
      case '--prefer-codec': a.preferCodec = v; i++; break;
      case '--chromium': a.chromium = v; i++; break;
      case '--page-port': a.pagePort = Number(v); i++; break;
      default: throw new Error(`unknown argument ${k}`);
    }
  }
  for (const req of ['url', 'token', 'call']) if (!a[req]) throw new Error(`--${req} is required`);
  return a;
}

const args = parseArgs(process.argv.slice(2));
const tokens = args.token.split(',');
const n = Math.max(args.peers, tokens.length);
if (tokens.length !== n) throw new Error(`--peers ${n} needs ${n} comma-separated tokens, got ${tokens.length}`);
const names = args.name.split(',');
const nameOf = (i) => (names.length === n ? names[i] : n === 1 ? names[0] : `${names[0]}-${i}`);
const executablePath = args.chromium || '/usr/bin/chromium';
if (!existsSync(executablePath)) {
  console.error(`${executablePath} not found: run scripts/install-test-deps.sh`);
  process.exit(3);
}

const html = readFileSync(join(here, 'peer.html'));
// getUserMedia needs a secure context: http://127.0.0.1 is one.
const server = createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(html);
});
// The relay must allow this page's origin (signal.allowed_origins): the test names the port.
await new Promise((r) => server.listen(args.pagePort || 0, '127.0.0.1', r));
const pageUrl = `http://127.0.0.1:${server.address().port}/peer.html`;

const browser = await chromium.launch({
  executablePath,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu',
    // The fake camera runs at 20 fps unless told otherwise; real cameras give 30.
    '--use-fake-device-for-media-stream=fps=30', '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
console.error(`[chromium] ${browser.version()}: ${n} page(s)`);

const reports = [];
let ok = true;
try {
  const context = await browser.newContext();
  await context.grantPermissions(['camera', 'microphone']).catch(() => {});
  const runs = [];
  for (let i = 0; i < n; i++) {
    const name = nameOf(i);
    runs.push((async () => {
      const page = await context.newPage();
      page.on('console', (m) => console.error(m.text()));
      page.on('pageerror', (e) => console.error(`[${name}] pageerror ${e.message}`));
      await page.goto(pageUrl);
      try {
        return await page.evaluate((o) => window.runPeer(o), {
          url: args.url, token: tokens[i], call: args.call, duration: args.duration, name,
          leaveAfter: args.leaveAfter ?? null,
          preferCodec: args.preferCodec ? (args.preferCodec.split(',')[i] || null) : null,
        });
      } catch (e) {
        return { name, joined: false, participant: null, offers_answered: 0, inbound: [], errors: [String(e.message || e)] };
      } finally {
        await page.close().catch(() => {});
      }
    })());
  }
  for (const r of await Promise.all(runs)) {
    reports.push(r);
    if (!r.joined) ok = false;
  }
} catch (e) {
  console.error(`[chromium] ${e.stack || e}`);
  ok = false;
} finally {
  await browser.close().catch(() => {});
  server.close();
}
// Exit once the report is written: process.exit() right after a write to a pipe cuts it
// at 64 KiB.
process.stdout.write(JSON.stringify(n === 1 ? (reports[0] ?? { name: nameOf(0), joined: false, errors: ['no report'] }) : reports) + '\n', () => process.exit(ok ? 0 : 1));
