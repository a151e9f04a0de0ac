// Atelier web page: a small single-page app over the HTTP API (docs/api.md).
// Plain JS, no dependencies. Hash routes: #/  #/models/NAME  #/train  #/jobs  #/jobs/ID
const KEY_STORE = 'atelier.key';
const MAX_SYNC_SIDE = 2048;
const S = {
  key: readKey(),
  me: null,
  models: null,
  selected: null, // model name chosen for the stylize panel
  file: null, // the photo to stylize
  fileUrl: null,
  fileSize: null, // [w, h]
  result: null, // {url, blob, ext, model, size}
  opts: { strength: 1, max_side: 1024, format: 'jpg' },
  busy: false,
};
let cleanups = [];
const onLeave = (fn) => cleanups.push(fn);

function readKey() {
  try { return localStorage.getItem(KEY_STORE) || ''; } catch { return ''; }
}
function writeKey(k) {
  S.key = k || '';
  try { k ? localStorage.setItem(KEY_STORE, k) : localStorage.removeItem(KEY_STORE); } catch { /* private mode */ }
}

// == DOM helpers
const $ = (sel, root = document) => root.querySelector(sel);
const enc = encodeURIComponent;
/** h('div.card#id', {attrs}, ...children): a small element builder. */
function h(spec, attrs, ...kids) {
  const m = /^([a-z0-9]+)?((?:[.#][\w-]+)*)$/i.exec(spec) || [];
  const el = document.createElement(m[1] || 'div');
  (m[2] || '').replace(/([.#])([\w-]+)/g, (_, t, v) => {
    if (t === '.') el.classList.add(v); else el.id = v;
  });
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    kids.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'tid') el.dataset.testid = v;
    else if (k === 'class') el.className = v;
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k === 'html') el.innerHTML = v;
    else if (k in el && !k.includes('-') && k !== 'list' && k !== 'form') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, kids);
  return el;
}
function append(el, kids) {
  for (const c of kids.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}
const SVG_ATTRS = { viewBox: '0 0 24 24', fill: 'none', stroke: 'currentColor', 'stroke-width': 2, 'stroke-linecap': 'round', 'stroke-linejoin': 'round', 'aria-hidden': 'true' };
function icon(path, size = 18) {
  const s = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  for (const [k, v] of Object.entries({ ...SVG_ATTRS, width: size, height: size })) s.setAttribute(k, v);
  s.innerHTML = path;
  return s;
}
const I = {
  upload: '<path d="M12 16V4m0 0l-5 5m5-5l5 5"/><path d="M4 16v3a1 1 0 001 1h14a1 1 0 001-1v-3"/>',
  check: '<path d="M5 12l5 5 9-10"/>',
  download: '<path d="M12 4v12m0 0l-5-5m5 5l5-5"/><path d="M4 20h16"/>',
  arrows: '<path d="M9 6l-6 6 6 6M15 6l6 6-6 6"/>',
  wand: '<path d="M15 4V2m0 14v-2M8 9h2m10 0h2M17.8 11.8L19 13m-4-4l-1.2-1.2M17.8 6.2L19 5M3 21l9-9"/>',
};
const spinner = (lg) => h(lg ? 'span.spinner.spinner-lg' : 'span.spinner', { 'aria-hidden': 'true' });
const loading = (text = 'Loading…') => h('p.loading', spinner(), text);

// == formatting
const fmt = {
  int: (n) => (n == null ? '—' : Number(n).toLocaleString('en-US')),
  params(n) {
    if (n == null) return '—';
    if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 1 : 2) + ' M';
    if (n >= 1e3) return (n / 1e3).toFixed(n >= 1e5 ? 0 : 1) + ' k';
    return String(n);
  },
  bytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1 << 20) return (n / 1024).toFixed(0) + ' KB';
    return (n / (1 << 20)).toFixed(1) + ' MB';
  },
  dur(s) {
    if (s == null || !isFinite(s)) return '—';
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60 ? (s % 60) + ' s' : '');
    return Math.floor(s / 3600) + ' h ' + Math.round((s % 3600) / 60) + ' min';
  },
  ago(t) {
    if (!t) return '';
    const d = Date.now() / 1000 - t;
    if (d < 45) return 'just now';
    if (d < 3600) return Math.round(d / 60) + ' min ago';
    if (d < 86400) return Math.round(d / 3600) + ' h ago';
    if (d < 86400 * 14) return Math.round(d / 86400) + ' d ago';
    return new Date(t * 1000).toLocaleDateString();
  },
  date: (t) => (t ? new Date(t * 1000).toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' }) : '—'),
  loss(v) {
    if (v == null || !isFinite(v)) return '—';
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(2);
    return v.toFixed(a < 1 ? 4 : a < 100 ? 3 : 1);
  },
};

// == errors
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}
function showError(err, prefix) {
  const box = $('#error');
  const code = err && err.code ? err.code : '';
  let msg = err && err.message ? err.message : String(err);
  if (prefix) msg = prefix + ': ' + msg;
  $('#error-code').textContent = code;
  $('#error-message').textContent = msg;
  box.dataset.code = code;
  box.hidden = false;
}
function clearError() {
  const box = $('#error');
  box.hidden = true;
  box.dataset.code = '';
}

// == the one fetch helper
/**
 * Every request goes through here: adds `Authorization: Bearer KEY` when a key is set,
 * turns non-2xx answers into ApiError from the JSON body `{"error": {code, message}}` and
 * shows them (unless `quiet`). Returns parsed JSON, text, or the Response with `raw`.
 */
