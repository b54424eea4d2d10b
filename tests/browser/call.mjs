// Drives Debian's Chromium (playwright-core, no browser download) against
// real xarxa nodes. Started by tests/tests/browser.rs, which starts the
// nodes and passes the scenario as JSON in XARXA_BROWSER_TEST:
//   { scenario: "call" | "tabs" | "login", caller: {url, name, password},
//     callee: {url, name, password, address}, ice: "loopback" | "relay",
//     artifacts: "/path/for/screenshots" }
// Prints one JSON line of measurements and exits 0, or prints the failure
// and exits 1. Every browser is closed on the way out, pass or fail.
import { WAIT, launch, login, main } from './common.mjs';
import { mkdirSync } from 'node:fs';

const cfg = JSON.parse(process.env.XARXA_BROWSER_TEST);

const browser = launch;

async function open(b, who) {
  const ctx = await b.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 760 } });
  await ctx.grantPermissions(['camera', 'microphone', 'notifications']);
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.error(`[${who.name}] page error: ${e.message}`));
  await page.goto(`${who.url}/?ice=${cfg.ice}`);
  return { ctx, page };
}

async function stats(page) {
  return page.evaluate(async () => {
    const pc = window.xarxaPc;
    if (!pc) return null;
    const out = { audio: 0, video: 0, frames: 0, localType: null, remoteType: null };
    const report = await pc.getStats();
    let pair = null;
    let selectedId = null;
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') out.audio += s.bytesReceived || 0;
      if (s.type === 'inbound-rtp' && s.kind === 'video') { out.video += s.bytesReceived || 0; out.frames += s.framesDecoded || 0; }
      if (s.type === 'transport' && s.selectedCandidatePairId) selectedId = s.selectedCandidatePairId;
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && (s.nominated || s.selected)) pair = s;
    });
    // The pair the transport sends on, when the browser names it.
    if (selectedId && report.get(selectedId)) pair = report.get(selectedId);
    if (pair) {
      out.localType = report.get(pair.localCandidateId)?.candidateType ?? null;
      out.remoteType = report.get(pair.remoteCandidateId)?.candidateType ?? null;
      out.localAddress = report.get(pair.localCandidateId)?.address ?? null;
      out.remoteAddress = report.get(pair.remoteCandidateId)?.address ?? null;
    }
    return out;
  });
}

async function mediaFlows(page, who) {
  const deadline = Date.now() + WAIT;
  let s = null;
  while (Date.now() < deadline) {
    s = await stats(page);
    if (s && s.audio > 0 && s.video > 0 && s.frames > 0) return s;
    await page.waitForTimeout(250);
  }
  throw new Error(`${who}: no media arrived: ${JSON.stringify(s)}`);
}

async function run() {
  mkdirSync(cfg.artifacts, { recursive: true });
  const a = await open(await browser(), cfg.caller);
  await login(a.page, cfg.caller);
  if (cfg.scenario === 'login') {
    // Only the login (the installed package's test): the home screen,
    // online.
    await a.page.screenshot({ path: `${cfg.artifacts}/home.png` });
    console.log(JSON.stringify({ ok: true, loggedIn: true }));
    return;
  }
  const callee = await browser();
  const tabs = [];
  const first = await open(callee, cfg.callee);
  await login(first.page, cfg.callee);
  tabs.push(first.page);
  if (cfg.scenario === 'tabs') {
    for (let i = 0; i < 2; i++) {
      const p = await first.ctx.newPage();
      await p.goto(`${cfg.callee.url}/?ice=${cfg.ice}`);
      await p.waitForSelector('#screen-home:not([hidden])', { timeout: WAIT });
      await p.waitForFunction(() => document.querySelector('#conn-state').dataset.state === 'online', null, { timeout: WAIT });
      tabs.push(p);
    }
  }
  // Dial with video.
  await a.page.fill('#dial-input', cfg.callee.address);
  await a.page.click('#call-video-btn');
  for (const t of tabs) await t.waitForSelector('#screen-incoming:not([hidden])', { timeout: WAIT });
  const answering = tabs[tabs.length > 1 ? 1 : 0];
  await answering.click('#accept-btn');
  for (const t of tabs) {
    if (t !== answering) {
      await t.waitForSelector('#screen-home:not([hidden])', { timeout: WAIT });
      const banner = await t.textContent('#banner');
      if (!/another of your devices/.test(banner)) throw new Error(`other tab not told: ${banner}`);
    }
  }
  const b = answering;
  for (const p of [a.page, b]) await p.waitForFunction(() => window.xarxaPhase === 'connected', null, { timeout: WAIT });
  const sa = await mediaFlows(a.page, 'caller');
  const sb = await mediaFlows(b, 'callee');
  if (cfg.ice === 'relay' && (sa.localType !== 'relay' || sb.localType !== 'relay')) {
    throw new Error(`media did not go through TURN: caller ${sa.localType}, callee ${sb.localType}`);
  }
  // Chat over the data channel.
  await a.page.fill('#chat-input', 'hola des de Gràcia');
  await a.page.click('#chat-send');
  await b.waitForFunction(() => document.querySelector('#chat-log').textContent.includes('hola des de Gràcia'), null, { timeout: WAIT });
  await a.page.waitForTimeout(1200); // let the duration counter tick for the picture
  await a.page.screenshot({ path: `${cfg.artifacts}/in-call.png` });
  // Hang up: both sides end.
  await a.page.click('#hangup-btn');
  await b.waitForSelector('#screen-home:not([hidden])', { timeout: WAIT });
  await a.page.waitForSelector('#screen-home:not([hidden])', { timeout: WAIT });
  // History shows the call on both sides.
  const peerOf = { a: cfg.callee.address, b: cfg.caller.address };
  for (const [p, peer] of [[a.page, peerOf.a], [b, peerOf.b]]) {
    await p.waitForFunction((peer) => [...document.querySelectorAll('#history-list li .who')].some((e) => e.textContent === peer), peer, { timeout: WAIT });
  }
  await b.screenshot({ path: `${cfg.artifacts}/history.png` });
  console.log(JSON.stringify({ ok: true, caller: sa, callee: sb, tabs: tabs.length }));
}

await main(run);
