import { X509Certificate, createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { createUpPlatform, type UpPlatform } from '../helpers/sf-up-platform';

/** Debian's chromium (scripts/setup.sh installs it); SF_CHROMIUM names another. */
const CHROMIUM = process.env.SF_CHROMIUM ?? '/usr/bin/chromium';

describe('web console (/ui/) in chromium', function () {
  /** The SHA-256 of control's public key (base64), as chromium's SPKI allow-list takes it. */
  async function controlSpki(): Promise<string> {
    const cert = new X509Certificate(await readFile(path.join(platform.dataDir, 'ca', 'issued', 'control.crt')));
    return createHash('sha256')
      .update(cert.publicKey.export({ type: 'spki', format: 'der' }))
      .digest('base64');
  }

  this.timeout(600_000);
  let platform: UpPlatform;
  let browser: Browser | undefined;
  let page: Page;
  let token: string;
  let controlUrl: string;

  before(async () => {
    platform = await createUpPlatform(2);
    await platform.start(300_000);
    // sf up serves control over HTTPS with a certificate from its platform CA.
    controlUrl = platform.controlUrl;
    expect(controlUrl).to.match(/^https:/);
    token = (
      await readFile(path.join(platform.home, 'admin-tokens', `127.0.0.1-${platform.ports.control}`), 'utf8')
    ).trim();
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      // Root cannot use chromium's sandbox; the page is our own console on loopback. The browser
      // does not know the platform CA, so it is told to accept control's own key and no other
      // (a user imports DATA/ca.pem instead, docs/tls.md).
      args: ['--no-sandbox', '--disable-dev-shm-usage', `--ignore-certificate-errors-spki-list=${await controlSpki()}`],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 900 });
  });

  after(async () => {
    await browser?.close();
    await platform?.cleanup();
  });

  it('is served with a strict security policy and asks for a token', async () => {
    const res = await page.goto(`${controlUrl}/ui/`);
    expect(res?.status()).to.equal(200);
    const headers = res?.headers() ?? {};
    expect(headers['content-security-policy']).to.match(/script-src 'self'/);
    expect(headers['content-security-policy']).to.match(/frame-ancestors 'none'/);
    expect(headers['x-content-type-options']).to.equal('nosniff');
    expect(headers['referrer-policy']).to.equal('no-referrer');
    await page.waitForSelector('#token');
    // A wrong token is refused without leaving the sign-in form.
    await page.type('#token', 'not-a-token');
    await page.click('#signin');
    await page.waitForFunction("document.querySelector('.error')?.textContent?.includes('unknown token')");
  });

  it('signs in, shows a service created through the API, and its status change after sf fence', async () => {
    await page.$eval('#token', (el) => {
      (el as unknown as { value: string }).value = '';
    });
    await page.type('#token', token);
    await page.click('#signin');
    await page.waitForSelector('#services');
    // The token is kept in this tab's session storage, never in the URL.
    expect(page.url()).to.not.include(token);
    expect(await page.evaluate("sessionStorage.getItem('sf-token')")).to.equal(token);

    const created = await platform.controlFetch('/v3/service_instances', {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      // Manual fencing: after `sf fence` the service stays degraded until someone fails it over.
      body: JSON.stringify({ name: 'web', engine: 'redis', replicas: 1, fencing: { policy: 'manual' } }),
    });
    expect(created.status).to.equal(201);
    await page.waitForSelector('tr[data-service="web"] [data-status="running"]', { timeout: 180_000 });
    await page.click('tr[data-service="web"]');
    await page.waitForSelector('[data-detail="web"] button[data-action="fence"]');

    const fenced = await platform.sf(['fence', 'web']);
    expect(fenced.code, fenced.output).to.equal(0);
    await page.waitForSelector('tr[data-service="web"] [data-status="degraded"]', { timeout: 60_000 });
    const reason = await page.$eval('tr[data-service="web"] .reason', (el) => el.textContent ?? '');
    expect(reason).to.match(/fenced|manual|failover/i);
    // The fencing history shows the steps as a timeline.
    await page.waitForFunction(`document.querySelectorAll('[data-detail="web"] .timeline li').length >= 3`, {
      timeout: 30_000,
    });
    const steps = await page.$$eval('[data-detail="web"] .timeline li b', (els) => els.map((e) => e.textContent));
    expect(steps).to.include('route-fence');

    // The live feed got the route change that fenced the primary.
    await page.waitForFunction("/fenced/.test(document.querySelector('#events')?.textContent ?? '')", {
      timeout: 30_000,
    });

    const shot = process.env.SF_CONSOLE_SCREENSHOT ?? path.join(platform.home, 'console.png');
    await mkdir(path.dirname(shot), { recursive: true });
    await page.screenshot({ path: shot, fullPage: true });
    expect((await readFile(shot)).length).to.be.greaterThan(10_000);
  });

  it('asks for confirmation before an action and does nothing when it is dismissed', async () => {
    let message = '';
    page.once('dialog', (d) => {
      message = d.message();
      void d.dismiss();
    });
    await page.click('[data-detail="web"] button[data-action="failover"]');
    await page.waitForFunction(() => true);
    expect(message).to.match(/^Fail over web: /);
    const view = (await (
      await platform.controlFetch('/v3/service_instances/web', { headers: { authorization: `Bearer ${token}` } })
    ).json()) as { status: string };
    expect(view.status).to.equal('degraded');
  });
});