async function api(path, opts = {}) {
  const headers = new Headers(opts.headers || {});
  if (S.key) headers.set('Authorization', 'Bearer ' + S.key);
  let body = opts.body;
  if (opts.json !== undefined) {
    headers.set('Content-Type', 'application/json');
    body = JSON.stringify(opts.json);
  }
  let res;
  try {
    res = await fetch(path, { method: opts.method || (body ? 'POST' : 'GET'), headers, body, signal: opts.signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    const err = new ApiError(0, 'network', 'Cannot reach the server (' + (e.message || e) + ')');
    if (!opts.quiet) showError(err);
    throw err;
  }
  if (!res.ok) {
    let code = 'http_' + res.status;
    let message = res.statusText || 'Request failed';
    try {
      const text = await res.text();
      try {
        const j = JSON.parse(text);
        const e = j && (j.error || j);
        if (e && typeof e === 'object') {
          code = e.code || code;
          message = e.message || message;
        } else if (typeof e === 'string') message = e;
      } catch {
        if (text && text.length < 300) message = text;
      }
    } catch { /* body unreadable */ }
    const ra = res.headers.get('Retry-After');
    if (res.status === 429 && ra) message += ' (try again in ' + ra + ' s)';
    const err = new ApiError(res.status, code, message);
    if (ra) err.retryAfter = Number(ra);
    if (res.status === 401 && !opts.noSignin) openSignin(S.key ? 'The server did not accept your API key.' : '');
    if (!opts.quiet) showError(err);
    throw err;
  }
  if (opts.raw) return res;
  if (res.status === 204) return null;
  const ct = res.headers.get('Content-Type') || '';
  return ct.includes('json') ? res.json() : res.text();
}

/** Images behind auth: with a key, fetch through api() into an object URL. */
function loadImage(img, url, onFail) {
  const holder = img.parentElement;
  img.onerror = () => {
    if (holder && holder.classList.contains('thumb')) holder.classList.add('broken');
    if (onFail) onFail();
  };
  img.onload = () => holder && holder.classList.remove('broken');
  if (!S.key) {
    img.src = url;
    return;
  }
  api(url, { raw: true, quiet: true })
    .then((r) => r.blob())
    .then((b) => {
      if (img.dataset.blob) URL.revokeObjectURL(img.dataset.blob);
      img.dataset.blob = URL.createObjectURL(b);
      img.src = img.dataset.blob;
    })
    .catch(() => img.onerror());
}
/** Links to files behind auth: with a key, download through api(). */
function authLink(a, filename) {
  a.addEventListener('click', async (e) => {
    if (!S.key) return;
    e.preventDefault();
    try {
      const blob = await (await api(a.getAttribute('href'), { raw: true })).blob();
      const url = URL.createObjectURL(blob);
      const tmp = h('a', { href: url, download: filename || a.getAttribute('download') || '' });
      document.body.append(tmp);
      tmp.click();
      tmp.remove();
      setTimeout(() => URL.revokeObjectURL(url), 30000);
    } catch { /* shown */ }
  });
  return a;
}

// == sign-in
async function loadMe() {
  try {
    S.me = await api('/v1/me', { quiet: true, noSignin: true });
  } catch (e) {
    S.me = null;
    if (e.status === 401) {
      renderWho();
      openSignin(S.key ? 'The server did not accept the stored API key. Paste a valid one.' : '');
      return false;
    }
    if (e.status === 404) S.me = { owner: 'local', open: true }; // older server without /v1/me
  }
  renderWho();
  if (S.me && S.me.open === false && !S.key) {
    openSignin('');
    return false;
  }
  return true;
}
function renderWho() {
  const box = $('#who');
  box.replaceChildren();
  const me = S.me;
  if (me && me.owner) {
    box.append(h('span.avatar', { 'aria-hidden': 'true' }, me.owner.slice(0, 1)));
    box.append(h('span', h('span.visually-hidden', 'Signed in as '), h('span.owner', { tid: 'owner' }, me.owner),
      me.open && !S.key ? h('span.mode.faint', ' · open mode') : null));
  }
  if (S.key) {
    box.append(h('button.link-button', { type: 'button', tid: 'signout', onclick: signOut }, 'Sign out'));
  } else {
    box.append(h('button.link-button', { type: 'button', tid: 'signin-link', onclick: () => openSignin('') },
      me && me.owner ? 'Use API key' : 'Sign in'));
  }
}
function openSignin(message) {
  const ov = $('#signin');
  const err = $('#signin-error');
  err.textContent = message || '';
  err.hidden = !message;
  $('#signin-cancel').hidden = !(S.me && S.me.open) && !S.key;
  ov.hidden = false;
  setTimeout(() => $('#signin-key').focus(), 0);
}
function closeSignin() {
  $('#signin').hidden = true;
  if (!S.me && S.key) signOut(); // the stored key was rejected: forget it
}
async function signIn(e) {
  e.preventDefault();
  const key = $('#signin-key').value.trim();
  if (!key) return;
  const old = S.key;
  S.key = key;
  try {
    const me = await api('/v1/me', { quiet: true, noSignin: true });
    writeKey(key);
    S.me = me;
    $('#signin-key').value = '';
    closeSignin();
    clearError();
    S.models = null;
    renderWho();
    route();
  } catch (err) {
    S.key = old;
    const m = $('#signin-error');
    m.textContent = err.status === 401 ? 'This key was not accepted.' : err.message;
    m.hidden = false;
  }
}
/** Who am I; then the page, or the sign-in box when the server needs a key. */
async function start() {
  if (await loadMe()) route();
  else $('#view').replaceChildren(h('div.empty', 'Sign in to continue.'));
}
async function signOut() {
  writeKey('');
  S.me = null;
  S.models = null;
  await start();
}

// == router
const routes = [
  [/^\/?$/, viewHome, 'home'],
  [/^\/models\/(.+)$/, viewModel, 'home'],
  [/^\/train\/?$/, viewTrain, 'train'],
  [/^\/jobs\/?$/, viewJobs, 'jobs'],
  [/^\/jobs\/([^/]+)$/, viewJob, 'jobs'],
];
let routeSeq = 0;
async function route() {
  for (const fn of cleanups.splice(0)) {
    try { fn(); } catch { /* ignore */ }
  }
  clearError();
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, qs] = raw.split('?');
  const params = new URLSearchParams(qs || '');
  const view = $('#view');
  const seq = ++routeSeq;
  for (const [re, fn, nav] of routes) {
    const m = re.exec(path);
    if (!m) continue;
    for (const a of document.querySelectorAll('[data-nav]')) {
      a.classList.toggle('active', a.dataset.nav === nav);
      a.toggleAttribute('aria-current', a.dataset.nav === nav);
    }
    const root = h('div.view');
    view.replaceChildren(root);
    try {
      await fn(root, m.slice(1).map(decodeURIComponent), params, () => seq === routeSeq);
    } catch (e) {
      if (seq !== routeSeq) return;
      if (!(e instanceof ApiError)) {
        console.error(e);
        showError(e);
      }
      if (!root.childElementCount || (root.childElementCount === 1 && root.firstElementChild.matches('.loading'))) {
        root.replaceChildren(h('div.empty', { tid: 'page-error' }, (e && e.message) || 'This page could not be loaded.', ' ', h('a', { href: '#/' }, 'Back to the styles')));
      }
    }
    return;
  }
  view.replaceChildren(h('div.empty', 'No such page. ', h('a', { href: '#/' }, 'Go to the styles')));
}
const setTitle = (t) => { document.title = t ? t + ' · Atelier' : 'Atelier'; };

async function getModels(force) {
  if (!S.models || force) {
    const r = await api('/v1/models');
    S.models = (r && r.models) || (Array.isArray(r) ? r : []);
  }
  return S.models;
}
const modelTitle = (m) => m.title || m.name;
const canStylize = (m) => m.can_stylize !== false && !m.error;
function badge(vis) {
  const v = vis || 'builtin';
  const label = { builtin: 'Built-in', public: 'Public', private: 'Private' }[v] || v;
  return h('span.badge.badge-' + v, { tid: 'badge' }, label);
}

// == home: gallery + stylize
async function viewHome(root, _m, params, alive) {
  setTitle('');
  root.append(h('div.hero', h('h1', 'Stylize a photo'),
    h('p', 'Pick a style, drop a photo, and compare the result with the original.')));
  const studio = h('section.studio.card', { 'aria-label': 'Stylize' });
  S.studio = studio;
  const gallery = h('div.gallery', { tid: 'gallery', role: 'list' });
  root.append(studio, h('div.section-head', h('h2', 'Styles'),
    h('a.small', { href: '#/train' }, 'Train your own →')), gallery);
  gallery.append(h('p.loading', spinner(), 'Loading styles…'));
  renderStudio(studio);

  const models = await getModels(true);
  if (!alive()) return;
  const want = params.get('style');
  if (want && models.some((m) => m.name === want)) S.selected = want;
  if (!S.selected || !models.some((m) => m.name === S.selected)) {
    const first = models.find(canStylize);
    S.selected = first ? first.name : null;
  }
  gallery.replaceChildren();
  if (!models.length) {
    gallery.append(h('div.empty', 'No styles yet. ', h('a', { href: '#/train' }, 'Train one'), ' or import a checkpoint with the API.'));
  }
  for (const m of models) gallery.append(styleCard(m, studio, gallery));
  renderStudio(studio);
}

function styleCard(m, studio, gallery) {
  const img = h('img', { alt: '', loading: 'lazy', width: 256, height: 256 });
  const thumb = h('div.thumb', img, h('span.check', icon(I.check, 15)));
  if (m.thumbnail_url) loadImage(img, m.thumbnail_url);
  else thumb.classList.add('broken');
  const ok = canStylize(m);
  const card = h('article.style-card.card', {
    tid: 'style-card', 'data-name': m.name, role: 'listitem',
    class: 'style-card card' + (m.name === S.selected ? ' selected' : '') + (ok ? '' : ' disabled'),
    onclick: (e) => {
      if (e.target.closest('a')) return;
      if (!ok) {
        showError({ code: 'model_cannot_stylize', message: `"${modelTitle(m)}" cannot stylize photos (it generates images from noise).` });
        return;
      }
      S.selected = m.name;
      for (const c of gallery.children) c.classList.toggle('selected', c.dataset.name === m.name);
      for (const b of gallery.querySelectorAll('.select')) b.setAttribute('aria-pressed', b.closest('.style-card').dataset.name === m.name);
      renderStudio(studio);
      if (studio.getBoundingClientRect().top < 0) studio.scrollIntoView({ behavior: 'smooth', block: 'start' });
    },
  },
  h('button.select', { type: 'button', 'aria-pressed': String(m.name === S.selected), 'aria-label': 'Use style ' + modelTitle(m) },
    thumb,
    h('div.body', h('div.title', modelTitle(m)), h('div.name', m.name))),
  h('div.foot', badge(m.visibility), h('a', { href: '#/models/' + enc(m.name), tid: 'model-link' }, 'Details')));
  return card;
}

function renderStudio(studio) {
  const model = (S.models || []).find((m) => m.name === S.selected);
  studio.replaceChildren(stageEl(studio), controlsEl(studio, model));
}

function setFile(file, studio) {
  if (!file) return;
  clearError();
  if (S.fileUrl) URL.revokeObjectURL(S.fileUrl);
  if (S.result) URL.revokeObjectURL(S.result.url);
  S.file = file;
  S.fileUrl = URL.createObjectURL(file);
  S.fileSize = null;
  S.result = null;
  const probe = new Image();
  probe.onload = () => {
    if (S.file !== file) return;
    S.fileSize = [probe.naturalWidth, probe.naturalHeight];
    renderStudio(studio);
  };
  probe.src = S.fileUrl;
  renderStudio(studio);
}

function stageEl(studio) {
  const stage = h('div.stage', { tid: 'stage' });
  // drag and drop anywhere on the stage
  let depth = 0;
  stage.addEventListener('dragenter', (e) => { e.preventDefault(); depth++; stage.classList.add('dragover'); });
  stage.addEventListener('dragover', (e) => { e.preventDefault(); e.dataTransfer.dropEffect = 'copy'; });
  stage.addEventListener('dragleave', () => { if (--depth <= 0) { depth = 0; stage.classList.remove('dragover'); } });
  stage.addEventListener('drop', (e) => {
    e.preventDefault();
    depth = 0;
    stage.classList.remove('dragover');
    const f = e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) setFile(f, studio);
  });

  if (!S.file) {
    stage.append(h('label.dropzone', { for: 'file-input', tid: 'dropzone' },
      h('span.dropzone-icon', icon(I.upload, 26)),
      h('strong', 'Drop a photo here'),
      h('span', 'or click to choose a file'),
      h('span.small.faint', 'JPEG, PNG or WebP')));
    return stage;
  }
  const size = S.fileSize ? S.fileSize.join(' × ') + ' px' : '';
  if (S.result) {
    stage.append(compareEl(S.fileUrl, S.result.url),
      h('div.stage-caption', { style: { marginTop: '12px' } },
        h('span', 'Drag the divider (or use ← →) to compare'),
        S.result.size ? h('span', 'Result ' + S.result.size.replace('x', ' × ') + ' px') : null));
  } else {
    stage.append(h('figure.stage-figure',
      h('img', {
        src: S.fileUrl, alt: 'The photo to stylize', tid: 'original-image',
        onerror: (e) => e.target.replaceWith(h('div.empty', 'No preview: the browser cannot show this file.')),
      }),
      h('figcaption.stage-caption', h('span', S.file.name), size ? h('span', size) : null, h('span', fmt.bytes(S.file.size)))));
  }
  if (S.busy) {
    const t0 = Date.now();
    const el = h('span.muted', '0 s');
    const tick = setInterval(() => {
      if (!el.isConnected) clearInterval(tick);
      el.textContent = Math.round((Date.now() - t0) / 1000) + ' s';
    }, 500);
    onLeave(() => clearInterval(tick));
    stage.append(h('div.stage-busy', { tid: 'progress', role: 'status' }, spinner(true),
      h('span', 'Stylizing…'), el));
  }
  return stage;
}

