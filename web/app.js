'use strict';
// The lorad dashboard: plain DOM code against the daemon's own API, no framework and no build
// step, so what the binary embeds is exactly what is in web/. Everything shown comes from an API
// reply; errors are shown with the API's own message.
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = 'lorad.apiKey';
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'lm_head'];
  const DEFAULT_TARGETS = ['q_proj', 'v_proj'];
  const ADAPTER_FILES = [
    ['adapter_model.safetensors', 'PEFT safetensors'],
    ['adapter_config.json', 'config'],
    ['adapter.tar', 'tar'],
    ['adapter.gguf', 'GGUF'],
  ];
  const { LineChart, fmt } = window.LoradChart;

  // ---- small DOM helpers -------------------------------------------------------------------

  // Builds elements from data with textContent only: no API string ever becomes markup.
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : v);
      }
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return e;
  }

  function setText(id, text) { $(id).textContent = text === null || text === undefined ? '' : String(text); }

  function show(el, on) { el.hidden = !on; }

  function pad2(n) { return String(n).padStart(2, '0'); }

  function fmtTime(unix) {
    if (unix === null || unix === undefined) return '';
    const d = new Date(unix * 1000);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function fmtDuration(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return '';
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return '';
    if (n < 1024) return `${n} B`;
    if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
    if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
    return `${(n / (1 << 30)).toFixed(2)} GiB`;
  }

  function fmtRate(v) { return v === null || v === undefined ? '' : Math.round(v).toLocaleString('en-US'); }

  // ---- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, err) {
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.type = err.type || null;
      this.param = err.param === undefined ? null : err.param;
      this.code = err.code || null;
    }
  }

  function apiKey() { return sessionStorage.getItem(KEY_STORE) || ''; }

  function authHeaders(extra) {
    const hd = new Headers(extra || {});
    const k = apiKey();
    if (k) hd.set('Authorization', 'Bearer ' + k);
    return hd;
  }

  function isAbort(e) { return e && (e.name === 'AbortError' || e.code === 20); }

  // One request; resolves with the Response when it is 2xx, else throws ApiError with the
  // server's error object. A 401/403 raises the key banner, a network failure the other one.
  async function request(path, opts = {}) {
    const init = { method: opts.method || 'GET', headers: authHeaders(opts.headers), signal: opts.signal };
    if (opts.json !== undefined) {
      init.headers.set('Content-Type', 'application/json');
      init.body = JSON.stringify(opts.json);
    } else if (opts.body !== undefined) {
      init.body = opts.body;
    }
    let r;
    try {
      r = await fetch(path, init);
    } catch (e) {
      if (isAbort(e)) throw e;
      netBanner(`Cannot reach lorad (${e.message}). Retrying…`);
      throw new ApiError(0, { message: `cannot reach lorad: ${e.message}` });
    }
    netBanner(null);
    if (r.ok) {
      authBanner(null);
      return r;
    }
    let err = { message: `HTTP ${r.status} ${r.statusText}` };
    try {
      const j = await r.json();
      if (j && j.error && typeof j.error === 'object') err = j.error;
    } catch (_) { /* not JSON: keep the status line */ }
    const ae = new ApiError(r.status, err);
    if (r.status === 401 || r.status === 403) authBanner(ae);
    throw ae;
  }

  async function api(path, opts) {
    const r = await request(path, opts);
    return r.json();
  }

  // Every page of a list route that pages with `after` (jobs, checkpoints).
  async function apiAll(path, signal, maxPages = 20) {
    const out = [];
    let after = null;
    for (let i = 0; i < maxPages; i++) {
      const sep = path.includes('?') ? '&' : '?';
      const page = await api(path + (after ? `${sep}after=${encodeURIComponent(after)}` : ''), { signal });
      out.push(...page.data);
      if (!page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    return out;
  }

  // Reads a text/event-stream body (EventSource cannot send the Authorization header, so the
  // stream comes through fetch). Calls onEvent({id, data}) per event; comments (keepalives) are
  // skipped. Resolves when the body ends or onEvent returns false.
  async function readSSE(response, onEvent) {
    const reader = response.body.getReader();
    const dec = new TextDecoder();
    let buf = '', id = null, data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf[nl] === '\r' && buf[nl + 1] === '\n' ? 2 : 1));
        if (line === '') {
          if (data.length) {
            const keep = onEvent({ id, data: data.join('\n') });
            data = [];
            if (keep === false) { reader.cancel().catch(() => {}); return; }
          }
          continue;
        }
        if (line.startsWith(':')) continue;
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        let val = c < 0 ? '' : line.slice(c + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'id') id = val;
        else if (field === 'data') data.push(val);
      }
    }
  }

  // ---- banners and the key -----------------------------------------------------------------

  function authBanner(err) {
    const b = $('auth-error');
    if (!err) { b.hidden = true; return; }
    setText('auth-error-title', err.status === 401
      ? 'API key missing: this daemon needs one.'
      : 'API key wrong: the daemon refused it.');
    setText('auth-error-detail', `${err.message}. Enter the key in the field above and press “Use key”.`);
    b.hidden = false;
  }

  function netBanner(msg) {
    const b = $('net-error');
    b.textContent = msg || '';
    b.hidden = !msg;
  }

  function initKey() {
    const input = $('api-key');
    input.value = apiKey();
    $('key-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const k = input.value.trim();
      if (k) sessionStorage.setItem(KEY_STORE, k); else sessionStorage.removeItem(KEY_STORE);
      authBanner(null);
      route(true);
    });
    $('api-key-clear').addEventListener('click', () => {
      sessionStorage.removeItem(KEY_STORE);
      input.value = '';
      route(true);
    });
  }

  // Downloads need the key too: with one, the file is fetched with the header and saved through
  // an object URL; without one (auth off) the plain link works.
  async function download(a) {
    const r = await request(a.getAttribute('href'));
    const blob = await r.blob();
    const cd = r.headers.get('Content-Disposition') || '';
    const m = /filename="([^"]*)"/.exec(cd);
    const url = URL.createObjectURL(blob);
    const tmp = h('a', { href: url, download: m ? m[1] : a.getAttribute('download') || 'download', hidden: true });
    document.body.appendChild(tmp);
    tmp.click();
    tmp.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function downloadLink(href, label, name, size) {
    return h('a', {
      href, download: name, class: 'dl', 'data-download': 'true', title: size !== undefined ? fmtBytes(size) : null,
      onclick: (e) => {
        if (!apiKey()) return;
        e.preventDefault();
        const a = e.currentTarget;
        a.classList.add('busy');
        download(a).catch((err) => {
          if (!isAbort(err)) toast(`Download failed: ${err.message}`);
        }).finally(() => a.classList.remove('busy'));
      },
    }, label);
  }

  function toast(msg) {
    const el = $('net-error');
    el.textContent = msg;
    el.hidden = false;
  }

  // ---- polling with backoff ----------------------------------------------------------------

  // Runs fn every `min` ms while it reports activity, backing off towards `max` when it does not
  // (nothing running) or fails; hidden tabs do not poll.
  class Poller {
    constructor(fn, min = 2000, max = 30000) {
      this.fn = fn; this.min = min; this.max = max; this.delay = min; this.timer = null; this.stopped = true;
      this.onVis = () => { if (!document.hidden && !this.stopped) this.kick(); };
    }
    start() { this.stopped = false; document.addEventListener('visibilitychange', this.onVis); this.kick(); }
    stop() { this.stopped = true; clearTimeout(this.timer); document.removeEventListener('visibilitychange', this.onVis); }
    kick() { this.delay = this.min; clearTimeout(this.timer); this.run(); }
    // One poll at a time, so an older answer never overwrites a newer one; a kick during a poll
    // polls again right after it.
    async run() {
      if (this.stopped) return;
      if (this.busy) { this.again = true; return; }
      this.busy = true;
      let active = false;
      try {
        active = await this.fn();
      } catch (e) {
        if (isAbort(e)) { this.busy = false; return; }
        active = false;
      }
      this.busy = false;
      if (this.stopped) return;
      if (this.again) { this.again = false; this.delay = this.min; this.run(); return; }
      this.delay = active ? this.min : Math.min(this.max, Math.round(this.delay * 1.6));
      this.nextAt = Date.now() + this.delay;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => { if (!document.hidden) this.run(); }, this.delay);
    }
  }

  // ---- router ------------------------------------------------------------------------------

  let current = null;  // {name, key, unmount}
  const views = {};

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, query] = raw.split('?');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    const params = new URLSearchParams(query || '');
    if (parts[0] === 'jobs' && parts[1]) return { name: 'job', arg: parts[1], params };
    if (parts[0] === 'new') return { name: 'new', params };
    if (parts[0] === 'playground') return { name: 'playground', params };
    return { name: 'jobs', params };
  }

  function route(force) {
    const r = parseHash();
    const key = r.name + '/' + (r.arg || '');
    if (current && current.key === key && !force) return;
    if (current && current.unmount) current.unmount();
    for (const s of document.querySelectorAll('.view')) s.hidden = s.id !== 'view-' + r.name;
    for (const a of document.querySelectorAll('[data-nav]')) {
      const on = a.dataset.nav === r.name || (r.name === 'job' && a.dataset.nav === 'jobs');
      if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    const ctx = { alive: true, ctrl: new AbortController() };
    ctx.signal = ctx.ctrl.signal;
    const v = views[r.name];
    const unmount = v.mount(ctx, r.arg, r.params);
    current = {
      key, unmount: () => { ctx.alive = false; ctx.ctrl.abort(); if (unmount) unmount(); },
    };
  }

  // ---- jobs list ---------------------------------------------------------------------------

  function badge(status, control) {
    const b = h('span', { class: `badge st-${status}`, 'data-testid': 'job-status' }, status);
    if (control && control !== 'none' && !TERMINAL.has(status)) {
      return h('span', null, b, ' ', h('span', { class: 'badge st-control' }, `${control} requested`));
    }
    return b;
  }

  function progressCell(job) {
    const p = job.progress || {};
    const step = p.step || 0, total = p.total_steps;
    const bits = [];
    if (total) bits.push(`${step} / ${total}`);
    else if (step) bits.push(`step ${step}`);
    if (job.status === 'running' && p.eta_s !== null && p.eta_s !== undefined) bits.push(`ETA ${fmtDuration(p.eta_s)}`);
    const bar = h('progress', { max: total || 1, value: total ? Math.min(step, total) : 0, 'aria-label': `step ${step} of ${total || '?'}` });
    return h('div', { class: 'prog', 'data-testid': 'job-progress', 'data-step': String(step), 'data-total': total ? String(total) : '' },
      bar, h('span', { class: 'small' }, bits.join(' · ')));
  }

  views.jobs = (() => {
    let poller = null, pages = 1, filter = '';
    $('status-filter').addEventListener('change', () => {
      filter = $('status-filter').value;
      pages = 1;
      if (poller) poller.kick();
    });
    $('jobs-refresh').addEventListener('click', () => { if (poller) poller.kick(); });
    $('jobs-more').addEventListener('click', () => { pages++; if (poller) poller.kick(); });

    function render(jobs, hasMore) {
      const body = $('jobs-body');
      body.textContent = '';
      for (const j of jobs) {
        const name = j.suffix ? `${j.model} · ${j.suffix}` : j.model;
        body.appendChild(h('tr', { 'data-job-id': j.id, 'data-status': j.status, 'data-testid': 'job-row' },
          h('td', null, h('a', { href: `#/jobs/${j.id}`, class: 'mono job-link' }, j.id), h('div', { class: 'muted small' }, name)),
          h('td', null, badge(j.status, j.control)),
          h('td', { class: 'progress-cell' }, progressCell(j)),
          h('td', { class: 'num' }, j.status === 'running' ? fmtRate((j.progress || {}).tokens_per_s) : ''),
          h('td', { class: 'num', 'data-testid': 'job-queue' }, j.queue_position === null || j.queue_position === undefined ? '' : `#${j.queue_position}`),
          h('td', { class: 'nowrap small' }, fmtTime(j.created_at)),
          h('td', { class: 'nowrap small' }, fmtTime(j.finished_at))));
      }
      show($('jobs-empty'), !jobs.length);
      show($('jobs-more'), hasMore);
    }

    return {
      mount(ctx) {
        $('status-filter').value = filter;
        setText('jobs-updated', '');
        poller = new Poller(async () => {
          const q = filter ? `&status=${encodeURIComponent(filter)}` : '';
          let jobs = [], hasMore = false, after = null;
          try {
            for (let i = 0; i < pages; i++) {
              const page = await api(`/v1/fine_tuning/jobs?limit=100${q}${after ? `&after=${after}` : ''}`, { signal: ctx.signal });
              jobs = jobs.concat(page.data);
              hasMore = page.has_more;
              if (!hasMore || !page.data.length) break;
              after = page.data[page.data.length - 1].id;
            }
          } catch (e) {
            if (!ctx.alive || isAbort(e)) throw e;
            setText('jobs-updated', `Could not load the jobs: ${e.message}`);
            if (e.status === 401 || e.status === 403) render([], false);
            throw e;
          }
          if (!ctx.alive) return false;
          render(jobs, hasMore);
          const active = jobs.some((j) => !TERMINAL.has(j.status));
          setText('jobs-updated', `Updated ${fmtTime(Date.now() / 1000).slice(11)}${active ? '' : ' · nothing running, refreshing less often'}`);
          return active;
        });
        poller.start();
        return () => { poller.stop(); poller = null; };
      },
    };
  })();

  // ---- one job -----------------------------------------------------------------------------

  views.job = (() => {
    const charts = {
      loss: new LineChart($('chart-loss'), {
        readout: $('chart-readout'),
        series: [{ name: 'train', cls: 's-train', smooth: true }, { name: 'valid', cls: 's-valid', markers: true }],
      }),
      lr: new LineChart($('chart-lr'), { readout: $('chart-lr-readout'), series: [{ name: 'lr', cls: 's-lr' }] }),
      grad: new LineChart($('chart-grad'), { readout: $('chart-grad-readout'), series: [{ name: 'grad norm', cls: 's-grad' }] }),
      tps: new LineChart($('chart-tps'), { readout: $('chart-tps-readout'), series: [{ name: 'tokens/s', cls: 's-tps' }] }),
    };
    let S = null;  // the mounted job's state

    $('log-scale').addEventListener('change', () => charts.loss.setLog($('log-scale').checked));
    $('smoothing').addEventListener('input', () => {
      const w = Number($('smoothing').value);
      setText('smoothing-value', w.toFixed(2));
      charts.loss.setSmoothing(w);
    });
    charts.loss.setSmoothing(Number($('smoothing').value));
    $('events-show-metrics').addEventListener('change', () => {
      $('events-log').classList.toggle('show-metrics', $('events-show-metrics').checked);
    });
    for (const [id, action] of [['btn-pause', 'pause'], ['btn-resume', 'resume'], ['btn-cancel', 'cancel']]) {
      $(id).addEventListener('click', () => { if (S) control(S, action); });
    }

    function kv(dl, obj) {
      dl.textContent = '';
      for (const [k, v] of Object.entries(obj || {})) {
        const val = v === null ? 'null' : Array.isArray(v) ? v.join(', ') : typeof v === 'object' ? JSON.stringify(v) : String(v);
        dl.append(h('dt', null, k), h('dd', { class: 'mono', 'data-key': k }, val));
      }
    }

    function renderJob(s, j) {
      s.job = j;
      setText('job-title', j.id);
      const st = $('job-status');
      st.textContent = '';
      st.appendChild(badge(j.status, j.control));
      st.dataset.status = j.status;
      const p = j.progress || {};
      const pc = $('job-progress');
      pc.textContent = '';
      pc.appendChild(progressCell(j));
      if (p.epoch !== null && p.epoch !== undefined) pc.appendChild(h('span', { class: 'small muted' }, ` epoch ${fmt(p.epoch)}`));
      if (j.queue_position) pc.appendChild(h('span', { class: 'small' }, ` · queue position ${j.queue_position}`));
      setText('job-tps', j.status === 'running' ? fmtRate(p.tokens_per_s) : '');
      setText('job-model', j.model);
      const ft = $('job-ft-model');
      ft.textContent = '';
      if (j.fine_tuned_model) {
        ft.append(j.fine_tuned_model, ' ', h('a', { href: `#/playground?adapter=${encodeURIComponent(j.fine_tuned_model)}`, id: 'job-try' }, 'try it'));
      }
      setText('job-created', fmtTime(j.created_at));
      setText('job-started', fmtTime(j.started_at));
      setText('job-finished', j.finished_at ? fmtTime(j.finished_at) : j.estimated_finish ? `estimated ${fmtTime(j.estimated_finish)}` : '');
      const je = $('job-error');
      je.textContent = j.error ? `${j.error.code}: ${j.error.message}` + (j.error.param ? ` (${j.error.param})` : '') : '';
      je.hidden = !j.error;

      const st2 = j.status, pausing = j.control === 'pause';
      $('btn-pause').disabled = s.busy || !(st2 === 'queued' || (st2 === 'running' && !pausing));
      $('btn-resume').disabled = s.busy || !(st2 === 'paused' || (st2 === 'running' && pausing));
      $('btn-cancel').disabled = s.busy || !['validating_files', 'queued', 'running', 'paused'].includes(st2);

      const hp = Object.assign({}, j.hyperparameters, { seed: j.seed, priority: j.priority });
      if (j.memory_estimate_bytes) hp.memory_estimate = fmtBytes(j.memory_estimate_bytes);
      kv($('hyperparameters'), hp);
      kv($('lora-settings'), j.lora);
      kv($('data-settings'), j.data);
    }

    async function control(s, action) {
      const err = $('job-action-error');
      err.hidden = true;
      s.busy = true;
      renderJob(s, s.job);
      try {
        const j = await api(`/v1/fine_tuning/jobs/${s.id}/${action}`, { method: 'POST', signal: s.ctx.signal });
        if (!s.ctx.alive) return;
        s.busy = false;
        renderJob(s, j);
        s.poller.kick();
      } catch (e) {
        if (!s.ctx.alive || isAbort(e)) return;
        s.busy = false;
        err.textContent = `${action[0].toUpperCase() + action.slice(1)} refused: ${e.message}`;
        err.dataset.code = e.code || '';
        err.hidden = false;
        renderJob(s, s.job);
      }
    }

    // ---- metrics: the charts draw the metrics route's rows and nothing else ----

    function publish(s) {
      const rows = s.rows;
      const col = (k) => rows.map((r) => (r[k] === undefined ? null : r[k]));
      const steps = col('step');
      const data = {
        job_id: s.id, steps, train_loss: col('train_loss'), valid_loss: col('valid_loss'), lr: col('lr'),
        grad_norm: col('grad_norm'), tokens_per_s: col('tokens_per_s'),
        // true once the job has ended and its rows were read again from the start
        complete: s.complete,
      };
      window.loradChartData = data;
      $('chart-loss').dataset.complete = s.complete ? 'true' : 'false';
      charts.loss.setData(steps, [data.train_loss, data.valid_loss]);
      charts.lr.setData(steps, [data.lr]);
      charts.grad.setData(steps, [data.grad_norm]);
      charts.tps.setData(steps, [data.tokens_per_s]);
    }

    // Appends the rows after the last step shown; a full read replaces them (a resumed run's
    // repeated steps come back with the newer values, so after a restart only a full read is
    // exact). Reads are serialised: a request while one runs just marks another one due.
    async function loadMetrics(s, full) {
      if (full) s.needFull = true;
      if (s.metricsBusy) { s.metricsDue = true; return; }
      s.metricsBusy = true;
      try {
        do {
          s.metricsDue = false;
          const fullRead = s.needFull || !s.rows.length;
          const wasTerminal = TERMINAL.has(s.job && s.job.status);
          s.needFull = false;
          let after = fullRead ? null : s.rows[s.rows.length - 1].step;
          const got = [];
          for (;;) {
            const q = after === null ? '' : `&after_step=${after}`;
            const page = await api(`/v1/fine_tuning/jobs/${s.id}/metrics?format=json${q}`, { signal: s.ctx.signal });
            got.push(...page.data);
            if (!page.has_more || !page.data.length) break;
            after = page.data[page.data.length - 1].step;
          }
          if (!s.ctx.alive) return;
          s.rows = fullRead ? got : s.rows.concat(got);
          if (fullRead && wasTerminal) s.complete = true;
          publish(s);
        } while (s.metricsDue || s.needFull);
      } finally {
        s.metricsBusy = false;
      }
    }

    function scheduleMetrics(s) {
      if (s.metricsTimer) return;
      s.metricsTimer = setTimeout(() => {
        s.metricsTimer = null;
        if (s.ctx.alive) loadMetrics(s).catch(() => {});
      }, 700);
    }

    // ---- checkpoints, adapter files, datasets ----

    async function loadCheckpoints(s) {
      const list = await apiAll(`/v1/fine_tuning/jobs/${s.id}/checkpoints?limit=100`, s.ctx.signal, 5);
      if (!s.ctx.alive) return;
      const body = $('checkpoints-body');
      body.textContent = '';
      for (const c of list) {
        const m = c.metrics || {};
        const base = `/v1/fine_tuning/jobs/${s.id}/checkpoints/${c.id}/`;
        const held = m.full_valid_loss !== null && m.full_valid_loss !== undefined ? m.full_valid_loss : m.valid_loss;
        body.appendChild(h('tr', { 'data-checkpoint-id': c.id, 'data-step': String(c.step_number) },
          h('td', { class: 'num' }, String(c.step_number)),
          h('td', { class: 'num' }, fmt(m.train_loss)),
          h('td', { class: 'num', 'data-testid': 'held-out-loss', title: m.full_valid_loss !== null && m.full_valid_loss !== undefined ? 'full_valid_loss' : 'valid_loss' }, fmt(held)),
          h('td', { class: 'nowrap small' }, fmtTime(c.created_at)),
          h('td', { class: 'downloads' },
            ADAPTER_FILES.map(([f, label]) => downloadLink(base + f, label, `${s.id}-step-${c.step_number}-${f}`)),
            c.fine_tuned_model_checkpoint
              ? h('a', { href: `#/playground?adapter=${encodeURIComponent(c.fine_tuned_model_checkpoint)}`, class: 'dl' }, 'try')
              : null)));
      }
      show($('checkpoints-empty'), !list.length);
    }

    async function loadAdapterFiles(s) {
      const box = $('adapter-downloads');
      const j = s.job;
      if (!j || j.status !== 'succeeded' || !j.fine_tuned_model) { box.textContent = ''; return; }
      const name = encodeURIComponent(j.fine_tuned_model);
      const m = await api(`/v1/models/${name}`, { signal: s.ctx.signal });
      if (!s.ctx.alive) return;
      box.textContent = '';
      box.append(h('span', { class: 'k' }, 'Final adapter: '));
      const sizes = {};
      for (const f of m.files || []) sizes[f.name] = f.bytes;
      for (const [f, label] of ADAPTER_FILES) {
        if (m.files && !(f in sizes)) continue;
        box.append(downloadLink(`/v1/models/${name}/${f}`, `${label}${sizes[f] !== undefined ? ` (${fmtBytes(sizes[f])})` : ''}`, `${j.id}-${f}`, sizes[f]));
      }
      if (m.error) box.append(h('span', { class: 'inline-error' }, m.error));
    }

    async function loadDatasets(s) {
      const box = $('dataset-report');
      const j = s.job;
      const ids = [['training', j.training_file], ['validation', j.validation_file]].filter((x) => x[1]);
      const files = await Promise.all(ids.map(([, id]) => api(`/v1/files/${id}`, { signal: s.ctx.signal }).catch((e) => ({ id, failed: e.message }))));
      if (!s.ctx.alive) return;
      box.textContent = '';
      ids.forEach(([role], i) => {
        const f = files[i];
        if (f.failed) { box.append(h('p', { class: 'inline-error' }, `${role} file ${f.id}: ${f.failed}`)); return; }
        box.append(h('h3', null, `${role[0].toUpperCase() + role.slice(1)}: `, h('span', { class: 'mono' }, f.filename), h('span', { class: 'muted small' }, ` ${f.id}`)), fileReport(f));
      });
    }

    // ---- the events log ----

    function eventItem(ev) {
      const cls = `ev ev-${ev.type || 'message'} lvl-${ev.level || 'info'}`;
      let text = ev.message || '';
      if (ev.type === 'metrics' && ev.data) {
        const d = ev.data;
        text = `step ${d.step}/${d.total_steps} loss ${fmt(d.train_loss)}` + (d.valid_loss !== null && d.valid_loss !== undefined ? ` valid ${fmt(d.valid_loss)}` : '') + ` lr ${fmt(d.lr)}`;
      }
      return h('li', { class: cls, 'data-seq': ev.seq !== undefined ? String(ev.seq) : null },
        h('span', { class: 'ev-time mono small' }, fmtTime(ev.created_at).slice(11)), ' ',
        h('span', { class: `ev-type small` }, ev.type || 'message'), ' ',
        h('span', { class: 'ev-msg' }, text));
    }

    const MAX_EVENTS = 2000;

    function onEvent(s, ev) {
      const log = $('events-log');
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      log.appendChild(eventItem(ev));
      while (log.childElementCount > MAX_EVENTS) log.firstElementChild.remove();
      if (atEnd) log.scrollTop = log.scrollHeight;
      if (ev.type === 'metrics') scheduleMetrics(s);
      else if (ev.type === 'checkpoint') loadCheckpoints(s).catch(() => {});
      else if (ev.type === 'status' || ev.type === 'job_restarted') {
        // A run that starts again after steps were made may repeat steps: read them all again.
        if ((ev.type === 'job_restarted' || (ev.data && ev.data.to === 'running')) && s.rows.length) s.needFull = true;
        s.poller.kick();
      }
    }

    async function streamEvents(s) {
      let backoff = 1000;
      while (s.ctx.alive) {
        const hd = {};
        if (s.lastSeq !== null) hd['Last-Event-ID'] = s.lastSeq;
        setText('events-state', s.lastSeq === null ? 'connecting…' : 'live');
        let done = false;
        try {
          const r = await request(`/v1/fine_tuning/jobs/${s.id}/events?stream=true`, { headers: hd, signal: s.ctx.signal });
          setText('events-state', 'live');
          backoff = 1000;
          await readSSE(r, ({ id, data }) => {
            if (data === '[DONE]') { done = true; return false; }
            let ev;
            try { ev = JSON.parse(data); } catch (_) { return true; }
            if (id !== null) s.lastSeq = id;
            if (s.ctx.alive) onEvent(s, ev);
            return s.ctx.alive;
          });
        } catch (e) {
          if (!s.ctx.alive || isAbort(e)) return;
          if (e.status === 401 || e.status === 403 || e.status === 404) { setText('events-state', `stream refused: ${e.message}`); return; }
          setText('events-state', `stream interrupted (${e.message}); reconnecting`);
        }
        if (done) { setText('events-state', 'complete: the job has ended'); return; }
        if (!s.ctx.alive) return;
        await new Promise((res) => setTimeout(res, backoff));
        backoff = Math.min(15000, backoff * 2);
      }
    }

    return {
      mount(ctx, id) {
        const s = S = {
          ctx, id, job: null, rows: [], complete: false, lastSeq: null, busy: false,
          metricsBusy: false, metricsDue: false, needFull: false, metricsTimer: null, ended: false, loadedOnce: false,
        };
        window.loradChartData = { job_id: id, steps: [], train_loss: [], valid_loss: [], lr: [], grad_norm: [], tokens_per_s: [], complete: false };
        setText('job-title', id);
        for (const k of ['job-status', 'job-progress', 'job-tps', 'job-model', 'job-ft-model', 'job-created', 'job-started', 'job-finished', 'events-state']) setText(k, '');
        for (const k of ['events-log', 'checkpoints-body', 'adapter-downloads', 'dataset-report', 'hyperparameters', 'lora-settings', 'data-settings']) $(k).textContent = '';
        $('job-action-error').hidden = true;
        $('job-error').hidden = true;
        $('checkpoints-empty').hidden = true;
        $('chart-loss').dataset.complete = 'false';
        for (const c of Object.values(charts)) { c.setCursor(null); c.setData([], c.opts.series.map(() => [])); }
        for (const b of ['btn-pause', 'btn-resume', 'btn-cancel']) $(b).disabled = true;

        s.poller = new Poller(async () => {
          let j;
          try {
            j = await api(`/v1/fine_tuning/jobs/${id}`, { signal: ctx.signal });
          } catch (e) {
            if (!ctx.alive || isAbort(e)) throw e;
            if (!s.job) setText('job-status', `Could not load the job: ${e.message}`);
            throw e;
          }
          if (!ctx.alive) return false;
          const prev = s.job;
          renderJob(s, j);
          if (!s.loadedOnce) {
            s.loadedOnce = true;
            loadDatasets(s).catch(() => {});
            loadCheckpoints(s).catch(() => {});
            streamEvents(s);
          }
          const p = j.progress || {};
          const last = s.rows.length ? s.rows[s.rows.length - 1].step : 0;
          if ((p.step || 0) > last) scheduleMetrics(s);
          if (TERMINAL.has(j.status)) {
            if (!s.ended) {
              // The end: read every row again so the chart is exactly the stored history, and
              // fetch what only exists now (the final adapter, the last checkpoint).
              s.ended = true;
              loadMetrics(s, true).catch(() => {});
              loadCheckpoints(s).catch(() => {});
              loadAdapterFiles(s).catch(() => {});
            }
            return false;
          }
          if (prev && prev.status !== j.status) loadCheckpoints(s).catch(() => {});
          return true;
        }, 2000, 30000);
        s.poller.start();
        return () => {
          s.poller.stop();
          clearTimeout(s.metricsTimer);
          if (S === s) S = null;
        };
      },
    };
  })();

  // ---- a file's validation report (new job form and job page) ------------------------------

  function fileReport(f, listId) {
    const v = f.validation || {};
    const wrap = h('div', { class: 'file-report', 'data-status': f.status || '' });
    const okFile = f.status === 'processed';
    wrap.append(h('p', { class: okFile ? 'ok' : 'bad', 'data-testid': 'file-status' },
      okFile ? '✓ ' : '✗ ',
      h('strong', null, f.status || 'unknown'),
      ` · ${v.records !== undefined ? v.records : '?'} records in ${v.lines !== undefined ? v.lines : f.line_count} lines`,
      f.format ? ` · format ${f.format}` : '',
      v.blank ? ` · ${v.blank} blank` : '',
      f.bytes !== undefined ? ` · ${fmtBytes(f.bytes)}` : ''));
    if (f.status_details) wrap.append(h('p', { class: 'small' }, f.status_details));
    const problems = Object.entries(v.problems || {}).filter(([, n]) => n > 0);
    if (problems.length) wrap.append(h('p', { class: 'small' }, 'Problems: ', problems.map(([k, n]) => `${k} × ${n}`).join(', ')));
    const bad = v.bad_lines || [];
    if (bad.length) {
      wrap.append(h('ol', { class: 'bad-lines', id: listId || null, 'aria-label': 'Invalid lines' },
        bad.map((b) => h('li', { 'data-line': String(b.line), 'data-problem': b.problem },
          h('span', { class: 'ln mono' }, `line ${b.line}`), ' ', h('code', null, b.problem), ' ', h('span', null, b.reason)))));
      if (v.invalid > bad.length) wrap.append(h('p', { class: 'small muted' }, `The first ${bad.length} of ${v.invalid} invalid lines are listed.`));
    }
    if (f.status === 'error') wrap.append(h('p', { class: 'small' }, 'Jobs refuse a file with invalid lines: fix them and choose the file again.'));
    return wrap;
  }

  // ---- new job -----------------------------------------------------------------------------

  views.new = (() => {
    const uploaded = { train: null, valid: null };
    const targets = $('lora-target_modules');
    for (const t of TARGETS) {
      targets.append(h('label', { class: 'check' },
        h('input', { type: 'checkbox', value: t, id: `target-${t}`, checked: DEFAULT_TARGETS.includes(t) }), ' ', t));
    }

    function clearErrors() {
      for (const e of document.querySelectorAll('#job-form .field-error')) { e.hidden = true; e.textContent = ''; }
      for (const e of document.querySelectorAll('#job-form [aria-invalid]')) e.removeAttribute('aria-invalid');
      $('form-error').hidden = true;
    }

    // Maps an error's param (a dotted path of the job body, maybe with an index) to the form
    // field it came from; null when the form has no such field.
    function fieldFor(param) {
      if (!param) return null;
      const p = param.replace(/\[\d+\]/g, '').replace(/^method\.supervised\./, '');
      const direct = {
        model: 'base-model', training_file: 'train-file', validation_file: 'valid-file', suffix: 'suffix',
        seed: 'seed', priority: 'priority', 'data.template': 'data-template',
        'hyperparameters.learning_rate_multiplier': 'hp-learning_rate',
      };
      if (direct[p]) return direct[p];
      let m = /^hyperparameters\.(\w+)/.exec(p);
      if (m && $('hp-' + m[1])) return 'hp-' + m[1];
      m = /^lora\.(\w+)/.exec(p);
      if (m && $('lora-' + m[1])) return 'lora-' + m[1];
      return null;
    }

    function fieldError(field, message) {
      const el = $('err-' + field);
      const input = $(field);
      if (!el || !input) return false;
      el.textContent = message;
      el.hidden = false;
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-describedby', 'err-' + field);
      const det = input.closest('details');
      if (det) det.open = true;
      input.focus();
      return true;
    }

    async function upload(which) {
      const input = $(which === 'train' ? 'train-file' : 'valid-file');
      const report = $(which === 'train' ? 'train-report' : 'valid-report');
      const errId = which === 'train' ? 'err-train-file' : 'err-valid-file';
      uploaded[which] = null;
      $(errId).hidden = true;
      report.textContent = '';
      const file = input.files && input.files[0];
      if (!file) { report.hidden = true; return; }
      report.hidden = false;
      report.dataset.state = 'uploading';
      report.append(h('p', { class: 'muted' }, `Uploading ${file.name} (${fmtBytes(file.size)})…`));
      const fd = new FormData();
      fd.append('purpose', 'fine-tune');
      fd.append('file', file, file.name);
      try {
        const f = await api('/v1/files', { method: 'POST', body: fd });
        if (input.files[0] !== file) return;  // another file was chosen meanwhile
        uploaded[which] = f;
        report.textContent = '';
        report.append(h('p', { class: 'small muted' }, 'Uploaded as ', h('span', { class: 'mono', 'data-testid': 'file-id' }, f.id)),
          fileReport(f, which === 'train' ? 'train-bad-lines' : 'valid-bad-lines'));
        report.dataset.state = f.status || 'done';
      } catch (e) {
        report.textContent = '';
        report.hidden = true;
        fieldError(which === 'train' ? 'train-file' : 'valid-file', `Upload refused: ${e.message}`);
      }
    }
    $('train-file').addEventListener('change', () => upload('train'));
    $('valid-file').addEventListener('change', () => upload('valid'));

    // Numbers typed in text fields: a number becomes a JSON number, "auto" stays "auto", and
    // anything else is sent as typed so the API, not the page, says what is wrong with it.
    function value(id) {
      const v = $(id).value.trim();
      if (v === '') return undefined;
      if (/^[-+]?\d+$/.test(v)) return parseInt(v, 10);
      if (/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(v)) return parseFloat(v);
      return v;
    }

    function body() {
      const b = { model: $('base-model').value, training_file: uploaded.train.id };
      if (uploaded.valid) b.validation_file = uploaded.valid.id;
      const suffix = $('suffix').value.trim();
      if (suffix) b.suffix = suffix;
      for (const k of ['seed', 'priority']) { const v = value(k); if (v !== undefined) b[k] = v; }
      const hp = {};
      for (const k of ['n_epochs', 'learning_rate', 'batch_size', 'max_steps', 'warmup_steps', 'max_seq_len', 'eval_every_steps', 'checkpoint_every_steps', 'threads']) {
        const v = value('hp-' + k);
        if (v !== undefined) hp[k] = v;
      }
      if ($('hp-lr_scheduler').value) hp.lr_scheduler = $('hp-lr_scheduler').value;
      if (Object.keys(hp).length) b.hyperparameters = hp;
      const lora = {};
      for (const k of ['r', 'alpha']) { const v = value('lora-' + k); if (v !== undefined) lora[k] = v; }
      const picked = TARGETS.filter((t) => $(`target-${t}`).checked);
      if (picked.join() !== DEFAULT_TARGETS.join()) lora.target_modules = picked;
      if (Object.keys(lora).length) b.lora = lora;
      if ($('data-template').value) b.data = { template: $('data-template').value };
      return b;
    }

    $('job-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      clearErrors();
      if (!uploaded.train) {
        fieldError('train-file', $('train-file').files.length ? 'Wait for the upload to finish (or choose the file again).' : 'Choose a training file first.');
        return;
      }
      const btn = $('submit-job');
      btn.disabled = true;
      setText('submit-state', 'Creating the job…');
      try {
        const j = await api('/v1/fine_tuning/jobs', { method: 'POST', json: body() });
        setText('submit-state', '');
        location.hash = `#/jobs/${j.id}`;
      } catch (err) {
        setText('submit-state', '');
        const field = fieldFor(err.param);
        if (!field || !fieldError(field, err.message)) {
          const fe = $('form-error');
          fe.textContent = err.message + (err.param ? ` (${err.param})` : '');
          fe.hidden = false;
        }
      } finally {
        btn.disabled = false;
      }
    });

    return {
      mount(ctx) {
        clearErrors();
        const sel = $('base-model');
        api('/v1/models', { signal: ctx.signal }).then((list) => {
          if (!ctx.alive) return;
          const keep = sel.value;
          sel.textContent = '';
          const bases = list.data.filter((m) => m.parent === null || m.parent === undefined);
          for (const m of bases) {
            const info = m.error ? ` (unreadable: ${m.error})` : m.parameter_count ? ` · ${(m.parameter_count / 1e6).toFixed(1)}M params` : '';
            sel.append(h('option', { value: m.id, disabled: !!m.error }, m.id + info));
          }
          if (!bases.length) sel.append(h('option', { value: '' }, 'no base model in the models directory'));
          if (keep && bases.some((m) => m.id === keep)) sel.value = keep;
        }).catch((e) => {
          if (!ctx.alive || isAbort(e)) return;
          sel.textContent = '';
          sel.append(h('option', { value: '' }, `could not list models: ${e.message}`));
        });
      },
    };
  })();

  // ---- playground --------------------------------------------------------------------------

  views.playground = (() => {
    let run = null;  // the AbortController of the answers being streamed
    let models = [];

    function baseOf(id) {
      const m = models.find((x) => x.id === id);
      return m ? m.base_model || m.root || m.parent : null;
    }

    $('pg-adapter').addEventListener('change', () => {
      const b = baseOf($('pg-adapter').value);
      if (b && [...$('pg-base').options].some((o) => o.value === b)) $('pg-base').value = b;
    });
    $('pg-prompt').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $('pg-form').requestSubmit(); }
    });
    $('pg-stop').addEventListener('click', () => { if (run) run.abort(); });

    async function answer(model, out, meta, messages, maxTokens, signal) {
      out.textContent = '';
      out.dataset.state = 'streaming';
      meta.textContent = '';
      const body = { model, messages, stream: true, temperature: 0 };
      if (maxTokens !== undefined) body.max_completion_tokens = maxTokens;
      const t0 = performance.now();
      let finish = null, tokens = 0;
      try {
        const r = await request('/v1/chat/completions', { method: 'POST', json: body, signal });
        let failed = null;
        await readSSE(r, ({ data }) => {
          if (data === '[DONE]') return false;
          let chunk;
          try { chunk = JSON.parse(data); } catch (_) { return true; }
          if (chunk.error) { failed = chunk.error.message; return true; }
          for (const c of chunk.choices || []) {
            if (c.delta && c.delta.content) { out.append(c.delta.content); tokens++; }
            if (c.finish_reason) finish = c.finish_reason;
          }
          return true;
        });
        if (failed) throw new ApiError(500, { message: failed });
        out.dataset.state = 'done';
        meta.textContent = `finish: ${finish || '?'} · ${tokens} chunks · ${((performance.now() - t0) / 1000).toFixed(2)} s`;
      } catch (e) {
        if (isAbort(e)) { out.dataset.state = 'stopped'; meta.textContent = 'stopped'; return; }
        out.dataset.state = 'error';
        meta.textContent = '';
        out.append(h('span', { class: 'inline-error' }, `${model}: ${e.message}`));
      }
    }

    $('pg-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const err = $('pg-error');
      err.hidden = true;
      const adapter = $('pg-adapter').value, base = $('pg-base').value;
      const prompt = $('pg-prompt').value;
      const problem = !adapter ? 'Choose an adapter: train a job first.' : !base ? 'Choose a base model.' : !prompt.trim() ? 'Type a prompt.' : null;
      if (problem) { err.textContent = problem; err.hidden = false; return; }
      const messages = [];
      const sys = $('pg-system').value.trim();
      if (sys) messages.push({ role: 'system', content: sys });
      messages.push({ role: 'user', content: prompt });
      const mt = $('pg-max-tokens').value.trim();
      const maxTokens = mt === '' ? undefined : /^\d+$/.test(mt) ? parseInt(mt, 10) : mt;
      if (run) run.abort();
      const mine = run = new AbortController();
      setText('pg-base-name', base);
      setText('pg-adapter-name', adapter);
      $('pg-send').disabled = true;
      $('pg-stop').disabled = false;
      try {
        await Promise.all([
          answer(base, $('pg-out-base'), $('pg-meta-base'), messages, maxTokens, mine.signal),
          answer(adapter, $('pg-out-adapter'), $('pg-meta-adapter'), messages, maxTokens, mine.signal),
        ]);
      } finally {
        if (run === mine) {
          run = null;
          $('pg-send').disabled = false;
          $('pg-stop').disabled = true;
        }
      }
    });

    return {
      mount(ctx, _arg, params) {
        const want = params.get('adapter');
        api('/v1/models', { signal: ctx.signal }).then((list) => {
          if (!ctx.alive) return;
          models = list.data;
          const ad = $('pg-adapter'), bs = $('pg-base');
          const keepA = want || ad.value, keepB = bs.value;
          ad.textContent = '';
          bs.textContent = '';
          const fine = models.filter((m) => m.kind === 'adapter');
          const ckpts = models.filter((m) => m.kind === 'checkpoint');
          if (fine.length) ad.append(h('optgroup', { label: 'Fine-tuned models' }, fine.map((m) => h('option', { value: m.id }, m.id))));
          if (ckpts.length) ad.append(h('optgroup', { label: 'Checkpoints' }, ckpts.map((m) => h('option', { value: m.id }, m.id))));
          if (!fine.length && !ckpts.length) ad.append(h('option', { value: '' }, 'no fine-tuned model yet'));
          for (const m of models.filter((x) => x.parent === null || x.parent === undefined)) bs.append(h('option', { value: m.id }, m.id));
          if (keepA && models.some((m) => m.id === keepA)) ad.value = keepA;
          const b = baseOf(ad.value);
          if (b && models.some((m) => m.id === b)) bs.value = b;
          else if (keepB && models.some((m) => m.id === keepB)) bs.value = keepB;
          $('pg-form').dataset.ready = 'true';
        }).catch((e) => {
          if (!ctx.alive || isAbort(e)) return;
          const err = $('pg-error');
          err.textContent = `Could not list models: ${e.message}`;
          err.hidden = false;
        });
        return () => { if (run) run.abort(); $('pg-form').dataset.ready = 'false'; };
      },
    };
  })();

  // ---- start -------------------------------------------------------------------------------

  initKey();
  window.addEventListener('hashchange', () => route(false));
  route(true);
})();
