"""The studio's look: a Gradio theme, the page CSS and the small scripts the page needs besides the live player.

System fonts only (a board on a LAN may have no internet); the layout stacks into one column on a phone.
"""

from __future__ import annotations

import gradio as gr

ACCENT = "#4f46e5"


def theme() -> gr.themes.Base:
    return gr.themes.Soft(
        primary_hue="indigo", secondary_hue="violet", neutral_hue="slate", radius_size="lg",
        font=["Inter", "ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    ).set(
        body_background_fill="#f5f6fb",
        body_background_fill_dark="#0f1120",
        block_border_width="0px",
        block_shadow="0 1px 2px rgba(15, 23, 42, .06), 0 4px 16px rgba(15, 23, 42, .05)",
        block_shadow_dark="none",
        button_primary_background_fill="linear-gradient(90deg, #4f46e5, #7c3aed)",
        button_primary_background_fill_hover="linear-gradient(90deg, #4338ca, #6d28d9)",
        button_primary_text_color="#ffffff",
        button_large_padding="14px 22px",
    )


CSS = """
.gradio-container { max-width: 1180px !important; margin: 0 auto !important; }
footer { opacity: .7; }
/* header */
#cv-header { align-items: center; gap: 12px; padding: 6px 4px 2px; background: transparent; box-shadow: none; }
#cv-header > div { background: transparent; box-shadow: none; }
.cv-brand { display: flex; align-items: center; gap: 14px; }
.cv-logo { width: 46px; height: 46px; border-radius: 14px; flex: none; display: grid; place-items: center;
  background: linear-gradient(135deg, #4f46e5, #7c3aed 60%, #db2777); color: #fff; font-size: 24px;
  box-shadow: 0 6px 18px rgba(79, 70, 229, .35); }
.cv-brand h1 { font-size: 1.55rem !important; margin: 0 !important; letter-spacing: -.01em; }
.cv-brand p { margin: 2px 0 0 !important; color: var(--body-text-color-subdued); font-size: .95rem; }
#cv-lang { background: transparent; box-shadow: none; }
#cv-lang .wrap { justify-content: flex-end; }
#cv-lang > span, #cv-lang .block-info { display: none; }
#cv-badge { text-align: right; font-size: .9rem; }
.cv-dot { color: #9ca3af; }
.cv-dot.cv-ready { color: #16a34a; }
.cv-dot.cv-busy { color: #ea580c; }
.cv-dot.cv-starting, .cv-dot.cv-restarting { color: #ca8a04; }
.cv-dot.cv-crashed, .cv-dot.cv-unavailable, .cv-dot.cv-failed { color: #dc2626; }
/* steps and hints */
.cv-steps { display: flex; gap: 10px; flex-wrap: wrap; margin: 2px 0 4px; }
.cv-step { display: flex; align-items: center; gap: 8px; padding: 6px 12px; border-radius: 999px;
  background: var(--block-background-fill); box-shadow: var(--block-shadow); font-size: .92rem; }
.cv-step b { display: inline-grid; place-items: center; width: 22px; height: 22px; border-radius: 50%;
  background: #e0e7ff; color: #3730a3; font-size: .8rem; }
.cv-step.cv-now b { background: #4f46e5; color: #fff; }
#cv-first { border: 1px dashed #a5b4fc !important; background: #eef2ff !important; }
#cv-first p { margin: 0 !important; }
/* cards */
.cv-card { padding: 6px !important; }
.cv-card-title p, .cv-card-title h3, .cv-card-title h4 { margin: 2px 0 6px !important; font-weight: 650; }
.cv-msg p { margin: 2px 0 !important; }
.cv-err { color: var(--error-text-color, #dc2626); font-weight: 600; }
.cv-ok { color: var(--color-green-600, #16a34a); }
/* what will be read, under the text box (webui/preview.py) */
#cv-preview .cv-preview { font-size: 0.9em; color: var(--body-text-color-subdued, #6b7280); }
#cv-preview .cv-preview p, #cv-preview ol { margin: 2px 0 !important; }
.cv-mic-hint { display: none; }
body.cv-insecure .cv-mic-hint { display: block; }
#cv-live audio { width: 100%; }
#cv-generate { font-size: 1.05rem; }
.cv-refresh { align-self: center; }
.cv-inline-btn { align-self: end; }
/* progress */
.cv-bar { height: 8px; border-radius: 999px; background: #e5e7eb; overflow: hidden; margin: 4px 0 6px; }
.cv-bar > i { display: block; height: 100%; border-radius: 999px; transition: width .4s ease;
  background: linear-gradient(90deg, #4f46e5, #7c3aed); }
.cv-bar.cv-bar-done > i { background: #16a34a; }
.cv-bar.cv-bar-stopped > i { background: #9ca3af; }
#cv-progress:empty { display: none; }
/* first-run setup (Status tab) */
.cv-setup-stages { list-style: none !important; padding-left: 4px !important; margin: 6px 0 !important; }
.cv-setup-stages li { margin: 0 !important; }
.cv-setup-now { font-weight: 600; }
.cv-setup-todo { color: #6b7280; }
#cv-setup-progress { padding: 0 8px 6px; }
/* damaged voices */
#cv-damaged { border: 1px solid #fecaca !important; background: #fef2f2 !important; }
/* phones */
@media (max-width: 720px) {
  .gradio-container { padding: 6px !important; }
  #cv-header { flex-direction: column; align-items: stretch; }
  #cv-badge, #cv-lang .wrap { text-align: left; justify-content: flex-start; }
  .cv-brand h1 { font-size: 1.25rem !important; }
  .cv-logo { width: 38px; height: 38px; font-size: 20px; }
  #cv-history { font-size: .85rem; }
}
"""

# Beside the live player (webui.app.HEAD): Gradio's own widget texts follow the page language (not only the
# browser's), and a message that appears out of view is scrolled to.
STUDIO_HEAD = """
<script>
(() => {
  if (window.cvStudio) return;
  // Gradio refuses an upload over --max-upload-mb or of the wrong type in its own English words, before the server
  // sees it; they are replaced by the page's, in the page language.
  const BAD_TYPE = /^Invalid file type: (.*)\\. Only (.*) allowed\\.$/;
  const TITLES = { Error: 'Ошибка', Warning: 'Предупреждение', Info: 'Сообщение' };
  const TOO_BIG = /^File\\(s\\) exceed the maximum allowed size of ([\\d.]+) (\\w+): (.*)$/;
  const studio = {
    lang: 'en',
    fixUploadMessage(el) {
      const text = (el.textContent || '').trim();
      if (studio.lang === 'ru' && el.classList.contains('toast-title') && TITLES[text]) {
        el.textContent = TITLES[text];
        return;
      }
      const bad = BAD_TYPE.exec(text);
      if (bad) {
        el.textContent = studio.lang === 'ru'
          ? `Файл ${bad[1]} сюда не подходит: здесь принимаются только ${bad[2]}`
          : `${bad[1]} does not fit here: this field takes ${bad[2]} files only`;
        return;
      }
      const m = TOO_BIG.exec(text);
      if (!m) return;
      const size = `${m[1]} ${m[2].replace(/b$/, 'B')}`;
      el.textContent = studio.lang === 'ru'
        ? `Файл ${m[3]} больше ${size.replace('MB', 'МБ')} — это больше, чем принимает студия: загрузите короткий `
          + 'фрагмент (3–10 с речи) или файл голоса .cvvoice'
        : `${m[3]} is larger than ${size}, the most this studio accepts: upload a short clip (3–10 s of speech) `
          + 'or a .cvvoice voice file';
    },
    watch() {
      new MutationObserver((muts) => {
        for (const mu of muts) {
          const nodes = mu.type === 'characterData' ? [mu.target] : Array.from(mu.addedNodes);
          for (const n of nodes) {
            const el = n.nodeType === 3 ? n.parentElement : n;
            if (!el || el.nodeType !== 1) continue;
            for (const x of [el, ...el.querySelectorAll('*')]) {
              if (x.childElementCount === 0) studio.fixUploadMessage(x);
            }
          }
        }
      }).observe(document.body, { childList: true, subtree: true, characterData: true });
    },
    async setLocale(lang) {
      studio.lang = lang;
      // Gradio's own texts ("Drop audio here", "Record", …) come from its i18n store, which follows the browser
      // language; the page language is the user's choice, so it is applied there too.
      try {
        const urls = performance.getEntriesByType('resource').map((e) => e.name)
          .filter((u) => /\\/assets\\/core-[^/]+\\.js$/.test(u));
        for (const u of urls) {
          const m = await import(u);
          if (m && typeof m.changeLocale === 'function') { m.changeLocale(lang); return; }
        }
      } catch (e) { /* Gradio's texts stay in the browser's language */ }
    },
    reveal(sel) {
      setTimeout(() => {
        const el = document.querySelector(sel);
        if (!el || !el.innerText.trim()) return;
        const r = el.getBoundingClientRect();
        if (r.top < 0 || r.bottom > window.innerHeight) el.scrollIntoView({ block: 'center', behavior: 'smooth' });
      }, 60);
    },
  };
  window.cvStudio = studio;
  if (document.body) studio.watch(); else document.addEventListener('DOMContentLoaded', () => studio.watch());
})();
</script>
"""
LOCALE_JS = "(lang) => { if (window.cvStudio) window.cvStudio.setLocale(lang); }"
REVEAL_ERROR_JS = "() => { if (window.cvStudio) window.cvStudio.reveal('#cv-progress .cv-err'); }"
