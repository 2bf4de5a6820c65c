// The studio's live player: plays a speech job's audio chunks gaplessly while they are being made.
//
// The server streams the job's chunks as frames (webui/live.py describes the format). Every chunk becomes one
// AudioBufferSourceNode started at an exact time: the previous chunk's start plus its length in samples, on an
// AudioContext running at the audio's own rate, so the joined played audio is the synthesized audio, with no
// silence, overlap or resampling seam between chunks. Playback starts once it can play to the end without a
// pause at the measured production speed (audio seconds made per second of the job); until then, "buffering".
// On a machine that makes audio well faster than real time that is the first chunk (see canStart).
(() => {
  if (window.cvLive) return;
  const HEADER = 20;  // bytes: uint32 samples, uint32 rate, float32 made_s, uint16 segment, uint16 segments, uint32 flags
  const FLAG_SEGMENT_DONE = 1;
  const FLAG_END = 2;
  const LEAD = 0.05;  // s from "start" to the first sample: a start time must not be in the past
  const SAFETY = 0.02;  // a chunk that arrives less than this before the scheduled audio runs out is a stall
  const FAST = 1.2;  // made at least this many times faster than real time: no shortfall to cover
  const MARGIN = 1.2;  // buffer this much more than the estimate says is enough, plus SLACK seconds
  const SLACK = 0.2;

  const words = () => {
    const all = window.cvLiveText || {};
    const picked = document.querySelector('#cv-lang input:checked');
    return all[picked ? picked.value : 'en'] || all.en || {};
  };
  const say = (key, params) => (words()[key] || key).replace(/\{(\w+)\}/g, (_, k) => (k in params ? params[k] : ''));
  const secs = (x) => x.toFixed(1);

  const live = {
    job: null, url: null, rate: 24000, ctx: null, abort: null, ticker: null,
    state: 'idle', error: '',
    made: 0, madeS: 0, segments: 0, segDone: 0, segDoneSamples: 0, ended: false, endedAt: null, endStatus: null,
    pending: [], sources: [], scheduled: 0, runStart: 0, runOffset: 0, nextTime: 0,
    log: [], runs: [], stalls: 0, buffers: [],

    // called on the Generate click: browsers let audio start only from a user gesture
    unlock() {
      const ctx = this.context(this.rate);
      if (ctx && ctx.state === 'suspended') ctx.resume();
    },
    context(rate) {
      if (this.ctx && this.ctx.sampleRate === rate) return this.ctx;
      const AC = window.AudioContext || window.webkitAudioContext;
      if (!AC) return null;
      if (this.ctx) this.ctx.close();
      try {
        this.ctx = new AC({ sampleRate: rate, latencyHint: 'playback' });
      } catch (e) {
        console.warn(`cosyvoice-rk live player: no AudioContext at ${rate} Hz (${e}); each chunk is resampled`);
        this.ctx = new AC({ latencyHint: 'playback' });
      }
      return this.ctx;
    },
    update(v) {
      if (!v) return;
      let d;
      try { d = JSON.parse(v); } catch (e) { return; }
      if (d.job === this.job || !d.url) return;
      this.start(d);
    },
    reset() {
      if (this.abort) this.abort.abort();
      for (const s of this.sources) { try { s.stop(); } catch (e) { /* not started yet */ } }
      Object.assign(this, {
        abort: null, state: 'idle', error: '', made: 0, madeS: 0, segments: 0, segDone: 0, segDoneSamples: 0,
        ended: false, endedAt: null, endStatus: null, pending: [], sources: [], scheduled: 0, runStart: 0, runOffset: 0,
        nextTime: 0, log: [], runs: [], stalls: 0, buffers: [],
      });
    },
    start(d) {
      this.reset();
      this.job = d.job;
      this.url = d.url;
      this.rate = d.rate || 24000;
      const ctx = this.context(this.rate);
      if (!ctx) { this.fail(say('lp_no_webaudio', {})); return; }
      if (ctx.state === 'suspended') ctx.resume();
      this.state = 'waiting';
      this.abort = new AbortController();
      if (!this.ticker) this.ticker = setInterval(() => this.tick(), 100);
      this.read(d.url, this.abort.signal, d.job);
      this.render();
    },
    async read(url, signal, job) {
      const mine = () => job === this.job && !signal.aborted;
      let reader;
      try {
        const resp = await fetch(new URL(url, window.location.href), { signal, cache: 'no-store' });
        if (!resp.ok) {
          const text = await resp.text();
          if (mine()) this.fail(`HTTP ${resp.status} ${text.slice(0, 200)}`);
          return;
        }
        reader = resp.body.getReader();
      } catch (e) {
        if (mine()) this.fail(String(e));
        return;
      }
      let buf = new Uint8Array(0);
      for (;;) {
        let r;
        try { r = await reader.read(); } catch (e) { if (mine()) this.fail(String(e)); return; }
        if (!mine()) return;
        if (r.done) break;
        const joined = new Uint8Array(buf.length + r.value.length);
        joined.set(buf);
        joined.set(r.value, buf.length);
        buf = joined;
        let off = 0;
        while (buf.length - off >= HEADER) {
          const h = new DataView(buf.buffer, buf.byteOffset + off, HEADER);
          const n = h.getUint32(0, true);
          const flags = h.getUint32(16, true);
          if (flags & FLAG_END) { this.finish(h.getUint32(4, true)); return; }
          if (buf.length - off < HEADER + 4 * n) break;
          // a copy at offset 0 is 4-byte aligned; the server sends little-endian float32, as every browser uses
          const samples = new Float32Array(buf.slice(off + HEADER, off + HEADER + 4 * n).buffer);
          this.chunk(samples, h.getUint32(4, true), h.getFloat32(8, true), h.getUint16(12, true),
                     h.getUint16(14, true), flags);
          off += HEADER + 4 * n;
        }
        buf = buf.slice(off);
      }
      if (mine()) this.fail('the live stream was cut off');
    },
    chunk(samples, rate, madeS, segment, segments, flags) {
      if (rate !== this.rate) { this.fail(`audio at ${rate} Hz, the player expected ${this.rate} Hz`); return; }
      this.made += samples.length;
      this.madeS = madeS;
      this.segments = segments;
      if (flags & FLAG_SEGMENT_DONE) { this.segDone = segment + 1; this.segDoneSamples = this.made; }
      if (samples.length) this.pending.push(samples);
      this.pump();
    },
    finish(status) {
      this.ended = true;
      this.endedAt = this.ctx.currentTime;
      this.endStatus = status;
      if (status !== 0 && this.state !== 'playing') {
        this.pending = [];  // cancelled or failed before it could play: the page offers what was made
        this.state = 'ended';
      }
      this.pump();
    },
    // audio seconds made per second of the job so far
    speed() { return this.made / this.rate / Math.max(this.madeS, 1e-3); },
    // Can the buffered audio play to the end without a pause, if audio keeps coming at the speed measured so far?
    // It must last until the next chunk arrives (about one average chunk's making time away) and, when audio is
    // made slower than real time, also cover the shortfall over what is still to come.
    canStart() {
      if (this.ended) return true;
      const r = this.speed();
      const buffered = this.pending.reduce((n, s) => n + s.length, 0) / this.rate;
      const chunks = this.log.length + this.pending.length;
      const nextIn = this.made / chunks / this.rate / r;
      if (r >= FAST) return buffered >= nextIn * MARGIN + SLACK;
      if (!this.segDone || !this.segments) return false;  // no estimate of the total length yet
      const remaining = Math.max(this.segDoneSamples / this.segDone * this.segments - this.made, 0) / this.rate;
      return buffered >= Math.max(remaining * (1 - r) / r, nextIn) * MARGIN + SLACK;
    },
    pump() {
      const ctx = this.ctx;
      if (this.state === 'playing' && this.pending.length && this.nextTime < ctx.currentTime + SAFETY) {
        this.state = 'buffering';  // ran dry: this run ends, a new one starts when it can play to the end
        this.stalls += 1;
      }
      if ((this.state === 'waiting' || this.state === 'buffering') && this.pending.length && this.canStart()) {
        this.state = 'playing';
        this.runStart = ctx.currentTime + LEAD;
        this.runOffset = this.scheduled;
        this.nextTime = this.runStart;
        this.runs.push({ start: this.runStart, offset: this.scheduled, at: ctx.currentTime });
      }
      if (this.state === 'playing') {
        while (this.pending.length) this.schedule(this.pending.shift());
      } else if (this.state === 'waiting' && this.pending.length) {
        this.state = 'buffering';
      }
      this.render();
    },
    schedule(samples) {
      const ctx = this.ctx;
      const buffer = ctx.createBuffer(1, samples.length, this.rate);
      buffer.copyToChannel(samples, 0);
      const src = ctx.createBufferSource();
      src.buffer = buffer;
      src.connect(ctx.destination);
      // from whole sample counts, not a running sum of seconds: no rounding drift between chunks
      const when = this.runStart + (this.scheduled - this.runOffset) / this.rate;
      this.log.push({ offset: this.scheduled, n: samples.length, when, at: ctx.currentTime, run: this.runs.length - 1 });
      src.start(when);
      src.onended = () => { this.sources = this.sources.filter((s) => s !== src); };
      this.sources.push(src);
      this.buffers.push(samples);
      this.scheduled += samples.length;
      this.nextTime = this.runStart + (this.scheduled - this.runOffset) / this.rate;
    },
    tick() {
      const dry = !this.pending.length && this.ctx.currentTime >= this.nextTime;
      if (this.state === 'playing' && dry && !this.ended) {
        this.state = 'buffering';  // the next chunk is late: a pause the start rule did not foresee
        this.stalls += 1;
      } else if (dry && this.ended && ['playing', 'waiting', 'buffering'].includes(this.state)) {
        this.state = 'done';
      }
      this.render();
      if (['idle', 'done', 'stopped', 'ended', 'failed'].includes(this.state)) {
        clearInterval(this.ticker);
        this.ticker = null;
      }
    },
    stop() {
      if (this.abort) this.abort.abort();
      for (const s of this.sources) { try { s.stop(); } catch (e) { /* not started yet */ } }
      this.sources = [];
      this.pending = [];
      this.state = 'stopped';
      this.render();
    },
    fail(message) {
      this.error = message;
      this.state = 'failed';
      this.render();
    },
    played() {
      if (!this.ctx) return 0;
      const ahead = Math.max(0, this.nextTime - this.ctx.currentTime);
      return Math.max(0, this.scheduled / this.rate - Math.min(ahead, this.scheduled / this.rate));
    },
    joined() {
      const out = new Float32Array(this.buffers.reduce((n, b) => n + b.length, 0));
      let o = 0;
      for (const b of this.buffers) { out.set(b, o); o += b.length; }
      return out;
    },
    render() {
      const el = document.querySelector('#cv-live-status');
      const btn = document.querySelector('#cv-live-stop');
      if (!el) return;
      const p = { made: secs(this.made / this.rate), played: secs(this.played()), error: this.error };
      const key = {
        waiting: 'lp_waiting', buffering: 'lp_buffering', playing: 'lp_playing', done: 'lp_played',
        stopped: 'lp_stopped', ended: 'lp_ended', failed: 'lp_failed',
      }[this.state];
      el.textContent = key ? say(key, p) : '';
      el.dataset.state = this.state;
      if (btn) {
        btn.hidden = !['waiting', 'buffering', 'playing'].includes(this.state);
        btn.textContent = say('lp_stop', {});
      }
    },
  };
  window.cvLive = live;
  document.addEventListener('click', (e) => {
    const t = e.target;
    if (!(t instanceof Element)) return;
    if (t.closest('#cv-generate')) live.unlock();
    if (t.closest('#cv-live-stop')) live.stop();
  }, true);
})();
