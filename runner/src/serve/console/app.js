// pgferry console: plain HTML + CSS + this one small vanilla-JS module. No framework, no build
// step, nothing fetched from elsewhere (the binary embeds these files). It stays small,
// readable and testable in a real browser: each view is built from the API's JSON with DOM
// calls and textContent only (never innerHTML), so nothing a migration holds is read as
// markup. Views by hash: #/ the grid, #/new the wizard, #/m/NAME the details.

const TOKEN_KEY = 'pgferry.token';
const GRID_REFRESH_MS = 3000;
const DETAILS_POLL_MS = 5000;
const ACTIVE_STATES = ['InProgress', 'WaitingForUserAction', 'Canceling'];
const CANCELABLE_STATES = ['InProgress', 'WaitingForUserAction', 'Failed', 'Canceling'];

// ---- the token: from ?token= on a first load, then sessionStorage only ----

function takeToken() {
  const url = new URL(window.location.href);
  const given = url.searchParams.get('token');
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    url.searchParams.delete('token');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

let token = takeToken();

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** Calls the API with the token; a problem+json answer becomes an ApiError with its detail. */
async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + (token || '') };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch('/api/v1' + path, init);
  } catch (e) {
    throw new ApiError(0, 'pgferry serve did not answer (' + e.message + '); is it still running?');
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) {
    const detail = data && typeof data === 'object' && data.detail ? data.detail : (response.status + ' ' + response.statusText);
    throw new ApiError(response.status, detail);
  }
  return data;
}

// ---- small DOM helpers ----

/** h('a', {href: '#/'}, 'text', child…): an element; attributes starting with "on" are listeners. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function say(message, isError) {
  const status = document.getElementById('status');
  status.textContent = message;
  status.classList.toggle('error', !!isError);
}

function showError(e) {
  if (e instanceof ApiError && e.status === 401) {
    say('The access token is missing or no longer valid: ' + e.message, true);
    renderTokenForm();
    return;
  }
  say(e.message, true);
}

function humanDuration(seconds) {
  const s = Math.max(0, Math.floor(seconds || 0));
  if (s < 60) return (seconds || 0).toFixed(1) + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm' + String(s % 60).padStart(2, '0') + 's';
  return Math.floor(s / 3600) + 'h' + String(Math.floor((s % 3600) / 60)).padStart(2, '0') + 'm';
}

function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (isNaN(d)) return String(iso);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

function bytes(n) {
  if (n === undefined || n === null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(1)) + ' ' + units[i];
}

function num(n) {
  return n === undefined || n === null ? '' : Number(n).toLocaleString('en-US');
}

function statusBadge(state, substate) {
  return h('span', { class: 'badge s-' + state }, state + (substate && substate !== state ? ' / ' + substate : ''));
}

/** A table with column headers (scope=col); rows are arrays of cells (strings or nodes). */
function table(caption, headers, rows, attrs) {
  return h('table', attrs || {},
    caption ? h('caption', {}, caption) : null,
    h('thead', {}, h('tr', {}, headers.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label || c)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((cell, i) =>
      i === 0 && r.rowHeader ? h('th', { scope: 'row' }, cell) : h('td', { class: headers[i] && headers[i].num ? 'num' : null }, cell))))));
}

function rowWithHeader(cells) {
  cells.rowHeader = true;
  return cells;
}

// ---- routing and the live parts each view starts ----

let stopView = () => {};

function route() {
  stopView();
  stopView = () => {};
  const main = document.getElementById('main');
  main.replaceChildren();
  const hash = window.location.hash || '#/';
  for (const id of ['nav-grid', 'nav-new']) document.getElementById(id).removeAttribute('aria-current');
  if (!token) {
    renderTokenForm();
    return;
  }
  if (hash === '#/new') {
    document.getElementById('nav-new').setAttribute('aria-current', 'page');
    renderWizard(main);
  } else if (hash.startsWith('#/m/')) {
    renderDetails(main, decodeURIComponent(hash.slice(4)));
  } else {
    document.getElementById('nav-grid').setAttribute('aria-current', 'page');
    renderGrid(main);
  }
}

