const METHODS = ['get', 'post', 'put', 'patch', 'delete', 'head', 'options'];
let spec = null;
const $ = (s) => document.querySelector(s);
function h(tag, attrs, ...kids) {
  const [name, ...cls] = tag.split('.');
  const el = document.createElement(name || 'div');
  if (cls.length) el.className = cls.join(' ');
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) { kids.unshift(attrs); attrs = null; }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'html') el.innerHTML = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of kids.flat(Infinity)) if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
/** A little Markdown: paragraphs, `code`, **bold**, [links](url), "- " lists. */
function md(text) {
  if (!text) return null;
  const inline = (s) => esc(s)
    .replace(/`([^`]+)`/g, '<code>$1</code>')
    .replace(/\*\*([^*]+)\*\*/g, '<strong>$1</strong>')
    .replace(/\[([^\]]+)\]\(((?:https?:\/\/|\/|#)[^)\s]*)\)/g, '<a href="$2">$1</a>');
  const html = String(text).trim().split(/\n\s*\n/).map((block) => {
    const lines = block.split('\n');
    if (lines.every((l) => /^\s*[-*] /.test(l))) return '<ul>' + lines.map((l) => '<li>' + inline(l.replace(/^\s*[-*] /, '')) + '</li>').join('') + '</ul>';
    return '<p>' + inline(block) + '</p>';
  }).join('');
  return h('div.md', { html });
}

// ---------------------------------------------------------------- schemas
function resolve(ref) {
  if (!ref || !ref.startsWith('#/')) return null;
  let cur = spec;
  for (const part of ref.slice(2).split('/')) {
    cur = cur && cur[part.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  return cur || null;
}
const refName = (ref) => ref.split('/').pop();
const deref = (x) => (x && x.$ref ? resolve(x.$ref) || {} : x || {});
function typeText(s) {
  if (!s) return 'any';
  if (s.$ref) return refName(s.$ref);
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(' | ');
  for (const k of ['oneOf', 'anyOf']) if (s[k]) return s[k].map(typeText).join(' | ');
  if (s.allOf) return s.allOf.map(typeText).join(' & ');
  let t = s.type;
  if (Array.isArray(t)) {
    return t.map((x) => (x === 'array' ? 'array of ' + typeText(s.items) : x)).join(' | ');
  }
  if (t === 'array') return 'array of ' + typeText(s.items);
  if (!t && s.properties) t = 'object';
  if (t === 'object' && s.additionalProperties && typeof s.additionalProperties === 'object') return 'map of ' + typeText(s.additionalProperties);
  let out = t || 'any';
  if (s.format) out += ' (' + s.format + ')';
  if (s.contentMediaType) out += ' (' + s.contentMediaType + ')';
  if (s.nullable) out += ' | null';
  return out;
}
/** Like typeText, with `$ref`s as links to their schema. */
function typeEl(s) {
  if (s && s.$ref) return refLink(s.$ref);
  const alts = s && (s.oneOf || s.anyOf);
  if (alts) return h('span', alts.map((a, i) => [i ? ' | ' : '', typeEl(a)]));
  if (s && s.items && s.items.$ref) return h('span', 'array of ', refLink(s.items.$ref));
  return typeText(s);
}
function refLink(ref) {
  const n = refName(ref);
  return h('a.ref', { href: '#schema-' + n }, n);
}
/** Merges allOf parts into one object schema (properties and required). */
function flatten(s, seen) {
  s = s || {};
  if (s.$ref) {
    if (seen.has(s.$ref)) return { type: 'object', description: '(recursive ' + refName(s.$ref) + ')' };
    return flatten(resolve(s.$ref), new Set([...seen, s.$ref]));
  }
  if (!s.allOf) return s;
  const out = { type: 'object', properties: {}, required: [], description: s.description };
  for (const part of s.allOf) {
    const p = flatten(part, seen);
    Object.assign(out.properties, p.properties || {});
    out.required.push(...(p.required || []));
    if (!out.description) out.description = p.description;
  }
  return out;
}
/** Readable tree of a schema; `$ref`s show their name and (once per branch) their properties. */
function schemaEl(s, depth = 0, seen = new Set()) {
  const box = h('div.schema');
  if (!s) return box;
  if (s.$ref) {
    box.append(h('div', refLink(s.$ref), s.description ? h('span.pd', s.description) : null));
    if (depth < 4 && !seen.has(s.$ref)) {
      const target = resolve(s.$ref);
      if (target && (target.properties || target.allOf || target.items || target.oneOf || target.anyOf || target.additionalProperties)) {
        box.append(schemaBody(target, depth + 1, new Set([...seen, s.$ref])));
      } else if (target) box.append(h('div.pd', typeText(target)));
    }
    return box;
  }
  box.append(schemaBody(s, depth, seen));
  return box;
}
function schemaBody(s, depth, seen) {
  const frag = h('div');
  s = s.allOf ? flatten(s, seen) : s;
  if (s.oneOf || s.anyOf) {
    const opts = s.oneOf || s.anyOf;
    frag.append(h('div.pd', s.oneOf ? 'One of:' : 'Any of:'));
    for (const o of opts) frag.append(schemaEl(o, depth + 1, seen));
    return frag;
  }
  const type = Array.isArray(s.type) ? s.type.find((t) => t !== 'null') : s.type;
  if (type === 'array' || s.items) {
    frag.append(h('div', h('span.pt', { style: 'margin-left:0' }, typeText(s)), s.description ? h('span.pd', s.description) : null));
    const it = s.items;
    if (it && (it.$ref || it.properties || it.allOf)) frag.append(schemaEl(it, depth + 1, seen));
    return frag;
  }
  if (s.properties) {
    const req = new Set(s.required || []);
    for (const [name, p0] of Object.entries(s.properties)) {
      const p = p0 || {};
      const target = p.$ref ? resolve(p.$ref) : null;
      const desc = p.description || (target && target.description);
      const extra = [];
      const src = target && !p.$ref ? p : p.$ref ? target || {} : p;
      if (src.default !== undefined) extra.push('default ' + JSON.stringify(src.default));
      if (src.minimum !== undefined) extra.push('≥ ' + src.minimum);
      if (src.maximum !== undefined) extra.push('≤ ' + src.maximum);
      if (src.example !== undefined) extra.push('e.g. ' + JSON.stringify(src.example));
      const row = h('div.prop',
        h('span.pn', name), req.has(name) ? h('span.req', { title: 'required', style: 'color:var(--danger);margin-left:2px' }, '*') : null,
        h('span.pt', typeEl(p)),
        desc ? h('span.pd', desc) : null,
        extra.length ? h('span.pd.faint', '(' + extra.join(', ') + ')') : null);
      frag.append(row);
      const nested = p.$ref ? null : p.items && (p.items.$ref || p.items.properties) ? p.items : p.properties || p.allOf ? p : p.additionalProperties && typeof p.additionalProperties === 'object' && (p.additionalProperties.properties || p.additionalProperties.$ref) ? p.additionalProperties : null;
      if (nested && depth < 5) row.append(schemaEl(nested === p ? { ...p, description: undefined } : nested, depth + 1, seen));
      else if (p.$ref && depth < 2 && !seen.has(p.$ref) && target && target.properties) row.append(schemaEl(p, depth + 1, seen));
    }
    if (s.additionalProperties && typeof s.additionalProperties === 'object') frag.append(h('div.pd', '…and any other key: ' + typeText(s.additionalProperties)));
    return frag;
  }
  frag.append(h('div', h('span.pt', { style: 'margin-left:0' }, typeText(s)), s.description ? h('span.pd', s.description) : null));
  return frag;
}

// ---------------------------------------------------------------- examples for curl
function sample(s, depth = 0, seen = new Set()) {
  if (!s || depth > 5) return null;
  if (s.$ref) {
    if (seen.has(s.$ref)) return {};
    return sample(resolve(s.$ref), depth + 1, new Set([...seen, s.$ref]));
  }
  if (s.example !== undefined) return s.example;
  if (Array.isArray(s.examples) && s.examples.length) return s.examples[0];
  if (s.const !== undefined) return s.const;
  if (s.default !== undefined) return s.default;
  if (s.enum) return s.enum[0];
  if (s.allOf) return sample(flatten(s, seen), depth + 1, seen);
  if (s.oneOf || s.anyOf) return sample((s.oneOf || s.anyOf)[0], depth + 1, seen);
  const t = Array.isArray(s.type) ? s.type.find((x) => x !== 'null') : s.type || (s.properties ? 'object' : undefined);
  if (t === 'object') {
    const out = {};
    const req = new Set(s.required || []);
    for (const [k, v] of Object.entries(s.properties || {})) {
      if (req.size && !req.has(k) && (v || {}).example === undefined && (v || {}).default === undefined) continue;
      out[k] = sample(v, depth + 1, seen);
    }
    return out;
  }
  if (t === 'array') return [sample(s.items, depth + 1, seen)];
  if (t === 'integer' || t === 'number') return s.minimum || 0;
  if (t === 'boolean') return false;
  if (t === 'string') return s.format === 'binary' ? '@file' : 'string';
  return null;
}
const q = (s) => "'" + String(s).replace(/'/g, "'\\''") + "'";
function fileFor(path, ct) {
  if (/^image\//.test(ct || '')) return 'photo.jpg';
  if (/import/.test(path)) return 'latest_net_G.pth';
  if (/models/.test(path)) return 'model.safetensors';
  if (/datasets/.test(path)) return 'images.zip';
  return 'photo.jpg';
}
function paramValue(p) {
  const s = deref(p.schema);
  const v = p.example !== undefined ? p.example : s.example !== undefined ? s.example : s.default !== undefined ? s.default : s.enum ? s.enum[0] : null;
  return v != null ? String(v) : p.name.toUpperCase();
}
function curl(path, method, op, params, needsAuth) {
  const lines = [];
  let url = path.replace(/\{([^}]+)\}/g, (_, n) => {
    const p = params.find((x) => x.in === 'path' && x.name === n);
    return encodeURIComponent(p ? paramValue(p) : n.toUpperCase());
  });
  const qs = params.filter((p) => p.in === 'query' && p.required).map((p) => p.name + '=' + encodeURIComponent(paramValue(p)));
  if (qs.length) url += '?' + qs.join('&');
  const first = ['curl'];
  const resp = op.responses || {};
  const ok = Object.keys(resp).find((c) => /^2/.test(c));
  const okContent = ok ? Object.keys(deref(resp[ok]).content || {}) : [];
  if (okContent.includes('text/event-stream')) first.push('-N');
  if (method !== 'get' && !(method === 'post' && op.requestBody)) first.push('-X ' + method.toUpperCase());
  first.push(q(location.origin + url));
  lines.push(first.join(' '));
  if (needsAuth) lines.push('-H "Authorization: Bearer $ATELIER_KEY"');
  for (const p of params.filter((x) => x.in === 'header' && x.required)) lines.push('-H ' + q(p.name + ': ' + paramValue(p)));
  const body = op.requestBody ? deref(op.requestBody) : null;
  if (body && body.content) {
    const types = Object.keys(body.content);
    const ct = types.find((t) => t === 'application/json') || types[0];
    const media = body.content[ct] || {};
    if (ct === 'application/json') {
      const ex = media.example !== undefined ? media.example : media.examples ? Object.values(media.examples)[0].value : sample(media.schema);
      lines.push("-H 'Content-Type: application/json'");
      lines.push('-d ' + q(JSON.stringify(ex)));
    } else if (ct === 'multipart/form-data') {
      const s = flatten(media.schema || {}, new Set());
      for (const [k, v0] of Object.entries(s.properties || {})) {
        const v = deref(v0);
        const item = v.type === 'array' ? deref(v.items) : v;
        const isFile = item.format === 'binary' || item.contentMediaType || item.contentEncoding;
        if (isFile) {
          const n = v.type === 'array' ? 2 : 1;
          const base = k === 'image' ? 'photo' : k;
          for (let i = 1; i <= n; i++) lines.push('-F ' + q(k + '=@' + base + (n > 1 ? i : '') + (k === 'image' ? '.jpg' : '.png')));
        } else {
          const ex = sample(v0);
          lines.push('-F ' + q(k + '=' + (typeof ex === 'string' ? ex : JSON.stringify(ex))));
        }
      }
    } else {
      lines.push('--data-binary @' + fileFor(path, ct));
    }
  }
  const bin = okContent.find((t) => /^image\/|octet-stream/.test(t));
  if (bin && !okContent.includes('application/json')) lines.push('-o ' + (bin.startsWith('image/') ? 'out.' + (okContent.includes('image/jpeg') ? 'jpg' : 'png') : 'out.bin'));
  return lines.join(' \\\n  ');
}

// ---------------------------------------------------------------- operations
function paramsTable(params) {
  return h('div.table-scroll', h('table.simple.params',
    h('thead', h('tr', h('th', 'Name'), h('th', 'In'), h('th', 'Type'), h('th', 'Description'))),
    h('tbody', params.map((p0) => {
      const p = deref(p0);
      const s = p.schema || {};
      const r = deref(s);
      const notes = [];
      if (r.default !== undefined) notes.push('default ' + JSON.stringify(r.default));
      if (r.minimum !== undefined || r.maximum !== undefined) notes.push('range ' + (r.minimum ?? '…') + '–' + (r.maximum ?? '…'));
      return h('tr',
        h('td', p.name, p.required ? h('span.req', 'required') : null),
        h('td.muted', p.in),
        h('td', h('span.mono.small', typeEl(s))),
        h('td', md(p.description), notes.length ? h('div.small.faint', notes.join(' · ')) : null));
    }))));
}
function contentEl(content) {
  const out = h('div');
  for (const [ct, media] of Object.entries(content || {})) {
    out.append(h('div', { style: 'margin:6px 0 2px' }, h('span.ct', ct)));
    if (media && media.schema) out.append(schemaEl(media.schema));
    if (media && media.example !== undefined) out.append(h('pre.curl', { style: 'margin-top:6px;background:#f3f4f6;color:#1f2937' }, JSON.stringify(media.example, null, 2)));
  }
  return out;
}
const opId = (method, path) => 'op-' + method + '-' + path.replace(/[^a-zA-Z0-9]+/g, '-').replace(/^-|-$/g, '');

function opEl(path, method, op, pathItem) {
  const params = [...(pathItem.parameters || []), ...(op.parameters || [])].map(deref);
  const security = op.security !== undefined ? op.security : spec.security;
  const needsAuth = !!(security && security.length) || (security === undefined && !!(spec.components && spec.components.securitySchemes));
  const id = opId(method, path);
  const body = h('div.op-body');
  if (op.description) body.append(h('div.desc', md(op.description)));
  if (op.deprecated) body.append(h('div.notice.notice-warn', 'Deprecated.'));
  if (params.length) body.append(h('h4', 'Parameters'), paramsTable(params));
  if (op.requestBody) {
    const rb = deref(op.requestBody);
    body.append(h('h4', 'Request body' + (rb.required ? ' (required)' : '')), h('div', md(rb.description), contentEl(rb.content)));
  }
  const responses = Object.entries(op.responses || {});
  if (responses.length) {
    body.append(h('h4', 'Responses'), h('div', responses.map(([code, r0]) => {
      const r = deref(r0);
      const headers = Object.entries(r.headers || {});
      return h('div.resp', h('span.code.code-' + String(code)[0], code),
        h('div', md(r.description) || h('span.muted', '—'),
          headers.length ? h('div.small.muted', 'Headers: ', headers.map(([n, hd], i) => [i ? ', ' : '', h('code', n), deref(hd).description ? ' — ' + deref(hd).description : ''])) : null,
          r.content ? contentEl(r.content) : null));
    })));
  }
  const text = curl(path, method, op, params, needsAuth);
  const pre = h('pre.curl', { 'data-testid': 'curl' }, text);
  const copy = h('button.btn.btn-secondary.btn-sm', { type: 'button', onclick: () => {
    if (navigator.clipboard) navigator.clipboard.writeText(text).then(() => { copy.textContent = 'Copied'; setTimeout(() => { copy.textContent = 'Copy'; }, 1500); });
  } }, 'Copy');
  body.append(h('div.example-head', h('h4', 'Example'), copy), pre);
  const det = h('details.op.card', { id, 'data-testid': 'operation', 'data-path': path, 'data-method': method },
    h('summary', h('span.m.m-' + method, method), h('span.path', path), h('span.sum', op.summary || ''),
      needsAuth ? null : h('span.badge.badge-builtin', { title: 'No API key needed' }, 'public')),
    body);
  if (location.hash === '#' + id) det.open = true;
  return det;
}

function render() {
  const info = spec.info || {};
  $('#api-title').textContent = (info.title || 'HTTP API') + (info.version ? ' ' : '');
  if (info.version) $('#api-title').append(h('span.badge.badge-builtin', { style: 'vertical-align:middle;font-size:.8rem' }, 'v' + info.version));
  const desc = $('#api-desc');
  desc.replaceChildren(md(info.description) || 'Every operation of the server, grouped by area.');
  document.title = (info.title || 'API') + ' · Atelier';
  const groups = new Map();
  for (const t of spec.tags || []) groups.set(t.name, { tag: t, ops: [] });
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const m of METHODS) {
      const op = item && item[m];
      if (!op) continue;
      const tags = op.tags && op.tags.length ? op.tags : ['other'];
      for (const t of tags) {
        if (!groups.has(t)) groups.set(t, { tag: { name: t }, ops: [] });
        groups.get(t).ops.push([path, m, op, item]);
      }
    }
  }
  const ops = $('#ops');
  const toc = $('#toc');
  ops.replaceChildren();
  const search = h('input', { type: 'search', placeholder: 'Filter operations…', 'aria-label': 'Filter operations' });
  toc.replaceChildren(search);
  for (const { tag, ops: list } of groups.values()) {
    if (!list.length) continue;
    const sid = 'tag-' + tag.name.replace(/[^a-zA-Z0-9]+/g, '-');
    const sec = h('section.tag-section', { id: sid, 'data-testid': 'tag-section' }, h('h2', tag.name), tag.description ? md(tag.description) : null);
    toc.append(h('h3', h('a', { href: '#' + sid, style: 'padding:0;color:inherit' }, tag.name)));
    for (const [path, m, op, item] of list) {
      sec.append(opEl(path, m, op, item));
      toc.append(h('a', { href: '#' + opId(m, path), 'data-filter': (m + ' ' + path + ' ' + (op.summary || '')).toLowerCase(),
        onclick: () => { const d = document.getElementById(opId(m, path)); if (d) d.open = true; } },
      h('span.m.m-' + m, m), h('span', path)));
    }
    ops.append(sec);
  }
  const schemas = Object.entries((spec.components && spec.components.schemas) || {});
  if (schemas.length) {
    const sec = h('section.tag-section', { id: 'schemas' }, h('h2', 'Schemas'));
    toc.append(h('h3', h('a', { href: '#schemas', style: 'padding:0;color:inherit' }, 'Schemas')));
    for (const [name, s] of schemas) {
      sec.append(h('div.card.panel', { id: 'schema-' + name, style: 'margin-top:12px;scroll-margin-top:80px' },
        h('h3.mono', name), s.description ? h('p.muted.small', s.description) : null,
        schemaEl({ ...s, description: undefined }, 0, new Set(['#/components/schemas/' + name]))));
      toc.append(h('a', { href: '#schema-' + name, 'data-filter': name.toLowerCase() }, h('span', name)));
    }
    ops.append(sec);
  }
  search.addEventListener('input', () => {
    const needle = search.value.trim().toLowerCase();
    for (const op of ops.querySelectorAll('.op')) {
      const hay = (op.dataset.method + ' ' + op.dataset.path + ' ' + op.querySelector('.sum').textContent).toLowerCase();
      op.hidden = !!needle && !hay.includes(needle);
    }
    for (const a of toc.querySelectorAll('a[data-filter]')) a.hidden = !!needle && !a.dataset.filter.includes(needle);
    for (const sec of ops.querySelectorAll('.tag-section')) {
      const items = sec.querySelectorAll('.op');
      if (items.length) sec.hidden = [...items].every((o) => o.hidden);
    }
  });
  if (location.hash) {
    const target = document.getElementById(location.hash.slice(1));
    if (target) { if (target.tagName === 'DETAILS') target.open = true; target.scrollIntoView(); }
  }
}

async function load() {
  try {
    const headers = {};
    try { const k = localStorage.getItem('atelier.key'); if (k) headers.Authorization = 'Bearer ' + k; } catch { /* none */ }
    const res = await fetch('/openapi.json', { headers });
    if (!res.ok) throw new Error('GET /openapi.json answered ' + res.status);
    spec = await res.json();
    render();
  } catch (e) {
    const box = $('#docs-error');
    box.textContent = 'Could not load the API document: ' + (e.message || e);
    box.hidden = false;
    $('#ops').replaceChildren();
    $('#api-desc').textContent = '';
  }
}
window.addEventListener('hashchange', () => {
  const d = document.getElementById(location.hash.slice(1));
  if (d && d.tagName === 'DETAILS') d.open = true;
});
load();