function compareEl(before, after) {
  const range = h('input', {
    type: 'range', min: 0, max: 100, step: 1, value: 50, tid: 'compare-slider',
    'aria-label': 'Comparison divider: left of it the original, right of it the result', 'aria-valuetext': '50% original',
  });
  const box = h('div.compare', { tid: 'compare' },
    h('img.after', { src: after, alt: 'Stylized result', tid: 'result-image' }),
    h('img.before', { src: before, alt: 'Original photo', tid: 'before-image' }),
    range,
    h('div.divider', h('span.handle', icon(I.arrows, 18))),
    h('span.tag.tag-before', 'Original'),
    h('span.tag.tag-after', 'Stylized'));
  const set = (v) => {
    v = Math.max(0, Math.min(100, v));
    box.style.setProperty('--pos', v + '%');
    range.value = String(Math.round(v));
    range.setAttribute('aria-valuetext', Math.round(v) + '% original');
  };
  range.addEventListener('input', () => set(Number(range.value)));
  const ar = (w, h2) => w && h2 && box.style.setProperty('--ar', String(w / h2));
  if (S.fileSize) ar(...S.fileSize);
  box.firstChild.addEventListener('load', (e) => ar(e.target.naturalWidth, e.target.naturalHeight));
  const fromEvent = (e) => {
    const r = box.getBoundingClientRect();
    set(((e.clientX - r.left) / r.width) * 100);
  };
  let dragging = null;
  box.addEventListener('pointerdown', (e) => {
    if (e.button !== 0) return;
    dragging = e.pointerId;
    box.setPointerCapture(e.pointerId);
    fromEvent(e);
    range.focus({ preventScroll: true });
    e.preventDefault();
  });
  box.addEventListener('pointermove', (e) => { if (dragging === e.pointerId) fromEvent(e); });
  const stop = (e) => { if (dragging === e.pointerId) dragging = null; };
  box.addEventListener('pointerup', stop);
  box.addEventListener('pointercancel', stop);
  return box;
}

function controlsEl(studio, model) {
  const form = h('form.controls', { tid: 'stylize-form', novalidate: true });
  const chosen = h('div.chosen-style', { tid: 'chosen-style' });
  if (model) {
    const img = h('img', { alt: '' });
    if (model.thumbnail_url) loadImage(img, model.thumbnail_url);
    chosen.append(img, h('div', h('div.k', 'Style'), h('div.t', modelTitle(model))),
      h('a.small', { href: '#/models/' + enc(model.name) }, 'About'));
  } else {
    chosen.append(h('span.ph'), h('div', h('div.k', 'Style'), h('div.t.faint', S.models ? 'Pick one below' : 'Loading…')));
  }
  const input = h('input.visually-hidden#file-input', {
    type: 'file', accept: 'image/*', tid: 'file-input', 'aria-label': 'Photo to stylize',
    onchange: () => input.files[0] && setFile(input.files[0], studio),
  });
  const pick = h('label.btn.btn-secondary.btn-sm.file-pick', { for: 'file-input' }, icon(I.upload, 16), S.file ? 'Replace' : 'Choose photo');
  input.addEventListener('focus', () => pick.classList.add('focus'));
  input.addEventListener('blur', () => pick.classList.remove('focus'));

  const strengthOut = h('output', { for: 'strength' }, Math.round(S.opts.strength * 100) + '%');
  const strength = h('input#strength', {
    type: 'range', min: 0, max: 1, step: 0.05, value: S.opts.strength, tid: 'strength',
    oninput: () => { S.opts.strength = Number(strength.value); strengthOut.textContent = Math.round(S.opts.strength * 100) + '%'; },
  });
  const sel = (id, key, options, label) => h('div.field',
    h('label', { for: id }, label),
    h('select', {
      id, tid: id, onchange: (e) => { S.opts[key] = key === 'max_side' ? Number(e.target.value) : e.target.value; },
    }, options.map(([v, t]) => h('option', { value: v, selected: String(S.opts[key]) === String(v) }, t))));

  const button = h('button.btn.btn-lg.btn-block', {
    type: 'submit', tid: 'stylize-button', disabled: S.busy || !model || !canStylize(model) || !S.file,
  }, S.busy ? [spinner(), 'Stylizing…'] : [icon(I.wand), 'Stylize']);
  const actions = h('div.actions', button);
  if (S.result) {
    actions.append(h('a.btn.btn-secondary.btn-block', {
      href: S.result.url, download: S.result.name, tid: 'download-link',
    }, icon(I.download), 'Download ' + S.result.ext.toUpperCase()));
  }
  form.append(chosen,
    h('div.file-row', input, pick, h('span.file-name', S.file ? S.file.name : 'No photo chosen')),
    h('div.field', h('div.range-head', h('label', { for: 'strength' }, 'Strength'), strengthOut), strength,
      h('p.hint', '0 keeps the original, 1 is fully stylized.')),
    h('div.grid-2.keep',
      sel('max-side', 'max_side', [[512, '512 px'], [1024, '1024 px'], [2048, '2048 px']], 'Size (long side)'),
      sel('format', 'format', [['jpg', 'JPEG'], ['png', 'PNG'], ['webp', 'WebP (lossless)']], 'Format')),
    actions);
  if (S.fileSize && Math.max(...S.fileSize) > MAX_SYNC_SIDE) {
    form.append(h('div.notice.notice-info.size-note', { tid: 'size-note' },
      `This photo is ${S.fileSize.join(' × ')} px. Instant results are at most ${MAX_SYNC_SIDE} px on the long side; `,
      'for full resolution run it as a job (',
      h('code', 'POST /v1/jobs'), ', see ', h('a', { href: '/docs' }, 'API'), ').',
      h('div', { style: { marginTop: '8px' } }, h('button.btn.btn-secondary.btn-sm', {
        type: 'button', tid: 'full-size-job', disabled: !model || S.busy, onclick: () => fullSizeJob(model),
      }, 'Stylize at full size as a job'))));
  }
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    stylize(studio, model);
  });
  return form;
}

const EXT = { 'image/jpeg': 'jpg', 'image/png': 'png', 'image/webp': 'webp' };
async function stylize(studio, model) {
  if (!model || !S.file || S.busy) return;
  clearError();
  S.busy = true;
  renderStudio(studio);
  const q = new URLSearchParams({ model: model.name, strength: String(S.opts.strength), max_side: String(S.opts.max_side), format: S.opts.format });
  try {
    // The server queues a few requests itself; when it is busier than that it answers 429
    // with Retry-After: wait that long (up to three times) before showing an error.
    let res;
    for (let attempt = 0; ; attempt++) {
      try {
        res = await api('/v1/stylize?' + q, { method: 'POST', body: S.file, headers: { 'Content-Type': S.file.type || 'application/octet-stream' }, raw: true, quiet: attempt < 3 });
        break;
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 429 || e.code !== 'overloaded' || attempt >= 3) {
          // (asked quietly: a busy answer is retried, anything else is shown here)
          if (e instanceof ApiError && attempt < 3) showError(e);
          throw e;
        }
        const wait = Math.min(30, Math.max(1, e.retryAfter || 2));
        showError(new ApiError(429, e.code, `The server is busy with other images; trying again in ${wait} s…`));
        await new Promise((r) => setTimeout(r, wait * 1000));
      }
    }
    clearError();
    const blob = await res.blob();
    const type = (res.headers.get('Content-Type') || blob.type || '').split(';')[0];
    const ext = EXT[type] || S.opts.format;
    const base = S.file.name.replace(/\.[^.]+$/, '') || 'image';
    if (S.result) URL.revokeObjectURL(S.result.url);
    S.result = { url: URL.createObjectURL(blob), ext, name: `${base}-${model.name}.${ext}`, size: res.headers.get('X-Atelier-Size') };
  } catch { /* shown by api() */ }
  S.busy = false;
  if (S.studio && S.studio.isConnected) renderStudio(S.studio);
}

async function fullSizeJob(model) {
  const fd = new FormData();
  fd.append('spec', JSON.stringify({ type: 'stylize', model: model.name, format: S.opts.format, strength: S.opts.strength, max_side: Math.max(...S.fileSize) }));
  fd.append('image', S.file, S.file.name);
  try {
    const job = await api('/v1/jobs', { method: 'POST', body: fd });
    location.hash = '#/jobs/' + enc(job.id);
  } catch { /* shown */ }
}