function renderTokenForm() {
  stopView();
  const main = document.getElementById('main');
  const input = h('input', { id: 'token-input', type: 'password', autocomplete: 'off' });
  main.replaceChildren(
    h('h1', {}, 'Access token'),
    h('p', {}, 'Open the URL that ', h('code', {}, 'pgferry serve'), ' printed (it carries ', h('code', {}, '?token='),
      '), or paste the token here. ', h('code', {}, 'pgferry serve rotate-token'), ' makes a new one.'),
    h('form', { onsubmit: (ev) => {
      ev.preventDefault();
      token = input.value.trim();
      sessionStorage.setItem(TOKEN_KEY, token);
      say('');
      route();
    } },
    h('div', { class: 'field' }, h('label', { for: 'token-input' }, 'Token'), input),
    h('button', { type: 'submit', class: 'primary' }, 'Use this token')));
}

// ---- 1. the grid ----

const GRID_COLUMNS = ['Name', 'Status', 'Migration mode', 'Migration type', 'Source server', 'Source server type', 'Databases', 'Duration', 'Start time'];

function renderGrid(main) {
  const updated = h('span', { class: 'muted', id: 'grid-updated' });
  const holder = h('div', { id: 'grid' });
  const refresh = h('button', { type: 'button', id: 'refresh', onclick: () => load(true) }, 'Refresh');
  main.append(
    h('h1', {}, 'Migrations'),
    h('div', { class: 'toolbar' }, refresh, h('a', { class: 'button primary', href: '#/new', id: 'new-migration' }, 'New migration'), updated),
    holder);
  let timer = null;
  let stopped = false;
  async function load(announce) {
    try {
      const list = await api('GET', '/migrations?filter=All');
      if (stopped) return;
      list.sort((a, b) => String(b.startedOn).localeCompare(String(a.startedOn)));
      holder.replaceChildren(list.length === 0
        ? h('p', { class: 'empty' }, 'No migrations yet. ', h('a', { href: '#/new' }, 'Start one'), '.')
        : table(null, GRID_COLUMNS, list.map((m) => rowWithHeader([
          h('a', { href: '#/m/' + encodeURIComponent(m.name) }, m.name),
          statusBadge(m.state, m.substate),
          m.migrationMode,
          m.migrationOption,
          m.sourceServer,
          m.sourceType,
          (m.dbsToMigrate || []).join(', '),
          humanDuration(m.durationSeconds),
          when(m.startedOn),
        ])), { id: 'migrations', 'aria-describedby': 'grid-updated' }));
      if (list.length) holder.replaceChildren(h('div', { class: 'scroll' }, holder.firstChild));
      updated.textContent = 'Updated ' + new Date().toLocaleTimeString('en-GB') + ', every ' + GRID_REFRESH_MS / 1000 + ' s';
      if (announce) say('Refreshed: ' + list.length + ' migration' + (list.length === 1 ? '' : 's') + '.');
    } catch (e) {
      showError(e);
    }
  }
  load(false);
  timer = setInterval(() => load(false), GRID_REFRESH_MS);
  stopView = () => { stopped = true; clearInterval(timer); };
}

// ---- 2. the details ----

