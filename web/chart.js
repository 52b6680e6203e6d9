'use strict';
// A small hand-written SVG line chart for the job page: several series against one x axis (the
// step), optional log y axis, exponential smoothing of the series that ask for it, and a hover /
// keyboard readout. SVG rather than canvas so the page stays crisp at any zoom and the strict CSP
// needs nothing beyond CSS classes (colours live in app.css).
(function () {
  const NS = 'http://www.w3.org/2000/svg';
  const M = { left: 56, right: 14, top: 12, bottom: 26 };

  function svg(tag, attrs, parent) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  // TensorBoard's debiased EMA: early points are not dragged towards zero. Nulls pass through
  // as null and do not advance the average.
  function emaSmooth(values, w) {
    if (!(w > 0)) return values.slice();
    const out = new Array(values.length);
    let last = 0, n = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || v === undefined || !Number.isFinite(v)) { out[i] = null; continue; }
      last = last * w + (1 - w) * v;
      n++;
      out[i] = last / (1 - Math.pow(w, n));
    }
    return out;
  }

  function fmt(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return '—';
    const a = Math.abs(v);
    if (a === 0) return '0';
    const exp = () => v.toExponential(2).replace(/\.?0+e/, 'e');
    if (a >= 1e5) return exp();
    if (a >= 100) return v.toFixed(0);
    if (a >= 1e-3) return String(Number(v.toPrecision(4)));
    return exp();
  }

  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const r = raw / mag;
    return (r >= 5 ? 10 : r >= 2 ? 5 : r >= 1 ? 2 : 1) * mag;
  }

  function linearTicks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const step = niceStep(hi - lo, count);
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return out;
  }

  // Log ticks at 1, 2, 5 per decade while there are few decades, else decades only. Works on
  // log10 values.
  function logTicks(lo, hi) {
    const out = [];
    const mults = hi - lo < 2.5 ? [1, 2, 5] : [1];
    for (let d = Math.floor(lo); d <= Math.ceil(hi); d++) {
      for (const m of mults) {
        const t = d + Math.log10(m);
        if (t >= lo - 1e-9 && t <= hi + 1e-9) out.push(t);
      }
    }
    return out.length >= 2 ? out : linearTicks(lo, hi, 4);
  }

  // Keeps a path to about two points per pixel column (first, min, max, last of each), so a job
  // with 10^5 steps draws as fast as one with 10^3 and still shows its spikes.
  function decimate(pts, x0, pxPerX, maxCols) {
    if (pts.length <= maxCols * 2) return pts;
    const out = [];
    let col = null, first, last, lo, hi;
    const flush = () => {
      const group = [first, lo, hi, last].filter((p, i, a) => a.indexOf(p) === i).sort((a, b) => a[0] - b[0]);
      for (const p of group) out.push(p);
    };
    for (const p of pts) {
      const c = Math.floor((p[0] - x0) * pxPerX);
      if (c !== col) {
        if (col !== null) flush();
        col = c; first = last = lo = hi = p;
      } else {
        last = p;
        if (p[1] < lo[1]) lo = p;
        if (p[1] > hi[1]) hi = p;
      }
    }
    if (col !== null) flush();
    return out;
  }

  class LineChart {
    // opts.series: [{name, cls, smooth (draw the smoothed line over a faint raw one),
    // markers (draw a dot per value: sparse series such as validation loss)}];
    // opts.readout: the element the hover readout is written to; opts.xLabel.
    constructor(el, opts) {
      this.el = el;
      this.opts = opts;
      this.x = [];
      this.ys = opts.series.map(() => []);
      this.log = false;
      this.smoothing = 0;
      this.cursor = null;
      el.textContent = '';
      const legend = document.createElement('div');
      legend.className = 'legend';
      for (const s of opts.series) {
        const item = document.createElement('span');
        item.className = 'legend-item ' + s.cls;
        const sw = document.createElement('span');
        sw.className = 'swatch';
        item.append(sw, document.createTextNode(s.name));
        legend.appendChild(item);
      }
      if (opts.series.length > 1) el.appendChild(legend);
      this.svg = svg('svg', { class: 'chart-svg', 'aria-hidden': 'true' }, el);
      this.svg.addEventListener('pointermove', (e) => this.hover(e));
      this.svg.addEventListener('pointerleave', () => this.setCursor(null));
      el.addEventListener('keydown', (e) => this.key(e));
      el.addEventListener('blur', () => this.setCursor(null));
      if (window.ResizeObserver) {
        let pending = false;
        new ResizeObserver(() => {
          if (pending) return;
          pending = true;
          requestAnimationFrame(() => { pending = false; this.render(); });
        }).observe(el);
      }
    }

    setData(x, ys) {
      this.x = x;
      this.ys = ys;
      this.el.dataset.count = String(x.length);
      if (this.cursor !== null && this.cursor >= x.length) this.cursor = x.length - 1;
      this.render();
    }

    setLog(on) { this.log = !!on; this.render(); }
    setSmoothing(w) { this.smoothing = w; this.render(); }

    ty(v) { return this.log ? (v > 0 ? Math.log10(v) : null) : v; }

    render() {
      const el = this.el, s = this.svg;
      const W = Math.max(200, s.clientWidth || el.clientWidth || 600);
      const H = Math.max(120, s.clientHeight || 200);
      s.setAttribute('viewBox', `0 0 ${W} ${H}`);
      s.setAttribute('width', W);
      s.setAttribute('height', H);
      while (s.firstChild) s.removeChild(s.firstChild);
      this.geom = null;
      const pw = W - M.left - M.right, ph = H - M.top - M.bottom;
      const n = this.x.length;
      if (!n) {
        svg('text', { x: W / 2, y: H / 2, class: 'chart-empty', 'text-anchor': 'middle' }, s).textContent = 'no data yet';
        return;
      }
      this.smoothed = this.opts.series.map((ser, i) => (ser.smooth && this.smoothing > 0 ? emaSmooth(this.ys[i], this.smoothing) : null));

      let ylo = Infinity, yhi = -Infinity;
      const scan = (arr) => {
        for (const v of arr) {
          if (v === null || !Number.isFinite(v)) continue;
          const t = this.ty(v);
          if (t === null) continue;
          if (t < ylo) ylo = t;
          if (t > yhi) yhi = t;
        }
      };
      this.ys.forEach(scan);
      if (!Number.isFinite(ylo)) {
        svg('text', { x: W / 2, y: H / 2, class: 'chart-empty', 'text-anchor': 'middle' }, s).textContent =
          this.log ? 'no positive values for a log scale' : 'no values yet';
        return;
      }
      if (yhi === ylo) { const d = this.log ? 0.5 : Math.abs(ylo) * 0.1 || 1; ylo -= d; yhi += d; }
      else { const pad = (yhi - ylo) * 0.05; yhi += pad; if (this.log || ylo - pad > 0 || ylo < 0) ylo -= pad; else ylo = Math.max(0, ylo - pad); }
      const x0 = this.x[0], x1 = this.x[n - 1] === x0 ? x0 + 1 : this.x[n - 1];
      const px = (x) => M.left + ((x - x0) / (x1 - x0)) * pw;
      const py = (t) => M.top + (1 - (t - ylo) / (yhi - ylo)) * ph;
      this.geom = { W, H, pw, ph, x0, x1, px, py };

      const grid = svg('g', { class: 'grid' }, s);
      const yt = this.log ? logTicks(ylo, yhi) : linearTicks(ylo, yhi, Math.max(2, Math.floor(ph / 40)));
      for (const t of yt) {
        const y = py(t);
        svg('line', { x1: M.left, x2: W - M.right, y1: y, y2: y }, grid);
        svg('text', { x: M.left - 6, y: y + 4, 'text-anchor': 'end', class: 'tick' }, grid).textContent = fmt(this.log ? Math.pow(10, t) : t);
      }
      const xt = linearTicks(x0, x1, Math.max(2, Math.floor(pw / 80))).filter((t) => Number.isInteger(t) || x1 - x0 < 10);
      for (const t of xt) {
        const x = px(t);
        svg('line', { x1: x, x2: x, y1: M.top, y2: H - M.bottom, class: 'xgrid' }, grid);
        svg('text', { x, y: H - M.bottom + 16, 'text-anchor': 'middle', class: 'tick' }, grid).textContent = fmt(t);
      }
      svg('rect', { x: M.left, y: M.top, width: pw, height: ph, class: 'frame' }, s);

      const pathOf = (vals) => {
        const pts = [];
        for (let i = 0; i < n; i++) {
          const v = vals[i];
          if (v === null || v === undefined || !Number.isFinite(v)) continue;
          const t = this.ty(v);
          if (t !== null) pts.push([this.x[i], t]);
        }
        const kept = decimate(pts, x0, pw / (x1 - x0), pw);
        return { d: kept.map((p, i) => (i ? 'L' : 'M') + px(p[0]).toFixed(1) + ' ' + py(p[1]).toFixed(1)).join(''), pts };
      };
      this.opts.series.forEach((ser, i) => {
        const g = svg('g', { class: 'series ' + ser.cls }, s);
        const raw = pathOf(this.ys[i]);
        if (this.smoothed[i]) {
          svg('path', { d: raw.d, class: 'line raw' }, g);
          svg('path', { d: pathOf(this.smoothed[i]).d, class: 'line' }, g);
        } else {
          svg('path', { d: raw.d, class: 'line' }, g);
        }
        if (ser.markers && raw.pts.length <= 400) {
          for (const p of raw.pts) svg('circle', { cx: px(p[0]), cy: py(p[1]), r: 2.5, class: 'marker' }, g);
        }
      });
      this.cursorLayer = svg('g', { class: 'cursor' }, s);
      this.drawCursor();
    }

    hover(e) {
      if (!this.geom || !this.x.length) return;
      const r = this.svg.getBoundingClientRect();
      const sx = ((e.clientX - r.left) / r.width) * this.geom.W;
      const xv = this.geom.x0 + ((sx - M.left) / this.geom.pw) * (this.geom.x1 - this.geom.x0);
      this.setCursor(this.nearest(xv));
    }

    nearest(xv) {
      const x = this.x;
      let lo = 0, hi = x.length - 1;
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (x[mid] < xv) lo = mid; else hi = mid;
      }
      return Math.abs(x[lo] - xv) <= Math.abs(x[hi] - xv) ? lo : hi;
    }

    key(e) {
      const n = this.x.length;
      if (!n) return;
      const big = Math.max(1, Math.round(n / 20));
      let c = this.cursor === null ? n - 1 : this.cursor;
      if (e.key === 'ArrowLeft') c -= e.shiftKey ? big : 1;
      else if (e.key === 'ArrowRight') c += e.shiftKey ? big : 1;
      else if (e.key === 'PageDown') c -= big;
      else if (e.key === 'PageUp') c += big;
      else if (e.key === 'Home') c = 0;
      else if (e.key === 'End') c = n - 1;
      else if (e.key === 'Escape') { this.setCursor(null); return; }
      else return;
      e.preventDefault();
      this.setCursor(Math.min(n - 1, Math.max(0, c)));
    }

    setCursor(i) {
      this.cursor = i;
      this.drawCursor();
    }

    drawCursor() {
      const out = this.opts.readout;
      const layer = this.cursorLayer;
      if (layer) while (layer.firstChild) layer.removeChild(layer.firstChild);
      const i = this.cursor;
      if (i === null || !this.geom || i >= this.x.length) {
        if (out) out.textContent = '\u00a0';
        return;
      }
      const g = this.geom;
      const x = g.px(this.x[i]);
      svg('line', { x1: x, x2: x, y1: M.top, y2: g.H - M.bottom, class: 'cursor-line' }, layer);
      const parts = [`${this.opts.xLabel || 'step'} ${this.x[i]}`];
      this.opts.series.forEach((ser, k) => {
        const v = this.ys[k][i];
        const sm = this.smoothed && this.smoothed[k] ? this.smoothed[k][i] : null;
        if (v === null || v === undefined) { if (!ser.markers) parts.push(`${ser.name} —`); return; }
        parts.push(`${ser.name} ${fmt(v)}` + (sm !== null ? ` (smoothed ${fmt(sm)})` : ''));
        const t = this.ty(sm !== null ? sm : v);
        if (t !== null) svg('circle', { cx: x, cy: g.py(t), r: 4, class: 'cursor-dot ' + ser.cls }, layer);
      });
      if (out) out.textContent = parts.join(' · ');
    }
  }

  window.LoradChart = { LineChart, emaSmooth, fmt };
})();