// == model page
async function viewModel(root, [name], _p, alive) {
  setTitle(name);
  root.append(loading());
  const m = await api('/v1/models/' + enc(name));
  if (!alive()) return;
  setTitle(modelTitle(m));
  const card = m.card || {};
  const img = h('img', { alt: 'Preview: a photo stylized by ' + modelTitle(m), tid: 'model-thumbnail' });
  const thumb = h('div.thumb', img);
  if (m.thumbnail_url) loadImage(img, m.thumbnail_url); else thumb.classList.add('broken');
  const actions = h('div.actions-row');
  if (canStylize(m)) {
    actions.append(h('a.btn', { href: '#/?style=' + enc(m.name), tid: 'use-style' }, icon(I.wand), 'Use this style'));
  }
  if (m.file_url) {
    actions.append(authLink(h('a.btn.btn-secondary', { href: m.file_url, download: m.name + '.safetensors', tid: 'model-file' },
      icon(I.download), 'Model file'), m.name + '.safetensors'));
  }
  if (m.mine && m.visibility === 'private') {
    actions.append(h('button.btn.btn-secondary', {
      type: 'button', tid: 'publish',
      onclick: action(`Publish "${modelTitle(m)}"? Everyone on this server will see it in the gallery.`, async () => {
        await api('/v1/models/' + enc(m.name) + '/publish', { method: 'POST' });
        S.models = null;
        route();
      }),
    }, 'Publish'));
  }
  if (m.mine) {
    actions.append(h('button.btn.btn-danger', {
      type: 'button', tid: 'delete-model',
      onclick: action(`Delete "${modelTitle(m)}"? This cannot be undone.`, async () => {
        await api('/v1/models/' + enc(m.name), { method: 'DELETE' });
        S.models = null;
        if (S.selected === m.name) S.selected = null;
        location.hash = '#/';
      }),
    }, 'Delete'));
  }
  const arch = card.arch && typeof card.arch === 'object' ? card.arch : null;
  const trainSize = m.train_size || (card.input && card.input.train_size);
  const facts = h('dl.facts',
    fact('Architecture', m.arch || (arch && arch.type) || '—'),
    fact('Family', m.family || '—'),
    fact('Trained at', trainSize ? trainSize + ' px' : '—'),
    fact('Parameters', fmt.params(m.parameters)),
    fact('Owner', m.owner || '—'),
    fact('Added', m.created ? fmt.date(m.created) : '—'));
  root.replaceChildren(
    h('div.crumbs', h('a', { href: '#/' }, 'Styles'), ' / ', m.name),
    h('section.model-head',
      thumb,
      h('div',
        h('h1', { tid: 'model-title' }, modelTitle(m)),
        h('div.row', badge(m.visibility), h('span.mono.faint', m.name), canStylize(m) ? null : h('span.badge.badge-builtin', 'noise generator')),
        h('p.desc', { style: { marginTop: '12px' } }, m.description || card.description || 'No description.'),
        actions)),
    h('section.panel.card', { style: { marginTop: '28px' } }, h('h2', 'Model card'), facts,
      arch ? h('div', { style: { marginTop: '18px' } }, h('div.label', 'Hyper-parameters'),
        h('div.chips', Object.entries(arch).map(([k, v]) => h('span.chip', k + ': ' + (typeof v === 'object' ? JSON.stringify(v) : v))))) : null),
    cardDetails(card, m));
}
const fact = (k, v) => h('div.fact', h('dt', k), h('dd', v));
/** A click handler: optional confirm, button disabled while `fn` runs (re-enabled if it fails). */
const action = (question, fn) => async (e) => {
  const b = e.currentTarget;
  if (question && !confirm(question)) return;
  b.disabled = true;
  try { await fn(); } catch { b.disabled = false; }
};

function cardDetails(card, m) {
  const out = h('div');
  const data = card.data || {};
  const prov = card.provenance || {};
  const rows = [];
  const add = (k, v) => { if (v != null && v !== '') rows.push(h('dt', k), h('dd', v)); };
  add('Training data', data.description || (typeof m.data === 'string' ? m.data : ''));
  add('Data licence', data.licence || data.license);
  add('Weights licence', card.license || card.licence);
  add('Input range', card.input && card.input.range);
  if (card.inference && card.inference.batch_stats) add('Inference', 'batch statistics of the input');
  add('Source', prov.source);
  add('Original file', prov.original_file);
  if (prov.original_sha256) add('Original sha256', h('code', prov.original_sha256));
  add('Training steps', prov.steps != null ? fmt.int(prov.steps) : null);
  add('Hardware', prov.hardware);
  add('Created', prov.created && /^\d+$/.test(prov.created) ? fmt.date(Number(prov.created)) : prov.created);
  add('Written by', prov.written_by);
  if (rows.length) out.append(h('section.panel.card', h('h2', 'Data and provenance'), h('dl.kv', rows)));
  const metrics = Object.entries(card.metrics || {});
  if (metrics.length) {
    out.append(h('section.panel.card', h('h2', 'Metrics'), h('table.simple',
      h('thead', h('tr', h('th', 'Metric'), h('th', { style: { textAlign: 'right' } }, 'Value'))),
      h('tbody', metrics.map(([k, v]) => h('tr', h('td.mono', k), h('td.num', typeof v === 'number' ? fmt.loss(v) : String(v))))))));
  }
  const notes = card.notes || [];
  if (notes.length) out.append(h('section.panel.card', h('h2', 'Notes'), h('ul.notes', notes.map((n) => h('li', n)))));
  for (const s of out.children) s.style.marginTop = '20px';
  return out;
}

