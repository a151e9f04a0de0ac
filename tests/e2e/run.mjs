#!/usr/bin/env node
// Browser tests of the Atelier web page: starts `atelier serve` on a free port with a fresh data
// folder, drives Debian's Chromium through playwright-core, saves screenshots in artifacts/.
//
//   node tests/e2e/run.mjs [scenario ...]      scenarios: stylize busy bad-upload training hostile-text docs
//
// Env: ATELIER_BIN (default target/debug/atelier, relative to the repository root),
//      CHROMIUM (default /usr/bin/chromium), E2E_READY_TIMEOUT_S (60), E2E_TRAIN_TIMEOUT_S (300),
//      E2E_HEADED=1 to watch.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const artifacts = path.join(here, 'artifacts');
const BIN = path.resolve(repo, process.env.ATELIER_BIN || 'target/debug/atelier');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const READY_TIMEOUT = Number(process.env.E2E_READY_TIMEOUT_S || 60) * 1000;
const TRAIN_TIMEOUT = Number(process.env.E2E_TRAIN_TIMEOUT_S || 300) * 1000;
const PHOTO = path.join(repo, 'examples', 'photo.jpg');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
class Fail extends Error {}
function assert(cond, msg) {
  if (!cond) throw new Fail(msg);
}

// ------------------------------------------------------------------ tiny PNG encoder
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}
/** RGB8 PNG from `rgb` (w*h*3 bytes). */
function encodePng(w, h, rgb) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    raw[y * (w * 3 + 1)] = 0; // filter: none
    Buffer.from(rgb.buffer, rgb.byteOffset + y * w * 3, w * 3).copy(raw, y * (w * 3 + 1) + 1);
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
function rng(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
}
/** Domain A: red discs on grey noise; domain B: blue squares on grey noise. */
function shapeImage(kind, seed, size = 32) {
  const r = rng(seed * 7919 + (kind === 'disc' ? 1 : 2));
  const px = new Uint8Array(size * size * 3);
  const cx = size * (0.35 + 0.3 * r());
  const cy = size * (0.35 + 0.3 * r());
  const rad = size * (0.18 + 0.12 * r());
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const i = (y * size + x) * 3;
      const n = 90 + Math.floor(r() * 90);
      let c = [n, n, n];
      const inside = kind === 'disc' ? (x - cx) ** 2 + (y - cy) ** 2 <= rad * rad : Math.abs(x - cx) <= rad && Math.abs(y - cy) <= rad;
      if (inside) c = kind === 'disc' ? [200 + Math.floor(r() * 55), 30, 30] : [30, 40, 200 + Math.floor(r() * 55)];
      px.set(c, i);
    }
  }
  return encodePng(size, size, px);
}

