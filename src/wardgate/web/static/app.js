// wardgate web UI: live regions that follow other approvers' decisions, and the
// terminal player. No inline scripts or handlers anywhere (CSP script-src 'self').
"use strict";

(() => {
  const POLL_MS = 2000;
  const MAX_BACKOFF_MS = 30000;

  function announce(text) {
    const status = document.getElementById("live-status");
    if (status && text) status.textContent = text;
  }

  // Shown once, on top of the page: live updates stopped because the session ended.
  function signedOut() {
    if (document.getElementById("signed-out")) return;
    const note = document.createElement("div");
    note.id = "signed-out";
    note.className = "flash warn";
    note.setAttribute("role", "alert");
    const link = document.createElement("a");
    link.href = `/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`;
    link.textContent = "Sign in again";
    note.append("Your session has ended (signed out, or idle too long): this page no longer updates. ", link, ".");
    const main = document.querySelector("main");
    if (main) main.prepend(note);
  }

  // Where focus was inside a region, by id or data-focus-key, to put it back after a swap.
  function focusKey(region) {
    const el = document.activeElement;
    if (!el || el === region || !region.contains(el)) return null;
    if (el.id) return { id: el.id };
    if (el.dataset && el.dataset.focusKey) return { key: el.dataset.focusKey };
    return null;
  }

  function refocus(region, key) {
    if (!key) return;
    const el = key.id
      ? document.getElementById(key.id)
      : region.querySelector(`[data-focus-key="${CSS.escape(key.key)}"]`);
    if (el && region.contains(el)) el.focus({ preventScroll: true });
  }

  // A region that controls another part of the page (the vote forms of a review)
  // hides it once the new content says that part no longer applies.
  function applyControls(region) {
    const selector = region.dataset.liveControls;
    const flag = region.querySelector("[data-can-vote]");
    if (!selector || !flag) return;
    const target = document.querySelector(selector);
    if (target && flag.dataset.canVote !== "true") target.hidden = true;
  }

  function summaryOf(region) {
    const summary = region.querySelector("[data-live-summary]");
    return summary ? summary.textContent.replace(/\s+/g, " ").trim() : "";
  }

  function swap(region, html, version) {
    const key = focusKey(region);
    const scrolled = Array.from(region.querySelectorAll(".table-wrap"), (w) => w.scrollLeft);
    const template = document.createElement("template");
    template.innerHTML = html; // our own server's autoescaped HTML; templates run no scripts
    region.replaceChildren(template.content);
    region.dataset.liveVersion = version;
    region.querySelectorAll(".table-wrap").forEach((w, i) => {
      if (scrolled[i]) w.scrollLeft = scrolled[i];
    });
    refocus(region, key);
    applyControls(region);
    // Announced only when the summary changed: an age ticking over is not news.
    const said = summaryOf(region);
    if (said !== region.dataset.liveSaid) announce(`Updated. ${said}`);
    region.dataset.liveSaid = said;
    region.dispatchEvent(new CustomEvent("wardgate:updated", { bubbles: true }));
  }

  function follow(region) {
    const src = region.dataset.liveSrc;
    region.dataset.liveSaid = summaryOf(region);
    let delay = POLL_MS;
    let timer = null;
    let busy = false;
    let stopped = false;

    function schedule() {
      if (!stopped && timer === null && !document.hidden) timer = setTimeout(tick, delay);
    }

    async function tick() {
      timer = null;
      if (busy || stopped) return;
      busy = true;
      try {
        const response = await fetch(src, {
          headers: { "X-Requested-With": "fetch" },
          credentials: "same-origin",
          cache: "no-store",
        });
        if (response.status === 401) {
          stopped = true;
          signedOut();
          return;
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const version = response.headers.get("X-Live-Version");
        const html = await response.text();
        if (version && version !== region.dataset.liveVersion) swap(region, html, version);
        delay = POLL_MS;
      } catch (_err) {
        delay = Math.min(delay * 2, MAX_BACKOFF_MS); // the gateway restarts, the network drops
      } finally {
        busy = false;
        schedule();
      }
    }

    document.addEventListener("visibilitychange", () => {
      if (document.hidden) {
        if (timer !== null) clearTimeout(timer);
        timer = null;
      } else {
        delay = POLL_MS;
        if (timer === null && !busy) tick();
      }
    });
    schedule();
  }

  function players() {
    const found = Array.from(document.querySelectorAll("[data-cast-src]"));
    if (found.length === 0) return;
    const fail = (el) => {
      el.dataset.player = "failed";
      const note = el.querySelector(".player-failed");
      if (note) note.hidden = false;
      const transcript = el.parentElement && el.parentElement.querySelector("details.transcript");
      if (transcript) transcript.open = true;
    };
    // The player runs its terminal emulator as WebAssembly: a Content-Security-Policy
    // without 'wasm-unsafe-eval' stops it, and only this event says so.
    document.addEventListener("securitypolicyviolation", (event) => {
      if (event.effectiveDirective && event.effectiveDirective.startsWith("script-src")) {
        found.forEach(fail);
      }
    });
    for (const el of found) {
      if (!window.AsciinemaPlayer) {
        if (document.querySelector('script[src*="asciinema-player"]')) fail(el);
        continue;
      }
      try {
        el.player = window.AsciinemaPlayer.create(el.dataset.castSrc, el, {
          fit: "width",
          idleTimeLimit: 2,
          preload: true,
          terminalFontSize: "small",
        });
        if (el.dataset.player !== "failed") el.dataset.player = "created";
      } catch (_err) {
        fail(el);
      }
    }
  }

  function start() {
    for (const region of document.querySelectorAll("[data-live-src]")) follow(region);
    players();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
