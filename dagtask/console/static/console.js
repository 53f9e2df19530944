// dagtask console: live refreshes, confirmations, and following a running attempt's log.
// Hand-written, no dependencies; every page works without it (less live, no confirmations).
"use strict";

(function () {
  // ---- live parts: [data-live-src] is fetched again every data-live-every seconds --------------
  function busy(el) {
    const d = document.getElementById("confirm");
    return (d && d.open) || (document.activeElement && el.contains(document.activeElement) &&
      document.activeElement.matches("input, select, textarea"));
  }

  function live(el) {
    const every = parseFloat(el.dataset.liveEvery || "0");
    if (!every) return;
    const tick = async () => {
      if (!document.hidden && !busy(el)) {
        try {
          const r = await fetch(el.dataset.liveSrc, { credentials: "same-origin", headers: { "X-Fragment": "1" } });
          if (r.redirected || r.status === 401) { location.reload(); return; }
          if (r.ok) {
            const html = await r.text();
            if (html !== el.dataset.liveLast) {
              el.dataset.liveLast = html;
              el.innerHTML = html;
              wire(el);
              if (el.querySelector("[data-final]")) { location.reload(); return; }
            }
          }
        } catch (e) { /* the server is restarting: try again next tick */ }
      }
      setTimeout(tick, every * 1000);
    };
    setTimeout(tick, every * 1000);
  }

  // ---- the header's RUNNING / FAILED counts -----------------------------------------------------
  function counts(el) {
    const tick = async () => {
      if (!document.hidden) {
        try {
          const r = await fetch(el.dataset.countsSrc, { credentials: "same-origin" });
          if (r.ok) {
            const data = await r.json();
            for (const [status, n] of Object.entries(data)) {
              const b = el.querySelector(`[data-count="${status}"] b`);
              if (b) b.textContent = n;
            }
          }
        } catch (e) { /* next tick */ }
      }
      setTimeout(tick, 3000);
    };
    setTimeout(tick, 3000);
  }

  // ---- confirmations: a form[data-confirm] asks first ---------------------------------------------
  function confirmFirst(form) {
    if (form.dataset.wired) return;
    form.dataset.wired = "1";
    form.addEventListener("submit", (event) => {
      if (form.dataset.confirmed) return;
      event.preventDefault();
      const dialog = document.getElementById("confirm");
      document.getElementById("confirm-title").textContent = form.dataset.confirm;
      const body = document.getElementById("confirm-body");
      body.replaceChildren();
      const detail = form.dataset.confirmDetail && document.getElementById(form.dataset.confirmDetail);
      if (detail) body.appendChild(detail.content.cloneNode(true));
      dialog.returnValue = "";
      dialog.onclose = () => {
        if (dialog.returnValue === "yes") {
          form.dataset.confirmed = "1";
          for (const b of form.querySelectorAll("button")) b.disabled = true;
          form.submit();
        }
      };
      dialog.showModal();
      document.getElementById("confirm-no").focus();
    });
  }

  // ---- a running attempt's log follows by server-sent events ---------------------------------------
  function follow(pre) {
    const state = document.getElementById("log-state");
    const source = new EventSource(pre.dataset.stream);
    const atBottom = () => window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    const add = (text, reset) => {
      const stick = atBottom();
      if (reset) pre.textContent = text; else pre.textContent += text;
      if (stick) window.scrollTo(0, document.body.scrollHeight);
    };
    source.addEventListener("reset", (e) => add(e.data, true));
    source.addEventListener("log", (e) => add(e.data, false));
    source.addEventListener("end", () => {
      source.close();
      if (state) state.textContent = "the attempt ended; showing its result…";
      setTimeout(() => location.reload(), 500);
    });
    source.onerror = () => { if (state) state.textContent = "connection lost; retrying…"; };
    source.onopen = () => { if (state) state.textContent = "following: new lines appear as the attempt writes them"; };
  }

  // ---- a section loaded after the page: [data-load-src] ---------------------------------------------
  async function load(el) {
    try {
      const r = await fetch(el.dataset.loadSrc, { credentials: "same-origin" });
      if (r.ok) { el.innerHTML = await r.text(); wire(el); }
    } catch (e) { /* leave the placeholder: its link still works */ }
  }

  function wire(root) {
    root.querySelectorAll("form[data-confirm]").forEach(confirmFirst);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-live-src]").forEach(live);
    document.querySelectorAll("[data-counts-src]").forEach(counts);
    document.querySelectorAll("[data-load-src]").forEach(load);
    document.querySelectorAll("pre[data-stream]").forEach(follow);
    wire(document);
  });
})();