// ------------------------------------------------------------------ server
async function freePort() {
  const srv = net.createServer();
  await new Promise((res, rej) => srv.once('error', rej).listen(0, '127.0.0.1', res));
  const { port } = srv.address();
  await new Promise((res) => srv.close(res));
  return port;
}
/** The built-in styles: a copy of the models folder's files, so that nothing the tests do reaches it. */
function copyModels(dest) {
  const src = path.resolve(repo, process.env.ATELIER_MODELS || 'models');
  const files = fs.existsSync(src) ? fs.readdirSync(src).filter((f) => f.endsWith('.safetensors')) : [];
  assert(files.length, `no model files in ${src} (scripts/e2e.sh imports the demo model; or set ATELIER_MODELS)`);
  fs.mkdirSync(dest, { recursive: true });
  for (const f of files) fs.copyFileSync(path.join(src, f), path.join(dest, f));
  return files;
}
async function startServer() {
  assert(fs.existsSync(BIN), `no server binary at ${BIN} (build it: cargo build -p atelier, or set ATELIER_BIN)`);
  const port = await freePort();
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'atelier-e2e-'));
  const data = path.join(root, 'data');
  const models = path.join(root, 'models');
  let styles;
  try { styles = copyModels(models); } catch (e) { fs.rmSync(root, { recursive: true, force: true }); throw e; }
  const log = fs.createWriteStream(path.join(artifacts, 'server.log'));
  const args = ['serve', '--port', String(port), '--data', data, '--open'];
  log.write(`$ ATELIER_MODELS=${models} ${BIN} ${args.join(' ')}\n# styles: ${styles.join(' ')}\n`);
  const child = spawn(BIN, args, {
    cwd: repo, stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ATELIER_MODELS: models, RUST_BACKTRACE: '1' },
  });
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  let exited = null;
  child.on('exit', (code, sig) => { exited = { code, sig }; });
  const base = `http://127.0.0.1:${port}`;
  const t0 = Date.now();
  for (;;) {
    if (exited) {
      fs.rmSync(root, { recursive: true, force: true });
      throw new Fail(`the server exited (${exited.code ?? exited.sig}) before it was ready; see ${path.join(artifacts, 'server.log')}`);
    }
    try {
      const r = await fetch(base + '/readyz');
      if (r.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() - t0 > READY_TIMEOUT) {
      child.kill('SIGKILL');
      fs.rmSync(root, { recursive: true, force: true });
      throw new Fail(`/readyz did not answer 200 within ${READY_TIMEOUT / 1000} s; see ${path.join(artifacts, 'server.log')}`);
    }
    await sleep(300);
  }
  return {
    base, data: root,
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        for (let i = 0; i < 50 && !exited; i++) await sleep(100);
        if (!exited) child.kill('SIGKILL');
        for (let i = 0; i < 20 && !exited; i++) await sleep(100);
      }
      log.end();
    },
  };
}

// ------------------------------------------------------------------ helpers
async function shot(page, name, fullPage = true) {
  if (fullPage) await page.evaluate(() => window.scrollTo(0, 0)); // the sticky header stays on top
  await page.screenshot({ path: path.join(artifacts, name + '.png'), fullPage });
}
async function noHorizontalScroll(page, what) {
  const sw = await page.evaluate(() => document.scrollingElement.scrollWidth);
  assert(sw <= 375 + 1, `${what}: horizontal scroll at 375 px (scrollWidth ${sw})`);
}
const MAGIC = [
  ['jpeg', [0xff, 0xd8, 0xff]],
  ['png', [0x89, 0x50, 0x4e, 0x47]],
  ['webp', [0x52, 0x49, 0x46, 0x46]], // RIFF....WEBP, checked below
];
function imageKind(buf) {
  for (const [k, m] of MAGIC) {
    if (buf.length >= 12 && m.every((b, i) => buf[i] === b)) {
      if (k === 'webp' && buf.subarray(8, 12).toString('latin1') !== 'WEBP') continue;
      return k;
    }
  }
  return null;
}
async function openHome(page, base) {
  await page.goto(base + '/');
  await page.locator('[data-testid=style-card]').first().waitFor({ state: 'visible', timeout: 60_000 });
}
/** Clicks the first style card that can stylize. */
async function pickStyle(page) {
  const card = page.locator('[data-testid=style-card]:not(.disabled)').first();
  const name = await card.getAttribute('data-name');
  await card.click();
  await page.waitForFunction((n) => [...document.querySelectorAll('[data-testid=style-card].selected')].some((c) => c.dataset.name === n), name);
  return name;
}