// == training page
async function viewTrain(root, _m, params, alive) {
  setTitle('Train');
  root.append(h('div.page-head', h('div', h('h1', 'Train a style'),
    h('p.muted', 'Upload two sets of images, pick a network and watch it learn.'))));
  const dsList = h('div.list', { tid: 'datasets' }, loading());
  const jobForm = h('form', { tid: 'job-form', novalidate: true });
  const jobsBox = h('div.jobs.card', { tid: 'jobs' });
  let datasets = [];
  let preselect = params.get('dataset');

  async function refreshDatasets() {
    try {
      const r = await api('/v1/datasets');
      datasets = (r && r.datasets) || [];
    } catch { datasets = []; }
    if (!alive()) return;
    dsList.replaceChildren();
    if (!datasets.length) dsList.append(h('p.muted.small', 'No datasets yet. Create one below.'));
    for (const d of datasets) {
      dsList.append(h('div.list-row', { tid: 'dataset-row', 'data-id': d.id },
        h('div.main', h('div.t', d.name),
          h('div.sub', h('span.badge.badge-kind', d.kind), h('span', counts(d)), h('span.mono', d.id), h('span', fmt.ago(d.created)))),
        h('button.btn.btn-danger.btn-sm', {
          type: 'button', tid: 'delete-dataset', 'aria-label': 'Delete dataset ' + d.name,
          onclick: action(`Delete dataset "${d.name}"?`, async () => {
            await api('/v1/datasets/' + enc(d.id), { method: 'DELETE' });
            refreshDatasets();
          }),
        }, 'Delete')));
    }
    renderJobForm();
  }
  const counts = (d) => (d.kind === 'single' ? `${fmt.int(d.count_a)} images` : `A ${fmt.int(d.count_a)} · B ${fmt.int(d.count_b)}`);

  // dataset form
  const dsResult = h('div', { tid: 'dataset-result', 'aria-live': 'polite' });
  const kindHints = {
    unpaired: ['Domain A (e.g. photos)', 'Domain B (e.g. paintings)', 'FastCUT, CUT or CycleGAN: two unrelated sets of images.'],
    paired: ['Inputs (or side-by-side AB images)', 'Targets (matched by file name)', 'pix2pix: files in A and B pair up by name.'],
    single: ['Images', '', 'DCGAN: one set of images to imitate.'],
  };
  const fileField = (id, name) => {
    const inp = h('input', { type: 'file', id, name, multiple: true, accept: 'image/*,.zip,application/zip', tid: 'files-' + name });
    const sum = h('div.files-summary');
    inp.addEventListener('change', () => {
      const fs = [...inp.files];
      sum.textContent = fs.length ? `${fs.length} file${fs.length > 1 ? 's' : ''}, ${fmt.bytes(fs.reduce((a, f) => a + f.size, 0))}` : '';
    });
    const lab = h('label', { for: id });
    return { inp, lab, box: h('div.field', lab, inp, sum) };
  };
  const fa = fileField('ds-a', 'a');
  const fb = fileField('ds-b', 'b');
  const kindSel = h('select#ds-kind', { name: 'kind', tid: 'dataset-kind' },
    [['unpaired', 'Unpaired (FastCUT, CycleGAN)'], ['paired', 'Paired (pix2pix)'], ['single', 'Single set (DCGAN)']].map(([v, t]) => h('option', { value: v }, t)));
  const kindHint = h('p.hint');
  const syncKind = () => {
    const [a, b, hint] = kindHints[kindSel.value];
    fa.lab.textContent = a;
    fb.lab.textContent = b;
    fb.box.hidden = kindSel.value === 'single';
    kindHint.textContent = hint;
  };
  kindSel.addEventListener('change', syncKind);
  syncKind();
  const dsName = h('input#ds-name', { type: 'text', name: 'name', required: true, maxLength: 100, placeholder: 'e.g. photos-to-monet', tid: 'dataset-name', autocomplete: 'off' });
  const dsSubmit = h('button.btn', { type: 'submit', tid: 'create-dataset' }, 'Upload dataset');
  const dsForm = h('form', { tid: 'dataset-form', novalidate: true },
    h('div.grid-2',
      h('div.field', h('label', { for: 'ds-name' }, 'Name'), dsName),
      h('div.field', h('label', { for: 'ds-kind' }, 'Kind'), kindSel)),
    kindHint,
    h('div.grid-2', { style: { marginTop: '12px' } }, fa.box, fb.box),
    h('p.hint', { style: { marginTop: '-6px', marginBottom: '14px' } }, 'Images (JPEG, PNG, WebP) or .zip archives of images; several files at once.'),
    h('div.row-end', dsSubmit),
    dsResult);
  dsForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearError();
    dsResult.replaceChildren();
    const name = dsName.value.trim();
    if (!name) { showError({ code: 'bad_request', message: 'Give the dataset a name.' }); dsName.focus(); return; }
    if (!fa.inp.files.length) { showError({ code: 'bad_request', message: 'Choose at least one image or .zip for domain A.' }); return; }
    if (kindSel.value !== 'single' && !fb.inp.files.length) { showError({ code: 'bad_request', message: 'Choose images for domain B too.' }); return; }
    const fd = new FormData();
    for (const f of fa.inp.files) fd.append('a', f, f.name);
    if (kindSel.value !== 'single') for (const f of fb.inp.files) fd.append('b', f, f.name);
    dsSubmit.disabled = true;
    dsSubmit.replaceChildren(spinner(), 'Uploading…');
    try {
      const d = await api('/v1/datasets?' + new URLSearchParams({ name, kind: kindSel.value }), { method: 'POST', body: fd });
      const skipped = d.skipped || [];
      dsResult.append(h('div.notice.notice-ok', { tid: 'dataset-created' }, `Created "${d.name}": ${counts(d)}.`));
      if (skipped.length) {
        dsResult.append(h('div.notice.notice-warn', { tid: 'skipped' }, `Skipped ${skipped.length} file${skipped.length > 1 ? 's' : ''}:`,
          h('ul', skipped.slice(0, 50).map((s) => h('li', h('code', s.file || s.name || '?'), ' — ', s.reason || 'unreadable')))));
      }
      dsForm.reset();
      syncKind();
      for (const s of dsForm.querySelectorAll('.files-summary')) s.textContent = '';
      preselect = d.id;
      await refreshDatasets();
    } catch { /* shown */ }
    dsSubmit.disabled = false;
    dsSubmit.replaceChildren('Upload dataset');
  });

  // job form
  const J = { dataset: '', family: 'fastcut', init: 'monet', name: '', steps: 2000, size: 128, net_g: 'resnet_6blocks_resize', ngf: 32, sample_every: 100, precision: 'f32' };
  const NGF_DEFAULT = { light: 32, resnet_6blocks: 64, resnet_6blocks_resize: 32, unet: 64 };
  const FAMILY_FOR = { unpaired: 'fastcut', paired: 'pix2pix', single: 'dcgan' };
  const UNPAIRED = ['fastcut', 'cut', 'cyclegan'];
  // Styles a new one can start from (built-ins and the caller's image-to-image models).
  let initChoices = [];
  getModels().then((ms) => {
    initChoices = ms.filter((m) => canStylize(m)).map((m) => m.name);
    if (alive()) renderJobForm();
  }).catch(() => {});
  // The ETA and warnings of the current form, from POST /v1/jobs/estimate (debounced).
  const etaBox = h('div.eta', { tid: 'job-estimate', 'aria-live': 'polite' });
  let etaTimer = null;
  let etaSeq = 0;
  function jobSpec() {
    const spec = { type: 'train', dataset: J.dataset, family: J.family, name: J.name.trim() || 'estimate', steps: J.steps, size: J.size, sample_every: J.sample_every };
    if (J.precision !== 'f32') spec.precision = J.precision;
    const canInit = UNPAIRED.includes(J.family);
    if (canInit && J.init) spec.init_from = J.init;
    else {
      if (canInit) spec.init_from = null;
      if (J.family !== 'dcgan') { spec.net_g = J.net_g; spec.ngf = J.ngf; }
    }
    return spec;
  }
  function refreshEstimate() {
    clearTimeout(etaTimer);
    etaTimer = setTimeout(async () => {
      const seq = ++etaSeq;
      if (!(J.steps >= 1)) { etaBox.replaceChildren(); return; }
      etaBox.replaceChildren(h('p.hint', spinner(), 'Measuring a few training steps on this server…'));
      let e;
      try { e = await api('/v1/jobs/estimate', { json: jobSpec(), quiet: true }); } catch (err) {
        if (seq === etaSeq) etaBox.replaceChildren(h('p.hint', 'No estimate: ' + err.message));
        return;
      }
      if (seq !== etaSeq || !alive()) return;
      const min = e.eta_seconds / 60;
      etaBox.replaceChildren(
        h('p.eta-line', { tid: 'job-eta' }, h('strong', 'About ' + (min < 1 ? '<1' : Math.round(min)) + ' min'),
          ` on this server: ${fmt.int(e.steps)} steps × ${e.step_seconds.toFixed(2)} s (${e.family}, ${e.generator}${e.init_from ? ', from ' + e.init_from : ', random start'}).`),
        ...(e.warnings || []).map((w) => h('div.notice.notice-warn', { tid: 'job-warning' }, w)));
    }, 400);
  }
  function renderJobForm() {
    const ids = datasets.map((d) => d.id);
    if (preselect && ids.includes(preselect)) { J.dataset = preselect; preselect = null; pickFamily(); }
    if (!ids.includes(J.dataset)) { J.dataset = ids[0] || ''; pickFamily(); }
    const f = (id, label, input, hint) => h('div.field', h('label', { for: id }, label), input, hint ? h('p.hint', hint) : null);
    const bind = (el, key, num) => {
      const set = () => { J[key] = num ? Number(el.value) : el.value; refreshEstimate(); };
      el.addEventListener('input', set);
      el.addEventListener('change', set);
      return el;
    };
    const opt = (v, t, cur) => h('option', { value: v, selected: String(cur) === String(v) }, t);
    const ds = datasets.find((d) => d.id === J.dataset);
    const fitsKind = (kind, fam) => (kind === 'unpaired' ? UNPAIRED.includes(fam) : FAMILY_FOR[kind] === fam);
    const mismatch = ds && FAMILY_FOR[ds.kind] && !fitsKind(ds.kind, J.family);
    const dcgan = J.family === 'dcgan';
    const ngfInput = h('input#job-ngf', { type: 'number', min: 4, max: 256, step: 1, value: J.ngf, tid: 'job-ngf' });
    ngfInput.addEventListener('input', () => { J.ngf = Number(ngfInput.value); J.ngfEdited = true; });
    const netSel = h('select#job-net', { tid: 'job-net-g' },
      opt('light', 'light (fast, Atelier)', J.net_g), opt('resnet_6blocks_resize', 'resnet_6blocks_resize', J.net_g),
      opt('resnet_6blocks', 'resnet_6blocks', J.net_g), opt('unet', 'unet (pix2pix)', J.net_g));
    netSel.addEventListener('change', () => {
      J.net_g = netSel.value;
      if (!J.ngfEdited) J.ngf = NGF_DEFAULT[J.net_g] || 32;
      renderJobForm();
    });
    const famSel = h('select#job-family', { tid: 'job-family' },
      opt('fastcut', 'FastCUT (unpaired, fastest)', J.family), opt('cut', 'CUT (unpaired)', J.family),
      opt('cyclegan', 'CycleGAN (unpaired)', J.family), opt('pix2pix', 'pix2pix (paired)', J.family), opt('dcgan', 'DCGAN (noise → image)', J.family));
    famSel.addEventListener('change', () => {
      J.family = famSel.value;
      fitNet();
      if (!J.ngfEdited) J.ngf = NGF_DEFAULT[J.net_g] || 32;
      renderJobForm();
    });
    const canInit = UNPAIRED.includes(J.family);
    if (!canInit) J.init = '';
    const initSel = h('select#job-init', { tid: 'job-init', disabled: !canInit },
      opt('', 'Random weights', J.init),
      (initChoices.length ? initChoices : [J.init].filter(Boolean)).map((n) => opt(n, n, J.init)));
    initSel.addEventListener('change', () => { J.init = initSel.value; J.initEdited = true; renderJobForm(); });
    const fromInit = canInit && !!J.init;
    const submit = h('button.btn', { type: 'submit', tid: 'start-training', disabled: !datasets.length }, 'Start training');
    jobForm.replaceChildren();
    append(jobForm, [
      f('job-dataset', 'Dataset', h('select#job-dataset', {
        tid: 'job-dataset', disabled: !datasets.length,
        onchange: (e) => { J.dataset = e.target.value; pickFamily(); renderJobForm(); },
      }, datasets.length ? datasets.map((d) => opt(d.id, `${d.name} — ${d.kind}, ${counts(d)}`, J.dataset)) : h('option', { value: '' }, 'Create a dataset first'))),
      h('div.grid-2',
        f('job-family', 'Family', famSel),
        f('job-name', 'Model name', bind(h('input#job-name', { type: 'text', value: J.name, required: true, placeholder: 'my-style', pattern: '[A-Za-z0-9._-]+', tid: 'job-name', autocomplete: 'off' }), 'name'))),
      f('job-init', 'Start from', initSel, fromInit
        ? 'Fine-tunes this style\'s generator: recognisable in a few hundred steps. Its network is used as it is.'
        : 'Random weights need thousands of steps to learn a style.'),
      mismatch ? h('div.notice.notice-warn', `This ${ds.kind} dataset is usually trained with ${FAMILY_FOR[ds.kind]}.`) : null,
      h('div.grid-3',
        f('job-steps', 'Steps', bind(h('input#job-steps', { type: 'number', min: 1, step: 1, value: J.steps, tid: 'job-steps' }), 'steps', true)),
        f('job-sample', 'Sample every', bind(h('input#job-sample', { type: 'number', min: 1, step: 1, value: J.sample_every, tid: 'job-sample-every' }), 'sample_every', true)),
        f('job-size', 'Image size', bind(h('select#job-size', { tid: 'job-size' },
          [[32, '32 px (test)'], [64, '64 px'], [128, '128 px'], [256, '256 px']].map(([v, t]) => opt(v, t, J.size))), 'size', true))),
      f('job-precision', 'Precision', h('select#job-precision', {
        tid: 'job-precision', onchange: (e) => { J.precision = e.target.value; renderJobForm(); },
      }, opt('f32', 'f32 (exact)', J.precision), opt('bf16', 'bf16 products, f32 sums (faster)', J.precision)),
      J.precision === 'bf16' ? 'As PyTorch’s CPU autocast: about 1.4× faster on CPUs with AVX512_BF16; elsewhere the job runs in f32. The estimate below measures it on this server.' : null),
      fromInit ? null : h('fieldset', { disabled: dcgan },
        h('div.grid-2',
          f('job-net', 'Generator', netSel),
          f('job-ngf', 'Generator width (ngf)', ngfInput)),
        dcgan ? h('p.hint', { style: { marginTop: '-8px', marginBottom: '14px' } }, 'DCGAN uses its own generator; these do not apply.') : null),
      etaBox,
      h('div.row-end', submit)]);
    refreshEstimate();
  }
  function fitNet() {
    if (J.family === 'pix2pix' && J.net_g !== 'unet') J.net_g = 'unet';
    if (J.family === 'cyclegan' && !['light', 'resnet_6blocks', 'resnet_6blocks_resize'].includes(J.net_g)) J.net_g = 'light';
    if ((J.family === 'cut' || J.family === 'fastcut') && !J.net_g.startsWith('resnet')) J.net_g = 'resnet_6blocks_resize';
  }
  function pickFamily() {
    const ds = datasets.find((d) => d.id === J.dataset);
    if (ds && FAMILY_FOR[ds.kind]) {
      J.family = FAMILY_FOR[ds.kind];
      fitNet();
      if (UNPAIRED.includes(J.family) && J.init === '' && !J.initEdited) J.init = 'monet';
    }
  }
  jobForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearError();
    const name = J.name.trim();
    if (!J.dataset) { showError({ code: 'bad_request', message: 'Create or pick a dataset first.' }); return; }
    if (!/^[A-Za-z0-9._-]+$/.test(name)) { showError({ code: 'bad_request', message: 'Model name: letters, digits, dot, dash and underscore only.' }); return; }
    if (!(J.steps >= 1) || !(J.sample_every >= 1)) { showError({ code: 'bad_request', message: 'Steps and sample interval must be positive numbers.' }); return; }
    const spec = jobSpec();
    const btn = jobForm.querySelector('[data-testid=start-training]');
    btn.disabled = true;
    btn.replaceChildren(spinner(), 'Starting…');
    try {
      const job = await api('/v1/jobs', { json: spec });
      location.hash = '#/jobs/' + enc(job.id);
    } catch {
      btn.disabled = false;
      btn.replaceChildren('Start training');
    }
  });

  root.append(
    h('div.train-grid',
      h('section.panel.card', { 'aria-labelledby': 'ds-title' },
        h('h2#ds-title', '1. Datasets'),
        h('p.panel-sub', 'Your uploaded image sets.'), dsList,
        h('h3', { style: { marginTop: '22px' } }, 'New dataset'), dsForm),
      h('section.panel.card', { 'aria-labelledby': 'job-title' },
        h('h2#job-title', '2. Start training'),
        h('p.panel-sub', 'Starting from a built-in style and FastCUT train fastest on a CPU.'), jobForm)),
    h('div.section-head', h('h2', 'Your jobs'), h('a.small', { href: '#/jobs' }, 'All jobs →')),
    jobsBox);
  renderJobForm();
  await refreshDatasets();
  jobsList(jobsBox, alive);
}

