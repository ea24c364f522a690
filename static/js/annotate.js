/* Tandem annotation page: keyboard-first controls, K-wise ranking strip (drag), time on task,
   lease heartbeat, and focus that survives HTMX swaps. Vanilla JS; the page works without it. */
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const work = () => document.getElementById("work");

  // --- time on task: visible time since the item appeared ------------------------------------
  let visibleMs = 0;
  let visibleSince = null;
  function resetTimer() {
    visibleMs = 0;
    visibleSince = document.visibilityState === "visible" ? performance.now() : null;
  }
  function elapsedMs() {
    return Math.round(visibleMs + (visibleSince === null ? 0 : performance.now() - visibleSince));
  }
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      visibleSince = performance.now();
    } else if (visibleSince !== null) {
      visibleMs += performance.now() - visibleSince;
      visibleSince = null;
    }
  });
  // Capture phase: runs before htmx reads the form, for keyboard and mouse submits alike.
  document.addEventListener(
    "submit",
    (e) => {
      const form = e.target;
      if (form.id !== "judge-form") return;
      const field = form.elements.namedItem("time_spent_ms");
      if (field) field.value = String(elapsedMs());
      if (!form.elements.namedItem("client_id").value && window.crypto && crypto.randomUUID) {
        form.elements.namedItem("client_id").value = crypto.randomUUID();
      }
    },
    true
  );

  // --- focus ---------------------------------------------------------------------------------
  function kind() {
    const w = work();
    return w ? w.dataset.kind : null;
  }
  function cards() {
    return $$(".annot-response", work());
  }
  function focusMain() {
    const w = work();
    if (!w) return;
    let target = $("[data-autofocus]", w);
    if (kind() === "kwise" && target && target.id === "cmp") {
      target = cards().find((c) => !rankOf(c)) || cards()[0];
    }
    if (target) target.focus({ preventScroll: true });
  }

  // --- K-wise ranking ------------------------------------------------------------------------
  const selectOf = (card) => $("select[name^=rank_]", card);
  const rankOf = (card) => {
    const s = selectOf(card);
    return s && s.value ? parseInt(s.value, 10) : null;
  };
  const allowTie = () => work().dataset.allowTie === "1";

  function setRank(card, rank) {
    const old = rankOf(card);
    if (rank !== null && !allowTie()) {
      // No ties: the response that held this rank takes the focused one's old rank.
      const holder = cards().find((c) => c !== card && rankOf(c) === rank);
      if (holder) selectOf(holder).value = old === null ? "" : String(old);
    }
    selectOf(card).value = rank === null ? "" : String(rank);
    renderStrip();
  }

  function rankingOrder() {
    // Cards best first (ranked ones by rank, then unranked), stable in shown order.
    const list = cards().map((c, i) => ({ c, i, r: rankOf(c) }));
    list.sort((a, b) => (a.r === null) - (b.r === null) || (a.r || 0) - (b.r || 0) || a.i - b.i);
    return list.map((x) => x.c);
  }

  function assignByPosition(order) {
    order.forEach((card, i) => {
      selectOf(card).value = String(i + 1);
    });
    renderStrip();
  }

  function moveInRanking(card, delta) {
    const order = rankingOrder();
    const i = order.indexOf(card);
    const j = i + delta;
    if (j < 0 || j >= order.length) return;
    [order[i], order[j]] = [order[j], order[i]];
    assignByPosition(order);
  }

  function renderStrip() {
    const strip = $("#rank-strip", work());
    if (!strip) return;
    strip.hidden = false;
    strip.replaceChildren();
    for (const card of rankingOrder()) {
      const li = document.createElement("li");
      const rank = rankOf(card);
      li.className = "annot-chip" + (rank === null ? " unranked" : "");
      li.draggable = true;
      li.dataset.letter = card.dataset.letter;
      li.textContent = card.dataset.letter;
      const badge = document.createElement("span");
      badge.className = "annot-chip-rank";
      badge.textContent = rank === null ? "?" : "#" + rank;
      li.appendChild(badge);
      li.title = "Drag to reorder; your ranking is read left (best) to right";
      strip.appendChild(li);
    }
  }

  function cardByLetter(letter) {
    return cards().find((c) => c.dataset.letter === letter);
  }

  // Drag chips in the strip: the resulting left-to-right order becomes the ranking.
  let dragged = null;
  document.addEventListener("dragstart", (e) => {
    const chip = e.target.closest && e.target.closest(".annot-chip");
    if (!chip) return;
    dragged = chip;
    chip.classList.add("dragging");
    e.dataTransfer.effectAllowed = "move";
    e.dataTransfer.setData("text/plain", chip.dataset.letter);
  });
  document.addEventListener("dragover", (e) => {
    if (!dragged) return;
    const chip = e.target.closest && e.target.closest(".annot-chip");
    if (!chip || chip === dragged) return;
    e.preventDefault();
    const box = chip.getBoundingClientRect();
    const after = e.clientX > box.left + box.width / 2;
    chip.parentNode.insertBefore(dragged, after ? chip.nextSibling : chip);
  });
  document.addEventListener("drop", (e) => {
    if (dragged) e.preventDefault();
  });
  document.addEventListener("dragend", () => {
    if (!dragged) return;
    dragged.classList.remove("dragging");
    const strip = dragged.parentNode;
    dragged = null;
    assignByPosition($$(".annot-chip", strip).map((chip) => cardByLetter(chip.dataset.letter)));
  });
  document.addEventListener("change", (e) => {
    if (e.target.matches && e.target.matches("select[name^=rank_]")) {
      const card = e.target.closest(".annot-response");
      const rank = e.target.value ? parseInt(e.target.value, 10) : null;
      if (!allowTie() && rank !== null) {
        const holder = cards().find((c) => c !== card && rankOf(c) === rank);
        if (holder) selectOf(holder).value = "";
      }
      renderStrip();
    }
  });

  // --- actions -------------------------------------------------------------------------------
  function submitJudgment() {
    const form = $("#judge-form", work());
    if (!form) return;
    const button = $("#submit-judgment", form);
    if (button && button.disabled) return; // a submit is already in flight
    form.requestSubmit(button || undefined);
  }

  function openSkipReport(inputId) {
    const details = $("#skip-report", work());
    if (!details) return;
    details.open = true;
    const input = document.getElementById(inputId);
    if (input) input.focus();
  }

  function toggleGuidelines() {
    const details = $("#guidelines", work());
    if (!details) return;
    details.open = !details.open;
    if (details.open) {
      const summary = $("summary", details);
      summary.focus({ preventScroll: true });
      details.scrollIntoView({ block: "start" });
    } else {
      focusMain();
    }
  }

  function showHelp() {
    const help = $("#annot-help", work());
    if (help && !help.open) help.showModal();
  }

  document.addEventListener("click", (e) => {
    const trigger = e.target.closest && e.target.closest("[data-action]");
    if (!trigger || !work() || !work().contains(trigger)) return;
    const action = trigger.dataset.action;
    if (action === "help") showHelp();
    else if (action === "guidelines") toggleGuidelines();
    else if (action === "skip") openSkipReport("skip-reason");
    else if (action === "report") openSkipReport("report-reason");
    else return;
    e.preventDefault();
  });

  function isTyping(el) {
    if (!el || !el.tagName) return false;
    if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
    return el.tagName === "INPUT" && !["radio", "checkbox", "button", "submit", "reset"].includes(el.type);
  }

  function pickChoice(key) {
    const radio = $(`input[name=choice][data-key="${key}"]`, work());
    if (!radio) return false;
    radio.checked = true;
    radio.dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  }

  function toggleBothBad() {
    const box = $("input[name=both_bad]", work());
    if (!box) return false;
    box.checked = !box.checked;
    return true;
  }

  document.addEventListener("keydown", (e) => {
    const w = work();
    if (!w || e.defaultPrevented || e.isComposing) return;
    const help = $("#annot-help", w);
    if (help && help.open) {
      if (e.key === "?") {
        help.close();
        e.preventDefault();
      }
      return; // the dialog handles Esc itself
    }
    const t = e.target;
    if (isTyping(t)) {
      if (e.key === "Escape") {
        const details = t.closest("#skip-report");
        if (details) details.open = false;
        t.blur();
        focusMain();
        e.preventDefault();
      } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && t.form && t.form.id === "judge-form") {
        e.preventDefault();
        submitJudgment();
      }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = kind();
    const key = e.key;
    let handled = true;

    if (key === "Enter") {
      if (t.closest && t.closest("a, button, summary, dialog")) return; // native activation
      if (k === "empty") return;
      submitJudgment();
    } else if (key === "?") {
      showHelp();
    } else if (key === "g") {
      toggleGuidelines();
    } else if (key === "r" && k !== "empty") {
      const box = $("#rationale", w);
      if (box) box.focus();
    } else if (key === "s" && k !== "empty") {
      openSkipReport("skip-reason");
    } else if (key === "x" && k !== "empty") {
      openSkipReport("report-reason");
    } else if (key === "e" && w.dataset.editLastUrl) {
      window.location.assign(w.dataset.editLastUrl);
    } else if (key === "b") {
      handled = toggleBothBad();
    } else if (k === "pairwise" && (/^[1-4]$/.test(key) || key === "t")) {
      handled = pickChoice(key);
    } else if (k === "kwise") {
      handled = kwiseKey(e, t);
    } else {
      handled = false;
    }
    if (handled) e.preventDefault();
  });

  function kwiseKey(e, target) {
    const all = cards();
    let card = target.closest ? target.closest(".annot-response") : null;
    const i = card ? all.indexOf(card) : -1;
    const key = e.key;
    if (e.shiftKey && (key === "ArrowUp" || key === "ArrowDown") && card) {
      moveInRanking(card, key === "ArrowUp" ? -1 : 1);
      card.focus();
      return true;
    }
    if (["ArrowRight", "ArrowDown", "j"].includes(key)) {
      all[Math.min(all.length - 1, i + 1)].focus();
      return true;
    }
    if (["ArrowLeft", "ArrowUp", "k"].includes(key)) {
      all[Math.max(0, i - 1)].focus();
      return true;
    }
    if (!card) card = all.find((c) => !rankOf(c)) || all[0];
    if (/^[1-9]$/.test(key) && parseInt(key, 10) <= all.length) {
      setRank(card, parseInt(key, 10));
      // Move on to the next response still without a rank, so K digits rank K responses.
      const start = all.indexOf(card);
      const next = all.slice(start + 1).concat(all.slice(0, start)).find((c) => !rankOf(c));
      (next || card).focus();
      return true;
    }
    if (key === "0" || key === "Backspace" || key === "Delete") {
      setRank(card, null);
      card.focus();
      return true;
    }
    return false;
  }

  // --- lease heartbeat: keep the item while the annotator is active ---------------------------
  let activeSinceBeat = false;
  for (const type of ["keydown", "pointerdown", "scroll", "input"]) {
    document.addEventListener(type, () => (activeSinceBeat = true), { passive: true, capture: true });
  }
  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["x-csrftoken"] || "";
    } catch (err) {
      return "";
    }
  }
  setInterval(() => {
    const w = work();
    if (!w || !w.dataset.extendUrl || !activeSinceBeat) return;
    activeSinceBeat = false;
    fetch(w.dataset.extendUrl, { method: "POST", headers: { "x-csrftoken": csrfToken() }, credentials: "same-origin" })
      .then((r) => {
        if (r.status === 409 && !$("#annot-expired", w)) {
          const note = document.createElement("p");
          note.id = "annot-expired";
          note.className = "message error";
          note.setAttribute("role", "status");
          note.textContent =
            "Your time on this item ran out. Submitting still works if the item has room; otherwise what you typed is kept.";
          w.insertBefore(note, $("#judge-form", w));
        }
      })
      .catch(() => {});
  }, 60 * 1000);

  // --- a submit the server could not take -------------------------------------------------------
  // htmx swaps nothing on an error, so the form keeps everything the annotator entered. A 503
  // (the database is unreachable, webapp/middleware.py), a 502/504 from a proxy, or no answer at
  // all is sent again by itself with backoff. The hidden client_id is never regenerated, so a
  // submit that was saved but whose answer got lost comes back "Already saved.", not twice.
  const RETRY_DELAYS_MS = [1000, 2000, 4000, 8000, 16000];
  const retry = { form: null, attempts: 0, timer: null };

  function showSubmitProblem(form, text) {
    let note = $("#annot-retry", form);
    if (!note) {
      note = document.createElement("p");
      note.id = "annot-retry";
      note.className = "message error annot-alert";
      note.setAttribute("role", "alert");
      const actions = $(".annot-actions", form);
      actions.parentNode.insertBefore(note, actions);
    }
    note.textContent = text;
  }

  function serverMessage(xhr) {
    // Only the message the server meant for people, never a whole error page.
    if (!xhr || !xhr.responseText) return "";
    const doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
    const said = doc.getElementById("database-unavailable");
    return said ? said.textContent.trim() : "";
  }

  function submitFailed(e) {
    const form = e.target;
    if (!form || form.id !== "judge-form") return;
    const status = e.type === "htmx:responseError" && e.detail.xhr ? e.detail.xhr.status : 0;
    if (retry.form !== form) Object.assign(retry, { form, attempts: 0 });
    const said =
      serverMessage(e.detail.xhr) ||
      (status ? `The server could not save this (error ${status}).` : "The server could not be reached.");
    const transient = [0, 502, 503, 504].includes(status);
    if (!transient || retry.attempts >= RETRY_DELAYS_MS.length) {
      retry.attempts = 0;
      showSubmitProblem(form, `${said} What you entered is kept; press Submit to try again.`);
      return;
    }
    const delay = RETRY_DELAYS_MS[retry.attempts++];
    showSubmitProblem(form, `${said} What you entered is kept; trying again in ${delay / 1000} s.`);
    clearTimeout(retry.timer);
    retry.timer = setTimeout(() => {
      retry.timer = null;
      if (document.body.contains(form)) form.requestSubmit($("#submit-judgment", form) || undefined);
    }, delay);
  }
  document.addEventListener("htmx:responseError", submitFailed);
  document.addEventListener("htmx:sendError", submitFailed);
  document.addEventListener("htmx:beforeRequest", (e) => {
    // Any new attempt (the scheduled retry, or the annotator pressing Submit) replaces a pending one.
    if (e.target && e.target.id === "judge-form" && retry.timer) {
      clearTimeout(retry.timer);
      retry.timer = null;
    }
  });

  // --- start and after every swap -------------------------------------------------------------
  function init() {
    if (!work()) return;
    resetTimer();
    renderStrip();
    focusMain();
    document.body.dataset.annotReady = "1"; // keys are live from here on (tests wait for it)
  }
  document.addEventListener("DOMContentLoaded", init);
  // htmx fires "htmx:load" on every element it swaps in; the new #work is one of them.
  document.addEventListener("htmx:load", (e) => {
    if (e.target && e.target.id === "work") init();
  });
})();