function renderDetails(main, name) {
  const body = h('div', { id: 'details' });
  main.append(h('p', {}, h('a', { href: '#/' }, '← All migrations')), h('h1', {}, 'Migration ', h('span', { id: 'details-name' }, name)), body);
  let doc = null;
  let stopped = false;
  let busy = false;
  let pending = null;
  let source = null;

  async function load() {
    try {
      const fresh = await api('GET', '/migrations/' + encodeURIComponent(name));
      if (stopped) return;
      doc = fresh;
      draw();
      if (!ACTIVE_STATES.includes(doc.state) && source) { source.close(); source = null; }
    } catch (e) {
      if (!stopped) showError(e);
    }
  }
  function soon() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; load(); }, 300);
  }

  function draw() {
    // Keep what the user is on: the focused control and the open <details>.
    const focused = document.activeElement && document.activeElement.id;
    const open = [...body.querySelectorAll('details[open]')].map((d) => d.id);
    body.replaceChildren(...detailSections(doc, { cutover, cancel, busy }));
    for (const id of open) { const d = document.getElementById(id); if (d) d.open = true; }
    if (focused) { const el = document.getElementById(focused); if (el) el.focus(); }
  }

  async function act(what, patch, confirmText, done) {
    if (!window.confirm(confirmText)) { say(what + ' not asked for.'); return; }
    busy = true; draw();
    try {
      doc = await api('PATCH', '/migrations/' + encodeURIComponent(name), { properties: patch });
      say(done);
    } catch (e) {
      showError(e);
    } finally {
      busy = false;
      if (doc) draw();
      soon();
    }
  }
  function cutover() {
    const latencies = Object.entries((doc.details && doc.details.replicationProgress) || {})
      .map(([db, r]) => db + ': ' + Number(r.latencySeconds || 0).toFixed(1) + ' s');
    act('Cutover', { triggerCutover: 'True' },
      'Cut over migration ' + name + ' now?\n\nReplication latency: ' + (latencies.length ? latencies.join(', ') : 'not measured yet') +
      '.\nWrites to the source after the cutover are not copied.',
      'Cutover requested for ' + name + '.');
  }
  function cancel() {
    const dbs = (doc.dbsToMigrate || []).join(', ');
    act('Cancel', { cancel: 'True' },
      'Cancel migration ' + name + '?\n\nThe target databases it created will be dropped: ' + dbs + ' on ' + doc.targetServer + '.',
      'Cancel requested for ' + name + '.');
  }

  load();
  // Live: the event stream (EventSource cannot send headers, so the token goes in its URL,
  // same origin only), and a slow poll as a fallback.
  source = new EventSource('/api/v1/migrations/' + encodeURIComponent(name) + '/events?token=' + encodeURIComponent(token || ''));
  source.addEventListener('state', (ev) => {
    try { const s = JSON.parse(ev.data); say(name + ' is ' + s.state + (s.substate ? ' / ' + s.substate : '') + '.'); } catch { /* shown on reload */ }
    soon();
  });
  source.addEventListener('progress', soon);
  const poll = setInterval(load, DETAILS_POLL_MS);
  stopView = () => { stopped = true; clearInterval(poll); clearTimeout(pending); if (source) source.close(); };
}