// == jobs list
async function viewJobs(root, _m, _p, alive) {
  setTitle('Jobs');
  const box = h('div.jobs.card', { tid: 'jobs' });
  root.append(h('div.page-head', h('div', h('h1', 'Jobs'), h('p.muted', 'Training runs and full-size stylize jobs, newest first.')),
    h('a.btn.btn-secondary', { href: '#/train' }, 'New training')), box);
  await jobsList(box, alive);
}
async function jobsList(box, alive) {
  let timer = null;
  onLeave(() => clearTimeout(timer));
  const load = async () => {
    let jobs;
    try {
      const r = await api('/v1/jobs', { quiet: box.childElementCount > 0 });
      jobs = (r && r.jobs) || [];
    } catch { return; }
    if (!alive()) return;
    box.replaceChildren();
    if (!jobs.length) box.append(h('div.empty', { style: { border: 0 } }, 'No jobs yet.'));
    for (const j of jobs) box.append(jobRow(j));
    if (jobs.some((j) => j.status === 'running' || j.status === 'queued')) timer = setTimeout(load, 4000);
  };
  box.append(h('p.loading', { style: { padding: '16px' } }, spinner(), 'Loading…'));
  await load();
}
function jobTitle(j) {
  const s = j.spec || {};
  if (j.type === 'train') return 'Train ' + (s.name || j.model || '');
  if (j.type === 'stylize') return 'Stylize with ' + (s.model || '?');
  return j.type || 'Job';
}
function jobRow(j) {
  const p = j.progress || {};
  const frac = p.fraction != null ? p.fraction : p.total ? (p.step || 0) / p.total : j.status === 'succeeded' ? 1 : 0;
  const s = j.spec || {};
  return h('a.job-row', { href: '#/jobs/' + enc(j.id), tid: 'job-row', 'data-id': j.id },
    h('div', h('div.t', jobTitle(j)), h('div.sub', [j.id, s.family, s.net_g, s.size ? s.size + 'px' : null, s.precision === 'bf16' ? 'bf16' : null].filter(Boolean).join(' · '))),
    h('div', h('span.pill.pill-' + j.status, j.status)),
    h('div.progress-cell', h('div.mini-bar', h('span', { style: { width: Math.round(frac * 100) + '%' } })),
      h('div.mini-label', p.total ? `${fmt.int(p.step || 0)} / ${fmt.int(p.total)}` : j.status === 'succeeded' ? 'done' : '')),
    h('div.when', fmt.ago(j.created)));
}