// ------------------------------------------------------------------ scenarios
const scenarios = {
  async stylize(page, { base }) {
    await openHome(page, base);
    // Every style in the gallery shows its preview (the server makes the built-ins' at start).
    await page.locator('[data-testid=style-card]').last().scrollIntoViewIfNeeded();
    await page.waitForFunction(() => {
      const imgs = [...document.querySelectorAll('[data-testid=style-card] .thumb img')];
      return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
    }, null, { timeout: 120_000 });
    await page.evaluate(() => window.scrollTo(0, 0));
    const name = await pickStyle(page);
    await page.locator('[data-testid=file-input]').setInputFiles(PHOTO);
    await page.locator('[data-testid=original-image]').waitFor({ state: 'visible' });
    await page.locator('[data-testid=max-side]').selectOption('512'); // the CPU is slow
    await page.locator('[data-testid=format]').selectOption('jpg');
    await shot(page, 'stylize-1-chosen');
    const sent = page.waitForRequest((r) => r.url().includes('/v1/stylize') && r.method() === 'POST');
    await page.locator('[data-testid=stylize-button]').click();
    const q = new URL((await sent).url()).searchParams;
    assert(q.get('model') === name && q.get('max_side') === '512' && q.get('format') === 'jpg' && Number(q.get('strength')) === 1,
      `stylize request query: ${q}`);
    const result = page.locator('[data-testid=result-image]');
    await result.waitFor({ state: 'visible', timeout: 180_000 });
    await page.waitForFunction(() => {
      const i = document.querySelector('[data-testid=result-image]');
      return i && i.complete && i.naturalWidth > 0;
    });
    // drag the compare divider from the middle to 20 %
    const slider = page.locator('[data-testid=compare-slider]');
    const box = await page.locator('[data-testid=compare]').boundingBox();
    assert(box && box.width > 50, 'compare widget has no size');
    const y = box.y + box.height / 2;
    await page.mouse.move(box.x + box.width * 0.5, y);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.35, y, { steps: 4 });
    await page.mouse.move(box.x + box.width * 0.2, y, { steps: 4 });
    await page.mouse.up();
    let v = Number(await slider.inputValue());
    assert(Math.abs(v - 20) <= 3, `dragging the divider to 20 % gave ${v}`);
    const clip = await page.locator('[data-testid=before-image]').evaluate((el) => getComputedStyle(el.parentElement).getPropertyValue('--pos').trim());
    assert(clip.startsWith('20') || clip.startsWith('19') || clip.startsWith('21'), `divider position not applied (--pos ${clip})`);
    // keyboard
    await slider.focus();
    for (let i = 0; i < 5; i++) await page.keyboard.press('ArrowRight');
    const v2 = Number(await slider.inputValue());
    assert(v2 > v, `arrow keys did not move the divider (${v} → ${v2})`);
    v = v2;
    await shot(page, 'stylize-2-result-desktop');
    // download
    const [download] = await Promise.all([
      page.waitForEvent('download', { timeout: 30_000 }),
      page.locator('[data-testid=download-link]').click(),
    ]);
    const file = await download.path();
    const bytes = fs.readFileSync(file);
    const kind = imageKind(bytes);
    assert(bytes.length > 0, 'downloaded file is empty');
    assert(kind, `downloaded file is not JPEG/PNG/WebP (starts ${bytes.subarray(0, 8).toString('hex')})`);
    fs.copyFileSync(file, path.join(artifacts, 'stylize-download.' + (kind === 'jpeg' ? 'jpg' : kind)));
    // phone layout
    await page.setViewportSize({ width: 375, height: 800 });
    await sleep(400);
    await noHorizontalScroll(page, 'home with a result');
    await shot(page, 'stylize-3-result-phone');
    await page.evaluate(() => window.scrollTo(0, 0));
    await shot(page, 'stylize-4-phone-top', false);
    return `style ${name}, ${bytes.length} bytes ${kind}`;
  },

  // The server answered 429 `overloaded` (every slot busy, long wait): the page says so,
  // waits the Retry-After and tries again by itself (issue 21).
  async busy(page, { base }) {
    await openHome(page, base);
    await pickStyle(page);
    await page.locator('[data-testid=file-input]').setInputFiles(PHOTO);
    await page.locator('[data-testid=max-side]').selectOption('512');
    let refused = 0;
    await page.route('**/v1/stylize?*', async (route) => {
      if (refused++ === 0) {
        await route.fulfill({
          status: 429, contentType: 'application/json', headers: { 'Retry-After': '1' },
          body: JSON.stringify({ error: { code: 'overloaded', message: 'the server is busy with other images; retry shortly' } }),
        });
      } else await route.continue();
    });
    await page.locator('[data-testid=stylize-button]').click();
    const err = page.locator('[data-testid=error]');
    await err.waitFor({ state: 'visible', timeout: 10_000 });
    const said = (await err.innerText()).trim();
    assert(/busy/i.test(said) && /trying again in 1 s/.test(said), `while busy the page says: ${JSON.stringify(said)}`);
    await shot(page, 'busy-retrying', false);
    await page.locator('[data-testid=result-image]').waitFor({ state: 'visible', timeout: 180_000 });
    assert(await err.isHidden(), 'the busy message stayed after the retry succeeded');
    assert(refused === 2, `requests sent: ${refused}`);
    await page.unroute('**/v1/stylize?*');
    return `one 429, retried after 1 s, result shown`;
  },

  async 'bad-upload'(page, { base, tmp }) {
    await openHome(page, base);
    await pickStyle(page);
    const bogus = path.join(tmp, 'not-a-photo.jpg');
    fs.writeFileSync(bogus, 'This is a text file pretending to be a JPEG.\n'.repeat(20));
    await page.locator('[data-testid=file-input]').setInputFiles(bogus);
    await page.locator('[data-testid=stylize-button]').click();
    const err = page.locator('[data-testid=error]');
    await err.waitFor({ state: 'visible', timeout: 60_000 });
    const text = (await err.innerText()).trim();
    assert(/unsupported_image_format|invalid/i.test(text), `error element says: ${JSON.stringify(text)}`);
    assert(!(await page.locator('[data-testid=result-image]').count()), 'a result appeared for a text file');
    await shot(page, 'bad-upload-desktop');
    await page.setViewportSize({ width: 375, height: 800 });
    await sleep(300);
    await noHorizontalScroll(page, 'home with an error');
    await shot(page, 'bad-upload-phone', false);
    return text.replace(/×/g, '').replace(/\s+/g, ' ').trim().slice(0, 90);
  },

  async training(page, { base, tmp }) {
    const dir = path.join(tmp, 'shapes');
    fs.mkdirSync(dir, { recursive: true });
    const filesA = [];
    const filesB = [];
    for (let i = 0; i < 8; i++) {
      const a = path.join(dir, `disc-${i}.png`);
      const b = path.join(dir, `square-${i}.png`);
      fs.writeFileSync(a, shapeImage('disc', i));
      fs.writeFileSync(b, shapeImage('square', i));
      filesA.push(a);
      filesB.push(b);
    }
    const junk = path.join(dir, 'readme.txt');
    fs.writeFileSync(junk, 'not an image');

    await page.goto(base + '/#/train');
    const form = page.locator('[data-testid=dataset-form]');
    await form.waitFor();
    await page.locator('[data-testid=dataset-name]').fill('e2e-shapes');
    await page.locator('[data-testid=dataset-kind]').selectOption('unpaired');
    await page.locator('[data-testid=files-a]').setInputFiles([...filesA, junk]);
    await page.locator('[data-testid=files-b]').setInputFiles(filesB);
    await shot(page, 'training-1-dataset-form');
    await page.locator('[data-testid=create-dataset]').click();
    const created = page.locator('[data-testid=dataset-created]');
    await created.waitFor({ timeout: 120_000 });
    const createdText = await created.innerText();
    assert(/A 8\b/.test(createdText) && /B 8\b/.test(createdText), `dataset counts: ${createdText}`);
    const skipped = page.locator('[data-testid=skipped]');
    assert(await skipped.isVisible(), 'the skipped file is not reported');
    assert((await skipped.innerText()).includes('readme.txt'), 'skipped list does not name readme.txt');
    await page.locator('[data-testid=dataset-row]', { hasText: 'e2e-shapes' }).first().waitFor();

    // job form
    const dsValue = await page.locator('[data-testid=job-dataset]').evaluate((sel) => {
      const o = [...sel.options].find((x) => x.textContent.includes('e2e-shapes'));
      return o ? o.value : null;
    });
    assert(dsValue, 'the new dataset is not offered in the job form');
    await page.locator('[data-testid=job-dataset]').selectOption(dsValue);
    // The default job: FastCUT from a built-in style, with a measured ETA.
    await page.locator('[data-testid=job-eta]').waitFor({ timeout: 60000 });
    const eta = await page.locator('[data-testid=job-eta]').innerText();
    if (!/About .* min.*fastcut.*from monet/.test(eta)) throw new Error('default job estimate: ' + eta);
    await shot(page, 'training-2a-default-job');
    await page.locator('[data-testid=job-family]').selectOption('cyclegan');
    await page.locator('[data-testid=job-init]').selectOption('');
    await page.locator('[data-testid=job-net-g]').selectOption('light');
    await page.locator('[data-testid=job-name]').fill('e2e-style');
    await page.locator('[data-testid=job-steps]').fill('40');
    await page.locator('[data-testid=job-size]').selectOption('32');
    await page.locator('[data-testid=job-ngf]').fill('8');
    await page.locator('[data-testid=job-sample-every]').fill('10');
    // Precision: f32 by default; bf16 says what it does and where.
    const prec = page.locator('[data-testid=job-precision]');
    if (await prec.inputValue() !== 'f32') throw new Error('precision should default to f32');
    await prec.selectOption('bf16');
    await page.getByText('autocast').waitFor({ timeout: 5000 });
    await page.locator('[data-testid=job-precision]').selectOption('f32');
    // 40 steps from random weights: warned before starting.
    await page.locator('[data-testid=job-warning]').filter({ hasText: 'too few' }).waitFor({ timeout: 60000 });
    await shot(page, 'training-2-job-form');
    await page.locator('[data-testid=start-training]').click();
    await page.waitForURL(/#\/jobs\/[^/]+$/, { timeout: 60_000 });
    const jobId = decodeURIComponent(page.url().split('#/jobs/')[1]);
    const status = page.locator('[data-testid=job-status]');
    await status.waitFor();

    // watch: steps, chart points, sample image
    const steps = new Set();
    const chartReads = [];
    const samples = new Map(); // src -> naturalWidth
    let shots = 0;
    let final = null;
    const t0 = Date.now();
    while (Date.now() - t0 < TRAIN_TIMEOUT) {
      const s = await page.evaluate(() => {
        const c = document.querySelector('[data-testid=loss-chart]');
        const img = document.querySelector('[data-testid=sample-image]');
        const st = document.querySelector('[data-testid=job-step]');
        let coloured = 0;
        if (c && c.width && c.height) {
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          for (let i = 0; i < d.length; i += 4) {
            const mx = Math.max(d[i], d[i + 1], d[i + 2]);
            const mn = Math.min(d[i], d[i + 1], d[i + 2]);
            if (mx - mn > 60) coloured++; // background and axes are grey; only the lines are coloured
          }
        }
        return {
          status: document.querySelector('[data-testid=job-status]').textContent.trim(),
          step: st ? Number(st.dataset.step) : NaN,
          points: c ? Number(c.dataset.points) : 0,
          coloured,
          src: img && img.complete && img.naturalWidth > 0 && !img.hidden ? img.currentSrc : null,
          w: img ? img.naturalWidth : 0,
        };
      });
      if (Number.isFinite(s.step)) steps.add(s.step);
      if (s.points > 0 && s.coloured > 0) {
        const last = chartReads[chartReads.length - 1];
        if (!last || s.points > last.points) chartReads.push({ points: s.points, coloured: s.coloured, step: s.step });
      }
      if (s.src) samples.set(s.src, s.w);
      if (shots === 0 && chartReads.length >= 1 && samples.size >= 1) {
        await shot(page, 'training-3-job-running-a');
        shots = 1;
      } else if (shots === 1 && chartReads.length >= 3 && samples.size >= 2) {
        await shot(page, 'training-4-job-running-b');
        shots = 2;
      }
      if (['succeeded', 'failed', 'cancelled'].includes(s.status)) {
        final = s;
        break;
      }
      await sleep(150);
    }
    await shot(page, 'training-5-job-final');
    assert(final, `job ${jobId} did not finish within ${TRAIN_TIMEOUT / 1000} s (steps seen: ${[...steps].join(',')})`);
    if (final.status !== 'succeeded') {
      const err = await page.locator('[data-testid=job-error]').innerText().catch(() => '');
      throw new Fail(`job ${jobId} ended ${final.status}: ${err}`);
    }
    const seen = [...steps].sort((a, b) => a - b);
    assert(seen.filter((x) => x > 0).length >= 2 && seen.length >= 3, `step counter did not advance twice (seen ${seen.join(',')})`);
    assert(chartReads.length >= 2, `loss chart point count did not grow between two reads (${JSON.stringify(chartReads)})`);
    assert(chartReads[chartReads.length - 1].coloured > 30, 'loss chart looks blank');
    assert(samples.size >= 1, 'no sample grid image loaded');
    assert([...samples.values()].every((w) => w > 0), 'a sample image did not load');
    assert(samples.size >= 2, `the sample image did not change (${[...samples.keys()].join(' ')})`);

    // phone layout of the job page
    await page.setViewportSize({ width: 375, height: 800 });
    await sleep(400);
    await noHorizontalScroll(page, 'job page');
    await shot(page, 'training-6-job-phone');
    await page.setViewportSize({ width: 1280, height: 800 });

    // the model page of the new style
    await page.locator('[data-testid=job-model-link]').click();
    await page.waitForURL(/#\/models\/e2e-style$/);
    const title = page.locator('[data-testid=model-title]');
    await title.waitFor({ timeout: 30_000 });
    await page.locator('[data-testid=use-style]').waitFor();
    await shot(page, 'training-7-model-page');
    await page.setViewportSize({ width: 375, height: 800 });
    await sleep(300);
    await noHorizontalScroll(page, 'model page');
    await shot(page, 'training-8-model-phone');
    await page.goto(base + '/#/train');
    await page.locator('[data-testid=job-row]').first().waitFor();
    await noHorizontalScroll(page, 'training page');
    await shot(page, 'training-9-train-phone');
    return `job ${jobId}: steps seen ${seen.length}, chart points ${chartReads[0].points}→${chartReads[chartReads.length - 1].points} over ${chartReads.length} reads, ${samples.size} sample images`;
  },

  // Text from other users (a model card's description, a dataset's name) is shown as text,
  // never parsed as HTML (SECURITY.md).
  async 'hostile-text'(page, { base }) {
    const payload = '<img src=x onerror="window.__xss=1"><b id="injected">bold</b>';
    // A built-in's model file with the payload in its card's description.
    const file = Buffer.from(await (await fetch(base + '/v1/models/monet/file')).arrayBuffer());
    const n = Number(file.readBigUInt64LE(0));
    const header = JSON.parse(file.subarray(8, 8 + n).toString('utf8'));
    const card = JSON.parse(header.__metadata__['atelier.card']);
    card.description = payload;
    header.__metadata__['atelier.card'] = JSON.stringify(card);
    const text = Buffer.from(JSON.stringify(header), 'utf8');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(text.length));
    const upload = await fetch(base + '/v1/models?name=hostile', { method: 'POST', body: Buffer.concat([len, text, file.subarray(8 + n)]) });
    assert(upload.status === 201, `upload: ${upload.status} ${await upload.text()}`);
    const form = new FormData();
    form.append('a', new Blob([encodePng(8, 8, new Uint8Array(8 * 8 * 3))]), 'a.png');
    const ds = await fetch(base + '/v1/datasets?kind=single&name=' + encodeURIComponent(payload), { method: 'POST', body: form });
    assert(ds.status === 201, `dataset: ${ds.status} ${await ds.text()}`);
    for (const [hash, where] of [['#/models/hostile', 'model page'], ['#/train', 'training page']]) {
      await page.goto(base + '/' + hash);
      await page.waitForFunction((p) => document.body.innerText.includes(p), payload, { timeout: 30_000 });
      await sleep(300);
      const injected = await page.evaluate(() => ({ xss: window.__xss, b: !!document.getElementById('injected'), img: [...document.images].some((i) => i.getAttribute('src') === 'x') }));
      assert(!injected.xss && !injected.b && !injected.img, `${where}: the payload became markup ${JSON.stringify(injected)}`);
    }
    await shot(page, 'hostile-text', false);
    return 'card description and dataset name shown as text';
  },

  async docs(page, { base }) {
    await page.goto(base + '/docs');
    await page.locator('[data-testid=operation]').first().waitFor({ timeout: 30_000 });
    const paths = await page.locator('[data-testid=operation]').evaluateAll((els) => els.map((e) => e.dataset.path));
    for (const want of ['/v1/stylize', '/v1/jobs']) assert(paths.includes(want), `docs do not list ${want} (listed: ${[...new Set(paths)].join(' ')})`);
    const op = page.locator('[data-testid=operation][data-path="/v1/stylize"]').first();
    await op.locator('summary').click();
    const curl = await op.locator('[data-testid=curl]').innerText();
    assert(curl.includes('/v1/stylize'), 'no curl example for /v1/stylize');
    await shot(page, 'docs-desktop', false);
    await page.setViewportSize({ width: 375, height: 800 });
    await sleep(300);
    await noHorizontalScroll(page, 'docs');
    await shot(page, 'docs-phone', false);
    return `${paths.length} operations`;
  },
};

