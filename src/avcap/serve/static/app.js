// avcap serve: the little JavaScript the pages need (no framework, no build step).
"use strict";

function token() {
  const m = document.querySelector('meta[name="avcap-token"]');
  return m ? m.content : "";
}

function initSearch() {
  const form = document.getElementById("search-form");
  if (!form) return;
  for (const sel of form.querySelectorAll("select")) {
    sel.addEventListener("change", () => { if (sel.value !== "" || sel.name === "mode") form.submit(); });
  }
  // an empty "+ filter…" must not send where= with nothing
  form.addEventListener("submit", () => {
    const add = document.getElementById("add-filter");
    if (add && add.value === "") add.disabled = true;
  });
}

function initReview() {
  const root = document.getElementById("review");
  if (!root) return;
  const status = document.getElementById("status");
  const shown = document.getElementById("decision");
  const count = document.getElementById("decided-count");
  const bar = document.getElementById("progress-bar");
  const note = document.getElementById("note");
  const video = document.getElementById("video");
  let busy = false;

  async function decide(decision) {
    if (busy) return;
    busy = true;
    status.textContent = "saving…";
    status.className = "status";
    try {
      const resp = await fetch("/api/review", {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-Avcap-Token": token()},
        body: JSON.stringify({item: root.dataset.item, decision: decision, note: note ? note.value : null}),
        credentials: "same-origin",
      });
      const body = await resp.json().catch(() => ({error: `HTTP ${resp.status}`}));
      if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
      shown.textContent = body.decision || "undecided";
      count.textContent = body.progress.decided;
      bar.value = body.progress.decided;
      for (const li of document.querySelectorAll("#choices li")) {
        li.classList.toggle("chosen", body.decision === "set:" + li.dataset.letter);
      }
      status.textContent = decision ? `saved: ${body.decision}` : "decision cleared";
      status.className = "status ok";
      if (decision && body.next_undecided_url) {
        setTimeout(() => { window.location.assign(body.next_undecided_url); }, 350);
      } else if (decision && body.progress.left === 0) {
        status.textContent = `saved: ${body.decision}. Every item is decided: run avcap bench apply.`;
      }
    } catch (err) {
      status.textContent = `not saved: ${err.message}`;
      status.className = "status error";
    } finally {
      busy = false;
    }
  }

  for (const b of document.querySelectorAll("#decide button")) {
    b.addEventListener("click", () => decide(b.dataset.decision));
  }
  const keys = {a: "keep_annotation", v: "keep_video", "1": "set:A", "2": "set:B", "3": "set:C", "4": "set:D", x: "remove", u: ""};
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA")) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    const k = ev.key.toLowerCase();
    if (k in keys) {
      const b = document.querySelector(`#decide button[data-decision="${keys[k]}"]`);
      if (b && !b.disabled) { ev.preventDefault(); decide(keys[k]); }
    } else if (k === "n" && root.dataset.next) {
      window.location.assign(root.dataset.next);
    } else if (k === "p" && root.dataset.prev) {
      window.location.assign(root.dataset.prev);
    } else if (k === " " && video) {
      ev.preventDefault();
      if (video.paused) video.play(); else video.pause();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => { initSearch(); initReview(); });
