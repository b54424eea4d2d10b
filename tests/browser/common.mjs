// What the browser scenarios share: Debian's Chromium launched the way this
// machine allows (no background networking, fake media devices), and a
// runner that closes every browser on the way out, pass or fail.
import { chromium } from 'playwright-core';

export const WAIT = 20_000;
const browsers = [];

/** Launches Chromium (playwright-core, no browser download). */
export async function launch() {
  const b = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
      '--ignore-certificate-errors',
    ],
  });
  browsers.push(b);
  return b;
}

/** Logs `who` in on the page's login screen; returns once online. */
export async function login(page, who) {
  await page.waitForSelector('#screen-login:not([hidden])', { timeout: WAIT });
  await page.fill('#login-name', who.name);
  await page.fill('#login-password', who.password);
  await page.click('#login-btn');
  await page.waitForSelector('#screen-home:not([hidden])', { timeout: WAIT });
  await page.waitForFunction(() => document.querySelector('#conn-state').dataset.state === 'online', null, { timeout: WAIT });
}

/** Runs `scenario`; exits 0 when it resolves, 1 (with the failure) when it throws. */
export async function main(scenario) {
  let code = 0;
  try {
    await scenario();
  } catch (e) {
    console.error(`browser test failed: ${e.stack || e}`);
    code = 1;
  } finally {
    for (const b of browsers) await b.close().catch(() => {});
  }
  process.exit(code);
}