function detailSections(doc, ctl) {
  const out = [];
  const d = doc.details || {};
  const runner = doc.runner || {};
  const active = ACTIVE_STATES.includes(doc.state);
  let runnerText;
  if (runner.alive) runnerText = 'alive: process ' + runner.pid + ' on ' + runner.host;
  else if (active || doc.next) runnerText = h('span', { class: 'sev-Error', id: 'runner-dead' }, 'runner not alive');
  else runnerText = 'ended';
  out.push(h('dl', { class: 'facts', id: 'facts' },
    h('dt', {}, 'State'), h('dd', { id: 'state' }, statusBadge(doc.state, doc.substate)),
    h('dt', {}, 'Substate'), h('dd', { id: 'substate' }, doc.substate),
    h('dt', {}, 'Runner'), h('dd', { id: 'runner' }, runnerText),
    doc.next ? [h('dt', {}, 'Next'), h('dd', {}, 'Run ', h('code', { id: 'next' }, doc.next))] : null,
    h('dt', {}, 'Migration type / mode'), h('dd', {}, doc.migrationOption + ' / ' + doc.migrationMode),
    h('dt', {}, 'Source'), h('dd', {}, doc.sourceServer + ' (' + doc.sourceType + ')' + (d.sourceVersion ? ', PostgreSQL ' + String(d.sourceVersion).split(' ')[0] : '') + (d.sourceTls ? ', TLS ' + d.sourceTls : '')),
    h('dt', {}, 'Target'), h('dd', {}, doc.targetServer + (d.targetVersion ? ', PostgreSQL ' + String(d.targetVersion).split(' ')[0] : '') + (d.targetTls ? ', TLS ' + d.targetTls : '')),
    h('dt', {}, 'Databases'), h('dd', {}, (doc.dbsToMigrate || []).join(', ')),
    h('dt', {}, 'Started'), h('dd', {}, when(doc.startedOn)),
    h('dt', {}, 'Duration'), h('dd', {}, humanDuration(doc.durationSeconds) + (doc.endedOn ? ' (ended ' + when(doc.endedOn) + ')' : ''))));

  const canCutover = doc.substate === 'WaitingForCutoverTrigger';
  const canCancel = CANCELABLE_STATES.includes(doc.state);
  if (canCutover || canCancel) {
    out.push(h('div', { class: 'actions', role: 'group', 'aria-label': 'Actions' },
      canCutover ? h('button', { type: 'button', id: 'cutover', class: 'primary', disabled: ctl.busy, onclick: ctl.cutover }, 'Cutover') : null,
      canCancel ? h('button', { type: 'button', id: 'cancel', class: 'danger', disabled: ctl.busy, onclick: ctl.cancel }, 'Cancel migration') : null));
  }

  if (doc.error) {
    out.push(h('h2', {}, 'Error'), h('div', { class: 'alert', id: 'error' },
      (doc.error.step ? 'In ' + doc.error.step + ': ' : '') + (doc.error.message || JSON.stringify(doc.error))));
  }
  if (doc.leftovers && doc.leftovers.length) {
    out.push(h('h2', {}, 'Leftovers'), table(null, ['Kind', 'Object', 'Server', 'Problem'],
      doc.leftovers.map((l) => [l.kind, l.object, l.server, l.problem]), { id: 'leftovers' }));
  }
  if (doc.validation) out.push(...validationSections(doc.validation));
  if (d.progress && d.progress.databases) out.push(...progressSections(d.progress.databases));
  if (d.replicationProgress && Object.keys(d.replicationProgress).length) {
    out.push(h('h2', {}, 'Replication'), table(null,
      ['Database', { label: 'Latency', num: true }, { label: 'Inserts', num: true }, { label: 'Updates', num: true }, { label: 'Deletes', num: true },
        { label: 'Transactions', num: true }, { label: 'WAL pending', num: true }, 'Applied up to', 'Connection'],
      Object.entries(d.replicationProgress).map(([db, r]) => rowWithHeader([db, Number(r.latencySeconds || 0).toFixed(1) + ' s', num(r.inserts), num(r.updates),
        num(r.deletes), num(r.transactions), r.walBytesPending === null || r.walBytesPending === undefined ? '—' : bytes(r.walBytesPending), r.appliedLsn || '',
        r.reconnecting ? 'reconnecting since ' + when(r.reconnecting.since) + ' (' + (r.reconnecting.lastError || '') + ')' : active && runner.alive ? 'streaming' : 'stopped'])),
      { id: 'replication' }));
  }
  if (d.cutover) {
    const c = d.cutover;
    const fences = Object.entries(c.fenceLsn || {}).map(([db, lsn]) => db + ' at ' + lsn).join(', ');
    out.push(h('h2', {}, 'Cutover receipt'), h('dl', { class: 'facts', id: 'cutover-receipt' },
      h('dt', {}, 'Requested'), h('dd', {}, when(c.requestedAt) + (c.readOnlySource ? ', source made read-only' : '')),
      fences ? [h('dt', {}, 'Fence'), h('dd', { class: 'mono' }, fences)] : null,
      c.fenceAppliedAt ? [h('dt', {}, 'Fence applied'), h('dd', {}, when(c.fenceAppliedAt))] : null,
      c.tablesVerified !== undefined ? [h('dt', {}, 'Verified'), h('dd', {}, c.tablesVerified + ' tables, ' + (c.sequencesSet || 0) + ' sequences set')] : null,
      c.completedAt ? [h('dt', {}, 'Completed'), h('dd', {}, when(c.completedAt))] : null));
  }
  if (Array.isArray(d.verification) && d.verification.length) {
    out.push(h('h2', {}, 'Verification'), table(null, ['Database', { label: 'Tables verified', num: true }, { label: 'Mismatches', num: true }, { label: 'Sequences set', num: true }, { label: 'Large objects', num: true }],
      d.verification.map((v) => rowWithHeader([v.database, num(v.tablesVerified), num((v.mismatches || []).length), num(v.sequencesSet), num(v.largeObjects)])), { id: 'verification' }));
  }
  if (doc.transitions && doc.transitions.length) {
    out.push(h('details', { id: 'transitions' }, h('summary', {}, 'History (' + doc.transitions.length + ' states)'),
      table(null, ['At', 'State', 'Substate'], doc.transitions.map((t) => [when(t.at), t.state, t.substate]))));
  }
  return out;
}