// == job page
async function viewJob(root, [id], _p, alive) {
  setTitle('Job ' + id);
  root.append(loading());
  let job = await api('/v1/jobs/' + enc(id));
  if (!alive()) return;
  const isTrain = job.type === 'train';
  const statusEl = h('span.pill', { tid: 'job-status', 'aria-live': 'polite' });
  const actions = h('div.row');
  const stepEl = h('span.step', { tid: 'job-step', 'data-step': '0' });
  const statsEl = h('div.stats');
  const bar = h('span');
  const barBox = h('div.bar', { role: 'progressbar', 'aria-label': 'Progress', 'aria-valuemin': 0, 'aria-valuemax': 100 }, bar);
  const warnEl = h('div.notice.notice-warn', { tid: 'job-warning', role: 'status', hidden: true });
  const errEl = h('div.notice.notice-error', { tid: 'job-error', hidden: true });
  const doneEl = h('div', { tid: 'job-done' });
  const filesEl = h('div');
  const meta = h('div.job-meta');
  root.replaceChildren(
    h('div.crumbs', h('a', { href: '#/jobs' }, 'Jobs'), ' / ', h('span.mono', job.id)),
    h('div.job-head', h('div', h('h1', h('span', jobTitle(job)), statusEl), meta), actions),
    h('section.card.progress-block', h('div.progress-line', stepEl, statsEl), barBox),
    warnEl, errEl, doneEl);

  let chart = null;
  let sampleImg = null;
  let sampleBox = null;
  let lastSample = -1;
  let loadSample = () => {};
  let loadMetrics = () => {};
  if (isTrain) {
    const canvas = h('canvas', { tid: 'loss-chart', 'data-points': '0', role: 'img', 'aria-label': 'Loss curves' });
    const legend = h('div.legend', { tid: 'loss-legend' });
    const box = h('div.chart-box', canvas);
    const scaleSel = h('select', { 'aria-label': 'Y axis scale', style: { width: 'auto', minHeight: '32px', padding: '4px 30px 4px 10px', fontSize: '.85rem' } },
      h('option', { value: 'auto' }, 'Auto scale'), h('option', { value: 'linear' }, 'Linear'), h('option', { value: 'log' }, 'Log'));
    sampleImg = h('img', { alt: 'Latest sample grid', tid: 'sample-image', hidden: true });
    const note = h('div.empty-note', `The first sample grid appears at step ${(job.spec && job.spec.sample_every) || '…'}.`);
    sampleBox = h('div.sample-box', sampleImg, note);
    sampleImg.addEventListener('load', () => {
      sampleImg.hidden = false;
      note.hidden = true;
      sampleBox.classList.toggle('pixelated', sampleImg.naturalWidth < 400);
    });
    const sampleCap = h('p.hint', { tid: 'sample-caption' });
    sampleImg.dataset.caption = '';
    root.append(h('div.job-grid',
      h('section.panel.card', h('div.chart-head', h('h2', 'Losses'),
        scaleSel), box, legend),
      h('section.panel.card', h('h2', 'Samples'), sampleBox, sampleCap,
        h('p.hint', sampleHint(job.spec && job.spec.family)))));
    chart = new LossChart(canvas, legend, box);
    scaleSel.addEventListener('change', () => { chart.scale = scaleSel.value; chart.draw(); });
    onLeave(() => chart.destroy());
    // history from metrics.jsonl; live points come with `progress` events (and a re-read per sample)
    loadMetrics = async () => {
      try {
        const r = await api('/v1/jobs/' + enc(id) + '/metrics', { quiet: true });
        chart.load(Array.isArray(r) ? r : (r && r.metrics) || []);
      } catch { /* not there yet */ }
    };
    await loadMetrics();
    loadSample = (step, url) => {
      if (step != null && step <= lastSample) return;
      lastSample = step != null ? step : lastSample;
      const base = url || `/v1/jobs/${enc(id)}/results/sample.png`;
      loadImage(sampleImg, base + (base.includes('?') ? '&' : '?') + 'v=' + (step != null ? step : Date.now()));
      sampleImg.dataset.step = String(step != null ? step : '');
      sampleCap.textContent = step != null ? `Sample at step ${fmt.int(step)}` : '';
    };
    const hasSample = (job.results || []).some((r) => r.name === 'sample.png') || (job.progress && job.progress.sample_step);
    if (hasSample) loadSample(job.progress && job.progress.sample_step, null);
  }

  function update(j) {
    job = j;
    statusEl.className = 'pill pill-' + j.status;
    statusEl.textContent = j.status;
    const s = j.spec || {};
    meta.replaceChildren(...[h('span.mono', j.id), s.family, s.net_g ? s.net_g + (s.ngf ? ' · ngf ' + s.ngf : '') : null,
      s.size ? s.size + ' px' : null, s.precision === 'bf16' ? 'bf16' : null, j.attempts > 1 ? 'attempt ' + j.attempts : null, 'created ' + fmt.ago(j.created)]
      .filter(Boolean).map((x) => (x instanceof Node ? x : h('span', x))));
    actions.replaceChildren();
    if (j.status === 'queued' || j.status === 'running') {
      actions.append(h('button.btn.btn-danger', { type: 'button', tid: 'cancel-job', onclick: action('', () => act('cancel')) }, 'Cancel'));
    }
    if (isTrain && (j.status === 'cancelled' || j.status === 'failed')) {
      actions.append(h('button.btn', { type: 'button', tid: 'resume-job', onclick: action('', () => act('resume')) }, 'Resume'));
    }
    if (j.progress) progress(j.progress);
    else if (j.status === 'succeeded') setBar(1);
    errEl.hidden = !j.error;
    errEl.textContent = j.error ? (typeof j.error === 'object' ? (j.error.message || JSON.stringify(j.error)) : String(j.error)) : '';
    renderDone(j);
  }
  function setBar(frac) {
    const pct = Math.max(0, Math.min(100, frac * 100));
    bar.style.width = pct + '%';
    barBox.setAttribute('aria-valuenow', Math.round(pct));
  }
  function progress(p) {
    if (!p) return;
    const step = p.step || 0;
    stepEl.dataset.step = String(step);
    stepEl.textContent = p.total ? `Step ${fmt.int(step)} of ${fmt.int(p.total)}` : `Step ${fmt.int(step)}`;
    if (!isTrain && p.total) stepEl.textContent = `${fmt.int(step)} of ${fmt.int(p.total)} images`;
    setBar(p.fraction != null ? p.fraction : p.total ? step / p.total : 0);
    const stats = [];
    if (job.status === 'running' && p.eta_s != null) stats.push('ETA ' + fmt.dur(p.eta_s));
    if (p.images_per_s) stats.push(p.images_per_s.toFixed(p.images_per_s < 10 ? 2 : 1) + ' images/s');
    if (p.epoch != null) stats.push('epoch ' + p.epoch);
    statsEl.replaceChildren(...stats.map((t) => h('span', t)));
    warnEl.hidden = !p.warning;
    warnEl.textContent = p.warning ? '⚠ ' + p.warning : '';
    if (chart && p.losses) chart.push(step, p.losses);
    if (sampleImg && p.sample_step != null && p.sample_step > lastSample) loadSample(p.sample_step, null);
  }
  function renderDone(j) {
    doneEl.replaceChildren();
    filesEl.replaceChildren();
    const model = j.model || (isTrain && j.spec && j.spec.name);
    if (j.status === 'succeeded' && model) {
      doneEl.append(h('div.notice.notice-ok.row',
        h('span', 'Training finished. The model ', h('strong', model), ' is ready.'),
        h('a.btn.btn-sm', { href: '#/models/' + enc(model), tid: 'job-model-link' }, 'Open model'),
        h('a.btn.btn-sm.btn-secondary', { href: '#/?style=' + enc(model) }, 'Use this style')));
    }
    const results = (j.results || []).filter((r) => isTrain ? r.name !== 'sample.png' : true);
    if (!results.length) return;
    const grid = h('div.results', { tid: 'job-results' });
    for (const r of results) {
      const isImg = /\.(png|jpe?g|webp)$/i.test(r.name);
      const link = authLink(h('a', { href: r.url, download: r.name, tid: 'result-link' }, r.name), r.name);
      if (isImg) {
        const img = h('img', { alt: r.name, loading: 'lazy' });
        loadImage(img, r.url);
        grid.append(h('div.result', h('div.thumb', img), link));
      } else grid.append(h('div.result', link));
    }
    filesEl.append(h('section.panel.card', { style: { marginTop: '20px' } }, h('h2', isTrain ? 'Files' : 'Results'), grid));
  }
  async function act(what) {
    update(await api(`/v1/jobs/${enc(id)}/${what}`, { method: 'POST' }));
    if (what === 'resume') connect();
  }

  root.append(filesEl);
  update(job);

  // live updates: SSE (EventSource cannot send headers: the key goes in ?key=), polling as fallback
  let es = null;
  let poll = null;
  let lastEvent = Date.now();
  const finished = (s) => s === 'succeeded' || s === 'failed' || s === 'cancelled';
  function connect() {
    if (es) es.close();
    if (finished(job.status)) return;
    const url = `/v1/jobs/${enc(id)}/events` + (S.key ? '?key=' + enc(S.key) : '');
    es = new EventSource(url);
    const on = (name, fn) => es.addEventListener(name, (ev) => {
      lastEvent = Date.now();
      let data;
      try { data = JSON.parse(ev.data); } catch { return; }
      fn(data);
    });
    on('status', (j) => update(j));
    on('progress', (p) => { job.progress = p; progress(p); });
    on('sample', (s) => { loadSample(s.step, s.url); loadMetrics(); });
    on('end', (j) => { update(j); es.close(); es = null; refreshJob(); });
    es.onerror = () => {
      if (es && es.readyState === EventSource.CLOSED) { es = null; }
    };
  }
  async function refreshJob() {
    try {
      const j = await api('/v1/jobs/' + enc(id), { quiet: true });
      if (alive()) update(j);
    } catch { /* keep going */ }
  }
  connect();
  // safety net: if no event came for a while (proxy, dropped stream), poll the job
  poll = setInterval(() => {
    if (finished(job.status)) return;
    if (Date.now() - lastEvent > 20000 || !es) {
      refreshJob();
      if (!es) connect();
    }
  }, 5000);
  onLeave(() => { if (es) es.close(); clearInterval(poll); });
}
function sampleHint(family) {
  if (family === 'cyclegan') return 'Rows: real, translated, reconstructed (fixed inputs).';
  if (family === 'cut' || family === 'fastcut') return 'Left: inputs (photos, then paintings); right: their translations (for paintings, the identity).';
  if (family === 'pix2pix') return 'Columns: input, output, target.';
  if (family === 'dcgan') return 'Images from a fixed set of noise vectors.';
  return '';
}

// == loss chart (canvas)
const COLORS = ['#4f46e5', '#e0453a', '#0f9d58', '#f29d0a', '#9b4dca', '#0891b2', '#d6336c', '#596273', '#6a9b14', '#b45309'];
const NOT_LOSS = new Set(['step', 'epoch', 'lr', 'images_per_s', 'time', 'elapsed_s', 'time_s', 'timestamp', 'skipped_images',
  'images', 'images_b', 'batch', 'total', 'fraction', 'eta_s', 'sample_step']);