// ------------------------------------------------------------------ main
async function main() {
  fs.mkdirSync(artifacts, { recursive: true });
  const wanted = process.argv.slice(2);
  for (const w of wanted) if (!scenarios[w]) { console.error(`unknown scenario ${w}; known: ${Object.keys(scenarios).join(' ')}`); process.exit(2); }
  const names = wanted.length ? wanted : Object.keys(scenarios);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'atelier-e2e-files-'));
  let server = null;
  let browser = null;
  let failed = 0;
  const stopAll = async () => {
    if (browser) await browser.close().catch(() => {});
    if (server) await server.stop().catch(() => {});
    browser = server = null;
  };
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, async () => { await stopAll(); process.exit(130); });
  try {
    server = await startServer();
    console.log(`server ${server.base} (data ${server.data})`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: !process.env.E2E_HEADED,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'].filter((a) => a !== '--headless' || !process.env.E2E_HEADED),
    });
    for (const name of names) {
      const t0 = Date.now();
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
      const page = await context.newPage();
      page.setDefaultTimeout(60_000);
      const consoleLog = [];
      const pageErrors = [];
      page.on('console', (m) => consoleLog.push(`[${m.type()}] ${m.text()}`));
      page.on('pageerror', (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));
      try {
        const detail = await scenarios[name](page, { base: server.base, tmp });
        assert(!pageErrors.length, 'uncaught errors in the page: ' + pageErrors.join(' | '));
        console.log(`PASS ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)${detail ? ': ' + detail : ''}`);
      } catch (e) {
        failed++;
        await page.screenshot({ path: path.join(artifacts, `FAIL-${name}.png`), fullPage: true }).catch(() => {});
        const msg = e instanceof Fail ? e.message : String(e && e.stack ? e.stack : e).split('\n').slice(0, 6).join('\n');
        console.log(`FAIL ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s): ${msg}`);
        if (pageErrors.length) console.log('  page errors: ' + pageErrors.join(' | '));
      } finally {
        fs.writeFileSync(path.join(artifacts, `console-${name}.log`), consoleLog.concat(pageErrors.map((e) => '[pageerror] ' + e)).join('\n') + '\n');
        await context.close().catch(() => {});
      }
    }
  } catch (e) {
    failed++;
    console.log(`FAIL setup: ${e instanceof Fail ? e.message : e && e.stack ? e.stack : e}`);
  } finally {
    const data = server && server.data;
    await stopAll();
    fs.rmSync(tmp, { recursive: true, force: true });
    if (data && !failed) fs.rmSync(data, { recursive: true, force: true });
    else if (data) console.log(`server data kept in ${data}`);
  }
  console.log(failed ? `${failed} failed; screenshots and logs in ${artifacts}` : `all passed; screenshots in ${artifacts}`);
  process.exit(failed ? 1 : 0);
}

main();