function validationSections(v) {
  const out = [h('h2', { id: 'validation-heading' }, 'Validation: ', h('span', { class: 'badge s-' + (v.status === 'Failed' ? 'Failed' : v.status === 'Warning' ? 'Canceling' : 'Succeeded'), id: 'validation-status' }, v.status))];
  const levels = [['Instance (server level)', 'validation-server', v.serverLevel]];
  for (const db of v.dbLevel || []) levels.push(['Database ' + db.databaseName, 'validation-db-' + db.databaseName, db]);
  for (const [title, id, level] of levels) {
    if (!level) continue;
    const checks = level.checks || [];
    const withFindings = checks.filter((c) => (c.findings || []).length);
    const clean = checks.filter((c) => !(c.findings || []).length);
    const rows = [];
    for (const c of withFindings) {
      for (const f of c.findings) {
        rows.push([h('span', {}, c.title || c.id, h('br'), h('code', { class: 'muted' }, c.id)), h('span', {}, h('span', { class: 'sev-' + f.severity }, f.severity), h('br'), h('code', { class: 'muted' }, f.code)),
          f.message, f.object || '', f.remediation || '']);
      }
    }
    out.push(h('section', { id, 'aria-label': title },
      h('h3', {}, title + ': ' + level.state),
      rows.length ? table(null, ['Check', 'Severity', 'Message', 'Object', 'Remediation'], rows, { class: 'findings' }) : h('p', { class: 'muted' }, 'No findings.'),
      clean.length ? h('details', { id: id + '-passed' }, h('summary', {}, clean.length + ' checks passed'),
        h('ul', {}, clean.map((c) => h('li', {}, (c.title || c.id) + ' ', h('code', { class: 'muted' }, c.id))))) : null));
  }
  return out;
}

function progressSections(databases) {
  const out = [h('h2', {}, 'Progress')];
  out.push(table(null, ['Database', { label: 'Tables done', num: true }, { label: 'Loading', num: true }, { label: 'Queued', num: true }, { label: 'Errored', num: true },
    { label: 'Rows copied', num: true }, { label: 'Bytes copied', num: true }],
  Object.entries(databases).map(([db, p]) => rowWithHeader([db, num(p.tablesDone) + ' / ' + num(p.tablesTotal), num(p.tablesLoading), num(p.tablesQueued),
    (p.tablesErrored ? num(p.tablesErrored) + ' (' + (p.erroredTables || []).join(', ') + ')' : '0'), num(p.rowsCopied),
    bytes(p.bytesCopied) + (p.bytesTotal ? ' of ' + bytes(p.bytesTotal) : '')])), { id: 'progress' }));
  for (const [db, p] of Object.entries(databases)) {
    const tables = p.tables || [];
    if (!tables.length) continue;
    out.push(h('details', { id: 'tables-' + db }, h('summary', {}, 'Tables of ' + db + ' (' + tables.length + ')'),
      table(null, ['Table', { label: 'Rows', num: true }, { label: 'Bytes', num: true }, { label: 'Seconds', num: true }, 'Format', { label: 'Parts', num: true }],
        tables.map((t) => rowWithHeader([(t.schema ? t.schema + '.' : '') + t.name, num(t.rows), bytes(t.bytes), Number(t.seconds || 0).toFixed(2), t.format || '', num(t.parts)])))));
  }
  return out;
}

// ---- 3. the wizard ----

const TABS = [
  ['setup', 'Setup'],
  ['source', 'Connect to source'],
  ['target', 'Migration target'],
  ['databases', 'Select databases'],
  ['summary', 'Summary'],
];

function field(id, label, control, hint) {
  control.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), control, hint ? h('span', { class: 'hint', id: id + '-hint' }, hint) : h('span'));
}