const ALIAS = { D_real: 'D(x)', D_fake: 'D(G(z))' };
class LossChart {
  constructor(canvas, legend, box) {
    this.c = canvas;
    this.legend = legend;
    this.box = box;
    this.series = new Map();
    this.scale = 'auto';
    this.ro = new ResizeObserver(() => this.draw());
    this.ro.observe(box);
  }
  destroy() { this.ro.disconnect(); }
  get(name) {
    let s = this.series.get(name);
    if (!s) {
      s = { name, pts: [], color: COLORS[this.series.size % COLORS.length], on: true, dashed: /^D\(/.test(name) };
      this.series.set(name, s);
    }
    return s;
  }
  add(name, step, v) {
    if (typeof v !== 'number' || !isFinite(v) || typeof step !== 'number') return;
    const s = this.get(name);
    const last = s.pts[s.pts.length - 1];
    if (last && step <= last[0]) return; // already have it (history + live overlap)
    s.pts.push([step, v]);
  }
  /** Metrics records: `{step, losses: {...}, ...}` or flat `{step, G_A: .., ...}`. */
  load(records) {
    for (const r of records) {
      if (!r || typeof r !== 'object' || typeof r.step !== 'number' || r.event) continue;
      if (r.losses && typeof r.losses === 'object') {
        for (const [k, v] of Object.entries(r.losses)) this.add(k, r.step, v);
        for (const k of Object.keys(ALIAS)) if (typeof r[k] === 'number') this.add(ALIAS[k], r.step, r[k]);
      } else {
        for (const [k, v] of Object.entries(r)) {
          if (typeof v === 'number' && !NOT_LOSS.has(k)) this.add(ALIAS[k] || k, r.step, v);
        }
      }
    }
    this.draw();
  }
  push(step, losses) {
    for (const [k, v] of Object.entries(losses)) this.add(ALIAS[k] || k, step, v);
    this.draw();
  }
  draw() {
    if (this.raf) return;
    this.raf = requestAnimationFrame(() => { this.raf = 0; this.paint(); });
  }
  paint() {
    const c = this.c;
    const dpr = window.devicePixelRatio || 1;
    const W = c.clientWidth;
    const H = c.clientHeight;
    if (!W || !H) return;
    if (c.width !== Math.round(W * dpr) || c.height !== Math.round(H * dpr)) {
      c.width = Math.round(W * dpr);
      c.height = Math.round(H * dpr);
    }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = '#fff';
    g.fillRect(0, 0, W, H);
    g.font = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
    const all = [...this.series.values()];
    const vis = all.filter((s) => s.on && s.pts.length);
    let total = 0;
    for (const s of all) total += s.pts.length;
    c.dataset.points = String(total);
    this.renderLegend(all);
    if (!vis.length) {
      g.fillStyle = '#8a919e';
      g.textAlign = 'center';
      g.fillText(total ? 'All series hidden' : 'Waiting for the first losses…', W / 2, H / 2);
      return;
    }
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity, pos = Infinity;
    for (const s of vis) {
      for (const [x, y] of s.pts) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
        if (y > 0 && y < pos) pos = y;
      }
    }
    const log = this.scale === 'log' ? y0 > 0 || pos < Infinity : this.scale === 'auto' && y0 > 0 && y1 / y0 > 50;
    const ty = log ? (v) => Math.log10(Math.max(v, pos)) : (v) => v;
    let lo = ty(log ? Math.max(y0, pos) : y0);
    let hi = ty(y1);
    if (!log && lo > 0 && lo < hi * 0.5) lo = 0;
    if (hi - lo < 1e-9) { hi += log ? 0.5 : Math.abs(hi) * 0.1 || 1; lo -= log ? 0.5 : Math.abs(lo) * 0.1 || 1; }
    const padY = (hi - lo) * 0.06;
    hi += padY;
    if (!(lo === 0 && !log)) lo -= padY;
    if (x1 === x0) { x1 = x0 + 1; }
    const yt = log ? logTicks(lo, hi) : niceTicks(lo, hi, Math.max(3, Math.round(H / 55)));
    const yl = yt.map((v) => (log ? fmtTick(Math.pow(10, v)) : fmtTick(v)));
    const L = Math.ceil(Math.max(...yl.map((t) => g.measureText(t).width))) + 14;
    const R = 12, T = 12, B = 28;
    const pw = W - L - R, ph = H - T - B;
    const X = (x) => L + ((x - x0) / (x1 - x0)) * pw;
    const Y = (v) => T + ph - ((ty(v) - lo) / (hi - lo)) * ph;
    const Yt = (t) => T + ph - ((t - lo) / (hi - lo)) * ph;
    // grid and axes
    g.strokeStyle = '#eceef2';
    g.lineWidth = 1;
    g.fillStyle = '#6b7280';
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    yt.forEach((t, i) => {
      const y = Math.round(Yt(t)) + 0.5;
      if (y < T - 1 || y > T + ph + 1) return;
      g.beginPath(); g.moveTo(L, y); g.lineTo(L + pw, y); g.stroke();
      g.fillText(yl[i], L - 7, y);
    });
    const xt = niceTicks(x0, x1, Math.max(2, Math.floor(pw / 90))).filter((t) => t >= x0 && t <= x1 && Number.isInteger(t));
    g.textAlign = 'center';
    g.textBaseline = 'top';
    for (const t of xt) {
      const x = Math.round(X(t)) + 0.5;
      g.strokeStyle = '#f1f2f5';
      g.beginPath(); g.moveTo(x, T); g.lineTo(x, T + ph); g.stroke();
      g.strokeStyle = '#9aa1ad';
      g.beginPath(); g.moveTo(x, T + ph); g.lineTo(x, T + ph + 4); g.stroke();
      g.fillText(fmt.int(t), x, T + ph + 7);
    }
    g.strokeStyle = '#9aa1ad';
    g.beginPath(); g.moveTo(L + 0.5, T); g.lineTo(L + 0.5, T + ph + 0.5); g.lineTo(L + pw, T + ph + 0.5); g.stroke();
    if (log) { g.fillStyle = '#8a919e'; g.textAlign = 'left'; g.textBaseline = 'top'; g.fillText('log scale', L + 6, T + 2); }
    // lines
    g.save();
    g.beginPath(); g.rect(L, T - 2, pw + 2, ph + 4); g.clip();
    for (const s of vis) {
      const pts = s.pts;
      const many = pts.length > 40; // raw faintly, plus a smoothed line
      const stride = Math.max(1, Math.floor(pts.length / (pw * 1.5)));
      g.setLineDash(s.dashed ? [5, 4] : []);
      g.lineJoin = 'round';
      g.strokeStyle = s.color;
      g.globalAlpha = many ? 0.22 : 1;
      g.lineWidth = many ? 1 : 1.8;
      g.beginPath();
      for (let i = 0; i < pts.length; i += stride) {
        const [x, y] = pts[i];
        i ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y));
      }
      g.stroke();
      if (many) {
        const alpha = Math.min(0.3, 8 / pts.length + 0.02);
        let e = ty(pts[0][1]);
        g.globalAlpha = 1;
        g.lineWidth = 2;
        g.beginPath();
        for (let i = 0; i < pts.length; i++) {
          e = e + alpha * (ty(pts[i][1]) - e);
          const yy = T + ph - ((e - lo) / (hi - lo)) * ph;
          if (i % stride === 0 || i === pts.length - 1) i ? g.lineTo(X(pts[i][0]), yy) : g.moveTo(X(pts[i][0]), yy);
        }
        g.stroke();
      } else if (pts.length <= 30) {
        g.setLineDash([]);
        g.fillStyle = s.color;
        for (const [x, y] of pts) { g.beginPath(); g.arc(X(x), Y(y), 2.2, 0, 7); g.fill(); }
      }
    }
    g.restore();
    g.setLineDash([]);
    g.globalAlpha = 1;
  }
  renderLegend(all) {
    const key = all.map((s) => s.name + s.on + (s.pts.length ? s.pts[s.pts.length - 1][1] : '')).join('|');
    if (key === this.legendKey) return;
    this.legendKey = key;
    this.legend.replaceChildren(...all.map((s) => h('button', {
      type: 'button', 'aria-pressed': String(s.on), title: s.on ? 'Hide ' + s.name : 'Show ' + s.name,
      onclick: () => { s.on = !s.on; this.draw(); },
    }, h('span.sw', { style: { background: s.color } }), s.name,
    h('span.val', s.pts.length ? fmt.loss(s.pts[s.pts.length - 1][1]) : ''))));
  }
}
function niceTicks(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / Math.max(1, n);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
  return out;
}
function logTicks(lo, hi) {
  const out = [];
  const span = hi - lo;
  const mults = span < 1.2 ? [1, 2, 3, 5, 7] : span < 2.5 ? [1, 2, 5] : [1];
  for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
    for (const m of mults) {
      const t = e + Math.log10(m);
      if (t >= lo && t <= hi) out.push(t);
    }
  }
  return out.length >= 2 ? out : niceTicks(lo, hi, 4);
}
function fmtTick(v) {
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a >= 1e4 || a < 1e-3) return v.toExponential(0);
  return String(Number(v.toPrecision(3)));
}

// == boot
async function boot() {
  $('#error-close').addEventListener('click', clearError);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      if (!$('#signin').hidden && !$('#signin-cancel').hidden) closeSignin();
      else clearError();
    }
  });
  $('#signin-form').addEventListener('submit', signIn);
  $('#signin-cancel').addEventListener('click', closeSignin);
  window.addEventListener('hashchange', () => { route(); $('#view').focus({ preventScroll: true }); window.scrollTo(0, 0); });
  await start();
}
// for tests and debugging
window.atelier = { api, state: S };
boot();
