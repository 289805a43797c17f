'use strict';
// agentmon replay --format html: draws the report from the JSON data block.
// Every recorded value goes into the page as text (append of a string, textContent,
// or an attribute of a fixed name), never as markup.
(function () {
  const D = JSON.parse(document.getElementById('data').textContent);
  const E = D.events;
  const FLAGGED = new Set(['out_of_scope', 'violation', 'denied', 'needs_approval']);
  const APPROVALS = new Set(['approval_request', 'approval']);

  function el(tag, attrs, ...kids) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) n.setAttribute(k, String(v));
    }
    for (const k of kids) if (k !== undefined && k !== null) n.append(k);
    return n;
  }
  function svg(tag, attrs) {
    const n = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    return n;
  }
  // A recorded string on one line, as the text formats put it (sink::one_line):
  // control characters and the invisible ones that reorder or hide text escaped, so
  // that no value draws a row or words of its own.
  const HIDDEN = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\\]/g;
  const one = (s) => (s === undefined || s === null ? '' : String(s)).replace(HIDDEN, (c) =>
    c === '\n' ? '\\n' : c === '\r' ? '\\r' : c === '\t' ? '\\t' : c === '\\' ? '\\\\'
      : '\\u{' + c.charCodeAt(0).toString(16) + '}');
  const tod = (e) => String(e.ts).slice(11, 23);
  const step = (e) => (e.step ? one(e.step.tool) + ':' + one(e.step.call_id) : null);
  const flagged = (i) => FLAGGED.has(E[i].verdict) || D.severity[i] !== undefined;
  const cls = (i) => {
    const e = E[i];
    if (e.verdict === 'denied') return 'denied';
    if (APPROVALS.has(e.kind) || e.verdict === 'needs_approval') return 'approval';
    return flagged(i) ? 'flagged' : '';
  };
  function verdict(e) {
    if (!e.verdict) return '';
    return one(e.verdict) + (e.action && e.action !== 'none' ? '/' + one(e.action) : '') + (e.rule ? ' (' + one(e.rule) + ')' : '');
  }
  function sevBadge(i) {
    const s = D.severity[i];
    return s ? el('span', { class: 'sev ' + s }, s) : null;
  }

  // ---- state, kept in the address (#task=..&step=..&kind=..&verdict=..&flagged=1&q=..&chain=ID)
  const state = new URLSearchParams(location.hash.slice(1));
  function save() {
    history.replaceState(null, '', '#' + state.toString());
  }

  // ---- header
  const shown = [...Array(D.shown).keys()];
  const tasks = [...new Set(shown.map((i) => E[i].task).filter(Boolean))];
  const steps = new Map();
  for (const i of shown) if (E[i].step) steps.set(E[i].step.call_id, step(E[i]));
  const kinds = [...new Set(shown.map((i) => E[i].kind))].sort();
  const verdicts = [...new Set(shown.map((i) => E[i].verdict).filter(Boolean))].sort();
  const bySev = {};
  for (const i of shown) if (D.severity[i]) bySev[D.severity[i]] = (bySev[D.severity[i]] || 0) + 1;
  const nFlagged = shown.filter(flagged).length;
  document.body.append(
    el('header', {},
      el('h1', {}, 'agentmon replay'),
      el('p', {}, 'Source: ', el('code', {}, one(D.source))),
      el('p', { id: 'summary' },
        `${D.shown} events, ${nFlagged} flagged, ` +
        `${Object.values(bySev).reduce((a, b) => a + b, 0)} alerts` +
        (Object.keys(bySev).length ? ' (' + Object.entries(bySev).map(([k, v]) => v + ' ' + k).join(', ') + ')' : '') +
        `; tasks: ${tasks.map(one).join(', ') || '-'}`)));

  // ---- filters
  function select(name, label, options) {
    // A value from the address that is not among the options still filters: shown.
    const want = state.get(name);
    if (want && !options.some(([v]) => v === want)) options.push([want, want + ' (not in the recording)']);
    const s = el('select', { id: 'f-' + name, name },
      el('option', { value: '' }, 'all'),
      ...options.map(([v, t]) => el('option', { value: v }, one(t))));
    s.value = want || '';
    s.addEventListener('change', () => {
      s.value ? state.set(name, s.value) : state.delete(name);
      save();
      apply();
    });
    return el('label', {}, label + ' ', s);
  }
  const q = el('input', { id: 'f-q', type: 'search', placeholder: 'path, command, reason' });
  q.value = state.get('q') || '';
  q.addEventListener('input', () => {
    q.value ? state.set('q', q.value) : state.delete('q');
    save();
    apply();
  });
  const only = el('input', { id: 'f-flagged', type: 'checkbox' });
  only.checked = state.get('flagged') === '1';
  only.addEventListener('change', () => {
    only.checked ? state.set('flagged', '1') : state.delete('flagged');
    save();
    apply();
  });
  const count = el('span', { id: 'count' });
  document.body.append(el('nav', {},
    select('task', 'task', tasks.map((t) => [t, t])),
    select('step', 'tool call', [...steps].map(([c, t]) => [c, t])),
    select('kind', 'kind', kinds.map((k) => [k, k])),
    select('verdict', 'verdict', verdicts.map((v) => [v, v])),
    el('label', {}, only, ' flagged only'),
    el('label', {}, 'search ', q),
    count));

  const main = el('main');
  const left = el('div', { id: 'left' });
  const aside = el('aside', { id: 'chainview' }, el('h2', {}, 'Chain'),
    el('p', { class: 'muted', id: 'chain-hint' }, 'Click an event to see what it was done under.'),
    el('ol', { id: 'chain' }));
  main.append(left, aside);
  document.body.append(main);

  // ---- timeline: per task, its tool calls as spans and what was flagged as marks
  const tl = el('section', { id: 'timeline' }, el('h2', {}, 'Timeline'));
  for (const t of tasks.length ? tasks : [null]) {
    const mine = shown.filter((i) => E[i].task === (t || undefined) || (t === null && !E[i].task));
    if (!mine.length) continue;
    // A loop, not Math.min(...): an agent can make a task of millions of events.
    let t0 = Infinity, t1 = -Infinity;
    for (const i of mine) {
      t0 = Math.min(t0, D.ms[i]);
      t1 = Math.max(t1, D.ms[i]);
    }
    const x = (ms) => ((ms - t0) / (t1 - t0 || 1)) * 1000;
    const lane = svg('svg', { class: 'lane', viewBox: '0 0 1000 40', preserveAspectRatio: 'none', 'data-task': t || '' });
    const spans = new Map();
    for (const i of mine) {
      if (!E[i].step) continue;
      const c = E[i].step.call_id;
      const s = spans.get(c) || { a: D.ms[i], b: D.ms[i], name: step(E[i]) };
      s.a = Math.min(s.a, D.ms[i]);
      s.b = Math.max(s.b, D.ms[i]);
      spans.set(c, s);
    }
    for (const [c, s] of spans) {
      const r = svg('rect', { class: 'span', 'data-call': c, x: x(s.a), y: 3, width: Math.max(x(s.b) - x(s.a), 2), height: 14 });
      const title = svg('title', {});
      title.textContent = s.name;
      r.append(title);
      lane.append(r);
    }
    for (const i of mine) {
      if (!flagged(i) && !APPROVALS.has(E[i].kind)) continue;
      const m = svg('rect', { class: 'mark ' + cls(i), 'data-i': i, x: x(D.ms[i]) - 1.5, y: 21, width: 3, height: 16 });
      const title = svg('title', {});
      title.textContent = tod(E[i]) + ' ' + E[i].kind + ' ' + D.what[i];
      m.append(title);
      m.addEventListener('click', () => openChain(i));
      lane.append(m);
    }
    tl.append(el('h3', {}, t ? 'task ' + one(t) : 'no task'), lane);
  }
  left.append(tl);

  // ---- the process tree, every side effect under its process
  const tree = el('section', { id: 'tree' }, el('h2', {}, 'Process tree'));
  const rows = [];
  for (const l of D.lines) {
    let r;
    if (l.e !== undefined) {
      const e = E[l.e];
      r = el('div', { class: 'row ev ' + cls(l.e), 'data-i': l.e, 'data-id': e.id, 'data-kind': e.kind, 'data-verdict': e.verdict || '' },
        tod(e) + ' ' + e.kind + ' ' + D.what[l.e],
        step(e) && e.kind !== 'step' ? el('span', { class: 'step' }, '  <' + step(e) + '>') : null,
        verdict(e) ? el('span', { class: 'muted' }, '  ' + verdict(e)) : null,
        e.error ? el('span', { class: 'muted' }, '  [' + one(e.error) + ']') : null,
        sevBadge(l.e));
      r.addEventListener('click', () => openChain(l.e));
    } else {
      const p = l.p;
      const fork = p.fork !== null && p.fork !== undefined ? p.fork : null;
      r = el('div', { class: 'row proc ' + (fork !== null ? cls(fork) : ''), 'data-pid': p.pid, 'data-i': fork },
        String(p.born).slice(11, 23) + ' [' + p.pid + '] ' + one(p.comm) + (p.exe ? ' ' + one(p.exe) : '') +
          (p.task ? '  task ' + one(p.task) : ''));
    }
    const click = l.e !== undefined ? l.e : l.p.fork;
    if (l.e === undefined && click !== null && click !== undefined) r.addEventListener('click', () => openChain(click));
    r.style.paddingLeft = Math.min(l.d, 32) * 1.2 + 'em';
    rows.push([l, r]);
    tree.append(r);
  }
  left.append(tree);

  // ---- filters applied: an event row shows if it matches; a process if anything under it does
  function matches(i) {
    const e = E[i];
    const t = state.get('task');
    if (t && e.task !== t && !(e.task_chain || []).includes(t)) return false;
    const s = state.get('step');
    if (s && !(e.step && e.step.call_id === s)) return false;
    const k = state.get('kind');
    if (k && e.kind !== k) return false;
    const v = state.get('verdict');
    if (v && e.verdict !== v) return false;
    if (state.get('flagged') === '1' && !flagged(i)) return false;
    const text = (state.get('q') || '').toLowerCase();
    if (text && !(D.what[i] + ' ' + (e.reason || '') + ' ' + (e.comm || '')).toLowerCase().includes(text)) return false;
    return true;
  }
  function apply() {
    let n = 0;
    // Backwards: a process row sees, below it, whether anything deeper is shown.
    const open = [];
    for (let k = rows.length - 1; k >= 0; k--) {
      const [l, r] = rows[k];
      let show;
      if (l.e !== undefined) {
        show = matches(l.e);
        if (show) n++;
      } else {
        // A process stands for its fork event too.
        const fork = l.p.fork !== null && l.p.fork !== undefined && matches(l.p.fork);
        if (fork) n++;
        show = fork || open.some((d) => d > l.d);
      }
      r.hidden = !show;
      while (open.length && open[open.length - 1] > l.d) open.pop();
      if (show) open.push(l.d);
    }
    count.textContent = `${n} of ${D.shown} events`;
  }

  // ---- the chain of one event
  function openChain(i) {
    const ol = document.getElementById('chain');
    ol.replaceChildren();
    for (const r of document.querySelectorAll('.row.selected')) r.classList.remove('selected');
    for (const [role, j] of D.chains[i] || [['event', i]]) {
      const e = E[j];
      const extra = [];
      const dt = e.detail || {};
      if (dt.grant) extra.push('granted by ' + one(dt.grant.by || dt.grant.key));
      if (dt.prompt) extra.push('prompt: ' + one(dt.prompt));
      if (dt.decision) extra.push(one(dt.decision) + (dt.by ? ' by ' + one(dt.by) : ''));
      if (dt.operator && dt.operator.user) extra.push('operator: ' + one(dt.operator.user));
      if (dt.operator_reason) extra.push('reason: ' + one(dt.operator_reason));
      if (step(e)) extra.push('tool call ' + step(e));
      ol.append(el('li', { 'data-role': role, 'data-id': e.id, 'data-kind': e.kind },
        el('span', { class: 'role' }, role),
        tod(e) + ' ' + e.kind + ' ' + D.what[j] + (verdict(e) ? '  ' + verdict(e) : ''),
        ...extra.map((x) => el('div', { class: 'muted' }, x)),
        el('details', {}, el('summary', {}, 'record'), el('pre', {}, JSON.stringify(e, null, 2)))));
    }
    document.getElementById('chain-hint').hidden = true;
    const row = document.querySelector('.row.ev[data-i="' + i + '"]');
    if (row) row.classList.add('selected');
    state.set('chain', E[i].id);
    save();
  }

  apply();
  const want = state.get('chain');
  const first = want ? E.findIndex((e, i) => i < D.shown && e.id === want) : D.open;
  if (first !== null && first !== undefined && first >= 0) openChain(first);
})();