function select(options, value) {
  return h('select', {}, options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
}

function renderWizard(main) {
  const f = {
    name: h('input', { type: 'text', autocomplete: 'off', required: true, 'aria-describedby': 'name-check', spellcheck: 'false' }),
    // Filled from the source-adapter plugins the server loads (GET /source-types).
    sourceType: select([], ''),
    option: select([['ValidateAndMigrate', 'Validate and migrate'], ['Validate', 'Validate only'], ['Migrate', 'Migrate without validation']], 'ValidateAndMigrate'),
    mode: select([['Offline', 'Offline'], ['Online', 'Online (replicate until cutover)']], 'Offline'),
    srcHost: h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false' }),
    srcPort: h('input', { type: 'number', min: '1', max: '65535', value: '5432' }),
    srcUser: h('input', { type: 'text', autocomplete: 'off', value: 'postgres', spellcheck: 'false' }),
    srcPassword: h('input', { type: 'password', autocomplete: 'off' }),
    sslMode: select([['Prefer', 'Prefer'], ['Require', 'Require'], ['VerifyCA', 'Verify CA'], ['VerifyFull', 'Verify full']], 'Prefer'),
    target: h('input', { type: 'text', autocomplete: 'off', placeholder: 'host:port', spellcheck: 'false' }),
    tgtUser: h('input', { type: 'text', autocomplete: 'off', value: 'postgres', spellcheck: 'false' }),
    tgtPassword: h('input', { type: 'password', autocomplete: 'off' }),
    dbs: h('textarea', { spellcheck: 'false' }),
    overwrite: h('input', { type: 'checkbox' }),
  };
  const nameCheck = h('span', { id: 'name-check', class: 'hint', 'aria-live': 'polite' }, 'Letters, digits and hyphens.');
  const testResult = h('span', { id: 'test-result', class: 'hint', 'aria-live': 'polite' }, 'Checks that the source can be reached with these details.');
  const dbList = h('fieldset', { id: 'db-list', class: 'db-list', hidden: true }, h('legend', {}, 'Databases on the source'));
  const problem = h('div', { id: 'wizard-problem', role: 'alert' });
  const summary = h('div', { id: 'summary' });

  const panels = {
    setup: [
      h('div', { class: 'field' }, h('label', { for: 'f-name' }, 'Migration name'), Object.assign(f.name, { id: 'f-name' }), nameCheck),
      field('f-sourceType', 'Source server type', f.sourceType),
      field('f-option', 'Migration option', f.option),
      field('f-mode', 'Migration mode', f.mode, 'Online keeps replicating until you trigger the cutover.'),
    ],
    source: [
      field('f-srcHost', 'Source host', f.srcHost),
      field('f-srcPort', 'Port', f.srcPort),
      field('f-srcUser', 'Administrator login', f.srcUser),
      field('f-srcPassword', 'Password', f.srcPassword, 'Sent to the runner only, never stored.'),
      field('f-sslMode', 'SSL mode', f.sslMode),
      h('div', { class: 'field' }, h('span'), h('button', { type: 'button', id: 'test-connection', onclick: testConnection }, 'Test connection'), testResult),
    ],
    target: [
      field('f-target', 'Target server (host:port)', f.target),
      field('f-tgtUser', 'Administrator login', f.tgtUser),
      field('f-tgtPassword', 'Password', f.tgtPassword, 'Sent to the runner only, never stored.'),
    ],
    databases: [
      h('p', { class: 'note', id: 'dbs-note' }, 'Pick from the source\'s databases once the connection was tested (Connect to source), or type the names of the databases to migrate, one per line (or separated by commas).'),
      dbList,
      field('f-dbs', 'Databases to migrate', f.dbs),
      h('div', { class: 'field' }, h('span'), h('label', { class: 'check', for: 'f-overwrite' }, Object.assign(f.overwrite, { id: 'f-overwrite' }),
        'Overwrite databases that exist on the target'), h('span')),
    ],
    summary: [summary, problem],
  };

  const tabs = TABS.map(([key, label], i) => h('button', {
    type: 'button', role: 'tab', id: 'tab-' + key, 'aria-controls': 'panel-' + key, 'aria-selected': i === 0 ? 'true' : 'false', tabindex: i === 0 ? '0' : '-1',
    onclick: () => select_(i, false),
  }, (i + 1) + '. ' + label));
  const tablist = h('div', { role: 'tablist', 'aria-label': 'New migration steps', onkeydown: onTabKey }, tabs);
  const panelEls = TABS.map(([key, label], i) => h('section', {
    role: 'tabpanel', id: 'panel-' + key, 'aria-labelledby': 'tab-' + key, tabindex: '0', hidden: i !== 0,
  }, h('h2', {}, label), panels[key], h('div', { class: 'panel-nav' },
    i > 0 ? h('button', { type: 'button', id: 'back-' + key, onclick: () => select_(i - 1, true) }, 'Back') : null,
    i < TABS.length - 1 ? h('button', { type: 'button', class: 'primary', id: 'next-' + key, onclick: () => select_(i + 1, true) }, 'Next') : null,
    key === 'summary' ? h('button', { type: 'button', class: 'primary', id: 'start', onclick: start }, 'Start migration') : null)));

  main.append(h('h1', {}, 'New migration'), tablist, ...panelEls);

  // The source types are the loaded adapters' (the console knows none itself); the first,
  // the built-in self-managed one, is preselected.
  api('GET', '/source-types').then((types) => {
    f.sourceType.replaceChildren(...types.map((t) => h('option', { value: t.id }, t.displayName + ' (' + t.id + ')')));
  }).catch(showError);

  let current = 0;
  function select_(i, focusTab) {
    current = i;
    tabs.forEach((t, j) => {
      t.setAttribute('aria-selected', j === i ? 'true' : 'false');
      t.tabIndex = j === i ? 0 : -1;
      panelEls[j].hidden = j !== i;
    });
    if (TABS[i][0] === 'summary') drawSummary();
    if (focusTab) tabs[i].focus();
  }
  function onTabKey(ev) {
    const moves = { ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: TABS.length - 1 };
    if (!(ev.key in moves)) return;
    ev.preventDefault();
    select_((moves[ev.key] + TABS.length) % TABS.length, true);
  }

  // The name's availability, live: locally its form, then the API for the target given.
  let checkTimer = null;
  let checkSeq = 0;
  function checkName() {
    clearTimeout(checkTimer);
    checkTimer = setTimeout(async () => {
      const name = f.name.value.trim();
      const target = f.target.value.trim();
      const seq = ++checkSeq;
      const show = (text, ok) => { nameCheck.textContent = text; nameCheck.className = 'hint ' + (ok === true ? 'avail-ok' : ok === false ? 'avail-bad' : ''); };
      if (!name) return show('Letters, digits and hyphens.');
      if (!/^[A-Za-z0-9][A-Za-z0-9-]{0,62}$/.test(name)) return show('Use letters, digits and hyphens (up to 63, starting with a letter or digit).', false);
      if (!target) return show('The name\'s availability is checked once the target server is given (Migration target).');
      try {
        const r = await api('POST', '/check-name-availability', { name, target });
        if (seq !== checkSeq) return;
        show(r.nameAvailable ? '"' + name + '" is available on ' + target + '.' : '"' + name + '" is not available: ' + (r.message || r.reason || 'taken') + '.', !!r.nameAvailable);
      } catch (e) {
        if (seq === checkSeq) show(e.message, false);
      }
    }, 250);
  }
  f.name.addEventListener('input', checkName);
  f.target.addEventListener('input', checkName);

  // "Test connection": the source's version, TLS state and databases (with their sizes),
  // which become check boxes under Select databases.
  async function testConnection() {
    const button = document.getElementById('test-connection');
    button.disabled = true;
    testResult.className = 'hint';
    testResult.textContent = 'Connecting…';
    try {
      const facts = await api('POST', '/source/test-connection', request().body);
      testResult.className = 'hint avail-ok';
      testResult.textContent = 'Connected to ' + facts.server + ': PostgreSQL ' + facts.version + ', TLS ' + facts.tls + ', ' + facts.databases.length + ' databases.';
      const chosen = new Set(databases());
      const boxes = facts.databases.map((d) => {
        const box = h('input', { type: 'checkbox', id: 'db-' + d.name, value: d.name, checked: chosen.has(d.name), disabled: !d.allowConnections });
        box.addEventListener('change', () => {
          const picked = [...dbList.querySelectorAll('input[type=checkbox]:checked')].map((b) => b.value);
          f.dbs.value = picked.join('\n');
        });
        return h('label', { class: 'check', for: 'db-' + d.name }, box, d.name + ' (' + bytes(d.sizeBytes) + ')' + (d.allowConnections ? '' : ', does not accept connections'));
      });
      dbList.replaceChildren(h('legend', {}, 'Databases on the source'), ...boxes);
      dbList.hidden = false;
      say('Connected to the source ' + facts.server + '.');
    } catch (e) {
      testResult.className = 'hint avail-bad';
      testResult.textContent = 'Cannot connect: ' + e.message;
      showError(e);
    } finally {
      button.disabled = false;
    }
  }

  function databases() {
    return f.dbs.value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
  }
  function request() {
    const props = {
      SourceDBServerResourceId: f.srcHost.value.trim() + ':' + (f.srcPort.value.trim() || '5432') + '@' + (f.srcUser.value.trim() || 'postgres'),
      targetServerUserName: f.tgtUser.value.trim() || 'postgres',
      DBsToMigrate: databases(),
      OverwriteDBsInTarget: f.overwrite.checked ? 'true' : 'false',
      MigrationMode: f.mode.value,
      sourceType: f.sourceType.value,
      sslMode: f.sslMode.value,
    };
    const creds = {};
    if (f.srcPassword.value) creds.SourceServerPassword = f.srcPassword.value;
    if (f.tgtPassword.value) creds.TargetServerPassword = f.tgtPassword.value;
    if (Object.keys(creds).length) props.SecretParameters = { AdminCredentials: creds };
    const query = new URLSearchParams({ target: f.target.value.trim(), migrationOption: f.option.value, migrationMode: f.mode.value });
    return { name: f.name.value.trim(), query, body: { properties: props } };
  }
  function missing() {
    const out = [];
    if (!f.name.value.trim()) out.push('a migration name (Setup)');
    if (!f.srcHost.value.trim()) out.push('the source host (Connect to source)');
    if (!f.target.value.trim()) out.push('the target server (Migration target)');
    if (!databases().length) out.push('at least one database (Select databases)');
    return out;
  }
  function drawSummary() {
    const r = request();
    const p = r.body.properties;
    const pw = (v) => (v ? 'given (sent to the runner only)' : 'none (the runner uses PGPASSWORD or ~/.pgpass)');
    summary.replaceChildren(h('dl', { class: 'facts', id: 'summary-facts' }, [
      ['Migration name', r.name], ['Source server type', p.sourceType], ['Migration option', f.option.value], ['Migration mode', p.MigrationMode],
      ['Source server', p.SourceDBServerResourceId], ['Source password', pw(f.srcPassword.value)], ['SSL mode', p.sslMode],
      ['Target server', f.target.value.trim()], ['Target login', p.targetServerUserName], ['Target password', pw(f.tgtPassword.value)],
      ['Databases', p.DBsToMigrate.join(', ')], ['Overwrite existing databases', f.overwrite.checked ? 'yes' : 'no'],
    ].map(([k, v]) => [h('dt', {}, k), h('dd', {}, v || '—')])));
    const gaps = missing();
    problem.replaceChildren(gaps.length ? h('div', { class: 'note' }, 'Still needed: ' + gaps.join(', ') + '.') : '');
  }
  async function start() {
    const gaps = missing();
    if (gaps.length) {
      problem.replaceChildren(h('div', { class: 'alert' }, 'Still needed: ' + gaps.join(', ') + '.'));
      say('The migration cannot start yet: ' + gaps.join(', ') + '.', true);
      return;
    }
    const r = request();
    const button = document.getElementById('start');
    button.disabled = true;
    say('Starting ' + r.name + '…');
    try {
      await api('PUT', '/migrations/' + encodeURIComponent(r.name) + '?' + r.query.toString(), r.body);
      say('Migration ' + r.name + ' started.');
      window.location.hash = '#/m/' + encodeURIComponent(r.name);
    } catch (e) {
      problem.replaceChildren(h('div', { class: 'alert', id: 'start-error' }, 'The migration was not started: ' + e.message));
      showError(e);
      button.disabled = false;
    }
  }
}

window.addEventListener('hashchange', () => { say(''); route(); document.getElementById('main').focus(); });
route();
