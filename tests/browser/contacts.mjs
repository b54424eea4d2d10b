// Contacts and presence in two real browsers on two zones, driven only
// through the visible page: Alice (zone A) adds Bob (zone B) by address,
// Bob accepts his request, each sees the other online; Bob's availability
// and status reach Alice live; Alice's nickname and picture reach Bob;
// Alice calls Bob from her contact list; Bob
// removes Alice and she sees him go. Started by tests/tests/browser.rs
// with XARXA_BROWSER_TEST = { caller: {url, name, password, address},
// callee: {…}, artifacts }. Prints one JSON line and exits 0, or prints
// the failure and exits 1. Screenshots: contacts-*.png.
import { WAIT, launch, login, main } from './common.mjs';
import { mkdirSync } from 'node:fs';

const cfg = JSON.parse(process.env.XARXA_BROWSER_TEST);

async function open(who, viewport) {
  const b = await launch();
  const ctx = await b.newContext({ ignoreHTTPSErrors: true, viewport });
  await ctx.grantPermissions(['camera', 'microphone', 'notifications']);
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.error(`[${who.name}] page error: ${e.message}`));
  await page.goto(`${who.url}/?ice=loopback`);
  await login(page, who);
  return page;
}

const row = (address) => `#contact-list li[data-address="${address}"]`;

async function presenceIs(page, address, presence) {
  await page.waitForSelector(`${row(address)} .presence[data-presence="${presence}"]`, { timeout: WAIT });
}

async function run() {
  mkdirSync(cfg.artifacts, { recursive: true });
  const alice = await open(cfg.caller, { width: 1000, height: 800 });
  const bob = await open(cfg.callee, { width: 390, height: 844 });
  const empty = await alice.isVisible('#contacts-empty');
  if (!empty) throw new Error('a new user sees the empty-list hint');

  // A typo gets a clear error, and nothing is added.
  await alice.fill('#contact-input', `nobody@${cfg.callee.address.split('@')[1]}`);
  await alice.click('#contact-add-btn');
  await alice.waitForSelector('#contact-error:not([hidden])', { timeout: WAIT });
  const err = await alice.textContent('#contact-error');
  if (!/no such user/i.test(err)) throw new Error(`unclear error for an unknown user: ${err}`);

  // Alice asks Bob; he sees the request live and accepts it.
  await alice.fill('#contact-input', cfg.callee.address);
  await alice.click('#contact-add-btn');
  await alice.waitForSelector(`${row(cfg.callee.address)}[data-state="outgoing"]`, { timeout: WAIT });
  await bob.waitForSelector(`#contact-requests li[data-address="${cfg.caller.address}"]`, { timeout: WAIT });
  await bob.screenshot({ path: `${cfg.artifacts}/contacts-request.png` });
  await bob.click(`#contact-requests li[data-address="${cfg.caller.address}"] button.accept`);
  await presenceIs(alice, cfg.callee.address, 'online');
  await presenceIs(bob, cfg.caller.address, 'online');

  // Alice's profile (nickname, picture) shows on Bob's zone, live.
  await alice.fill('#profile-nickname', 'Alba de Gràcia');
  await alice.click('#profile-save-btn');
  await bob.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent === 'Alba de Gràcia',
    `${row(cfg.caller.address)} .nickname`,
    { timeout: WAIT },
  );
  const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==', 'base64');
  await alice.setInputFiles('#avatar-input', { name: 'me.png', mimeType: 'image/png', buffer: png });
  await alice.waitForSelector('#profile-avatar:not([hidden])', { timeout: WAIT });
  await bob.waitForSelector(`${row(cfg.caller.address)} img.avatar`, { timeout: WAIT });
  // A page posing as a picture is refused, with a clear word.
  await alice.setInputFiles('#avatar-input', { name: 'x.png', mimeType: 'image/png', buffer: Buffer.from('<html><script>alert(1)</script>') });
  await alice.waitForFunction(() => /PNG, JPEG or WebP/.test(document.querySelector('#profile-note').textContent), null, { timeout: WAIT });

  // Bob is busy, with a status: Alice sees both, live.
  await bob.fill('#my-status', 'a la plaça');
  await bob.selectOption('#my-availability', 'busy');
  await presenceIs(alice, cfg.callee.address, 'busy');
  await alice.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent.includes('a la plaça'),
    `${row(cfg.callee.address)} .who`,
    { timeout: WAIT },
  );
  await alice.screenshot({ path: `${cfg.artifacts}/contacts.png` });
  await bob.selectOption('#my-availability', 'online');
  await presenceIs(alice, cfg.callee.address, 'online');

  // A call started from the contact list; both show "in a call".
  await alice.click(`${row(cfg.callee.address)} button.call`);
  await bob.waitForSelector('#screen-incoming:not([hidden])', { timeout: WAIT });
  await bob.click('#accept-btn');
  for (const p of [alice, bob]) await p.waitForFunction(() => window.xarxaPhase === 'connected', null, { timeout: WAIT });
  await alice.click('#hangup-btn');
  await bob.waitForSelector('#screen-home:not([hidden])', { timeout: WAIT });
  await alice.waitForSelector('#screen-home:not([hidden])', { timeout: WAIT });
  await presenceIs(bob, cfg.caller.address, 'online');

  // On the phone-sized page, the contacts card and every row fit the screen.
  const overflow = await bob.evaluate(() => {
    const card = document.querySelector('#contacts-card');
    const edge = Math.min(card.getBoundingClientRect().right, window.innerWidth) + 0.5;
    const rows = [...card.querySelectorAll('li, form, .row')];
    return card.scrollWidth > card.clientWidth || rows.some((r) => r.getBoundingClientRect().right > edge);
  });
  if (overflow) throw new Error('the contacts card overflows a 390 px wide screen');
  await bob.screenshot({ path: `${cfg.artifacts}/contacts-phone.png`, fullPage: true });

  // Bob removes Alice: she sees him go, and no presence of his remains.
  await bob.click(`${row(cfg.caller.address)} button.remove`);
  await alice.waitForSelector(row(cfg.callee.address), { state: 'detached', timeout: WAIT });
  await bob.waitForSelector(row(cfg.caller.address), { state: 'detached', timeout: WAIT });
  console.log(JSON.stringify({ ok: true }));
}

await main(run);
