// alignloop feedback: keyboard labeling for the task page.
// Model text is untrusted: this script never builds markup from it. It only reorders the
// server-rendered (escaped) elements and writes our own messages with textContent.
"use strict";
(function () {
  const main = document.getElementById("task");
  if (!main) return;
  const assignment = main.dataset.assignment;
  const type = main.dataset.taskType;
  const allowTies = main.dataset.allowTies === "true";
  const list = document.getElementById("completions");
  const status = document.getElementById("status");
  const skipReason = document.getElementById("skip-reason");
  const confirmBox = document.getElementById("confirm-order");
  const rateFirst = main.dataset.stage === "rate";
  let focus = 0;
  let sending = false;
  // One idempotency key per page: a retried submit (double Enter, flaky network) stores one label.
  const idempotencyKey = (self.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now()) + Math.random();

  function say(message, kind) {
    status.textContent = message;
    status.className = kind || "";
  }

  // ---- ranking, rule-violation ranking and best-pick: an ordered list of completion cards ----
  function cards() {
    return list ? Array.from(list.children) : [];
  }

  function render() {
    const all = cards();
    let place = 0;
    const ranking = main.dataset.stage === "rank";
    all.forEach(function (li, i) {
      const tied = i > 0 && li.dataset.tied === "1";
      if (!tied) place = i + 1;
      let label;
      if (!ranking) label = ratingOf(li) === null ? "rate" : "★" + ratingOf(li);
      else if (list.dataset.mode === "pick") label = i === focus ? "best" : "";
      else label = li.dataset.placed === "1" || (confirmBox && confirmBox.checked) ? (tied ? "= " : "") + place : "?";
      li.querySelector(".place").textContent = label;
      li.classList.toggle("unplaced", ranking && list.dataset.mode === "rank" && label === "?");
      li.classList.toggle("focused", i === focus);
      li.setAttribute("aria-current", i === focus ? "true" : "false");
    });
    if (all[focus] && !all[focus].contains(document.activeElement)) all[focus].focus({ preventScroll: false });
  }

  function moveTo(from, to) {
    const all = cards();
    if (to < 0 || to >= all.length) return;
    if (from === to) {  // already there: pressing its place still places it
      all[from].dataset.placed = "1";
      placeLastOne();
      render();
      return;
    }
    const el = all[from];
    const after = all[from + 1];
    if (after) after.dataset.tied = "0"; // its neighbour above changes: a tie would no longer be adjacent
    el.dataset.tied = "0";
    list.removeChild(el);
    const rest = cards();
    list.insertBefore(el, rest[to] || null);
    const next = cards()[to + 1];
    if (next) next.dataset.tied = "0";
    el.dataset.placed = "1";
    placeLastOne();
    focus = to;
    render();
  }

  // Once all but one completion are placed, the last one has a single possible place: it is placed too.
  function placeLastOne() {
    const open = cards().filter(function (li) { return li.dataset.placed !== "1"; });
    if (open.length === 1) open[0].dataset.placed = "1";
  }

  function unplaced() {
    if (confirmBox && confirmBox.checked) return 0;
    return cards().filter(function (li) { return li.dataset.placed !== "1"; }).length;
  }

  // ---- per-completion ratings (campaigns that rate every completion before ranking) ----
  function ratingOf(li) {
    const el = li.querySelector("input.out-likert:checked");
    return el ? Number(el.value) : null;
  }

  function unrated() {
    return cards().filter(function (li) { return ratingOf(li) === null; }).length;
  }

  function ratings() {
    const out = cards().map(function () { return null; });
    cards().forEach(function (li) {
      const flags = {};
      li.querySelectorAll("input.out-flag").forEach(function (box) { flags[box.value] = box.checked; });
      out[Number(li.dataset.index)] = { likert: ratingOf(li), flags: flags };
    });
    return out;
  }

  function toRanking() {
    const left = unrated();
    if (left > 0) { say("Rate every completion first: " + left + " still without a score (press 1…7).", "error"); return; }
    main.dataset.stage = "rank";
    const note = document.getElementById("stage-note");
    if (note) note.textContent = "Step 2 of 2: rank the completions, best first (your ratings are kept).";
    say("", "");
    focus = 0;
    render();
  }

  function toggleExpand(li) {
    const btn = li.querySelector("button.expand");
    if (!btn) return;
    const open = btn.getAttribute("aria-expanded") !== "true";
    btn.setAttribute("aria-expanded", open ? "true" : "false");
    btn.textContent = open ? "Show less (E)" : "Show all (E)";
    li.querySelector("pre.text").classList.toggle("clamp", !open);
  }

  function rankingAnswer() {
    const all = cards();
    const order = all.map(function (li) { return Number(li.dataset.index); });
    const ties = [];
    let group = [];
    all.forEach(function (li, i) {
      if (i > 0 && li.dataset.tied === "1") {
        if (group.length === 0) group.push(order[i - 1]);
        group.push(order[i]);
      } else {
        if (group.length > 1) ties.push(group);
        group = [];
      }
    });
    if (group.length > 1) ties.push(group);
    const answer = { order: order, ties: ties };
    if (type === "rule_violations") {
      // violations[i] lists the rules completion i breaks (indexed by completion, not by place)
      const violations = order.map(function () { return []; });
      document.querySelectorAll("input.violation:checked").forEach(function (box) {
        violations[Number(box.dataset.index)].push(box.value);
      });
      answer.violations = violations;
    }
    return answer;
  }

  // ---- the other forms ----
  function checked(name) {
    const el = document.querySelector('input[name="' + name + '"]:checked');
    return el ? el.value : null;
  }

  function setRadio(name, value) {
    const el = document.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (el) { el.checked = true; el.focus(); }
  }

  function answer() {
    if (list && rateFirst && main.dataset.stage === "rate") {
      const left = unrated();
      if (left > 0) throw new Error("Rate every completion first: " + left + " still without a score (press 1…7).");
      throw new Error("Ratings done: now rank the completions (press R).");
    }
    const extra = rateFirst ? { ratings: ratings() } : {};
    if (type === "ranking" || type === "rule_violations") {
      const left = unplaced();
      if (left > 0) {
        throw new Error("Place every completion before submitting: " + left + " not placed yet " +
          "(highlight one and press its place, 1…" + cards().length + "), or tick “the order shown is my ranking”.");
      }
      return Object.assign(rankingAnswer(), extra);
    }
    if (type === "best_pick") return Object.assign({ best: Number(cards()[focus].dataset.index) }, extra);
    if (type === "thumbs") {
      const v = checked("thumb");
      if (v === null) throw new Error("Choose thumbs up (U) or thumbs down (D) first.");
      return { up: v === "up" };
    }
    if (type === "rating") {
      const v = checked("likert");
      if (v === null) throw new Error("Give an overall score from 1 to 7 first (press a digit).");
      const flags = {};
      document.querySelectorAll("input.flag").forEach(function (box) { flags[box.value] = box.checked; });
      return { likert: Number(v), flags: flags };
    }
    const text = document.getElementById("demonstration").value;
    if (!text.trim()) throw new Error("Write your answer first.");
    return { text: text };
  }

  async function send(path, body) {
    if (sending) return;
    sending = true;
    say("Saving…", "");
    try {
      const resp = await fetch("/api/tasks/" + assignment + "/" + path, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          "X-CSRF-Token": main.dataset.csrf,
          "Idempotency-Key": idempotencyKey + ":" + path,
        },
        body: JSON.stringify(body),
      });
      let data = {};
      try { data = await resp.json(); } catch (e) { data = {}; }
      if (resp.ok) {
        main.dataset.status = data.status;
        say(data.status === "skipped" ? "Skipped. Loading the next task…" : "Saved. Loading the next task…", "ok");
        setTimeout(function () { window.location.assign("/tasks/next"); }, 400);
        return;
      }
      say(typeof data.detail === "string" ? data.detail : "The server answered " + resp.status + ".", "error");
    } catch (e) {
      say("Could not reach the server; press Enter to try again (your answer will not be stored twice).", "error");
    } finally {
      sending = false;
    }
  }

  function submit() {
    let body;
    try { body = answer(); } catch (e) { say(e.message, "error"); return; }
    send("label", body);
  }

  document.getElementById("submit").addEventListener("click", submit);
  document.getElementById("skip").addEventListener("click", function () {
    send("skip", { reason: skipReason.value });
  });
  if (list) {
    cards().forEach(function (li) {
      li.addEventListener("click", function () { focus = cards().indexOf(li); render(); });
      // Tabbing into a card's checkboxes makes that card the highlighted one, so digits move it.
      li.addEventListener("focusin", function () { focus = cards().indexOf(li); render(); });
      li.dataset.tied = "0";
      const btn = li.querySelector("button.expand");
      if (btn) btn.addEventListener("click", function (ev) { ev.stopPropagation(); toggleExpand(li); });
      li.querySelectorAll("input.out-likert").forEach(function (r) { r.addEventListener("change", render); });
    });
  }
  // Short answers are shown whole: no fold, no "Show all" button.
  document.querySelectorAll("pre.text.clamp").forEach(function (pre) {
    if (pre.scrollHeight <= pre.clientHeight + 2) {
      pre.classList.remove("clamp");
      const btn = pre.parentElement.querySelector("button.expand");
      if (btn) btn.remove();
    }
  });
  if (confirmBox) confirmBox.addEventListener("change", render);
  const toRankingButton = document.getElementById("to-ranking");
  if (toRankingButton) toRankingButton.addEventListener("click", toRanking);

  document.addEventListener("keydown", function (ev) {
    const t = ev.target;
    const tag = t && t.tagName;
    if (tag === "TEXTAREA") {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); submit(); }
      return;
    }
    if (tag === "SELECT" || tag === "BUTTON" || (tag === "INPUT" && t.type === "text") || tag === "A") return;
    if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const n = cards().length;
    const digit = /^[1-9]$/.test(ev.key) ? Number(ev.key) : null;
    if (ev.key === "Enter") { ev.preventDefault(); submit(); return; }
    if (ev.key === "s" || ev.key === "S") { ev.preventDefault(); skipReason.focus(); return; }
    if (list && (ev.key === "e" || ev.key === "E")) { ev.preventDefault(); toggleExpand(cards()[focus]); return; }
    if (list && main.dataset.stage === "rate") {
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        focus = Math.min(n - 1, Math.max(0, focus + (ev.key === "ArrowDown" ? 1 : -1)));
        render();
        return;
      }
      if (digit !== null && digit <= 7) {
        ev.preventDefault();
        const li = cards()[focus];
        li.querySelector('input.out-likert[value="' + digit + '"]').checked = true;
        const next = cards().findIndex(function (c) { return ratingOf(c) === null; });
        if (next >= 0) focus = next;
        render();
        if (next < 0) say("Every completion is rated: press R to rank them.", "");
        return;
      }
      if (ev.key === "f" || ev.key === "F") {
        ev.preventDefault();
        const d = cards()[focus].querySelector("details.flags");
        d.open = true;
        d.querySelector("input").focus();
        return;
      }
      if (ev.key === "r" || ev.key === "R") { ev.preventDefault(); toRanking(); return; }
    }
    if (list) {
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        const step = ev.key === "ArrowDown" ? 1 : -1;
        if (ev.shiftKey && list.dataset.mode === "rank") moveTo(focus, focus + step);
        else { focus = Math.min(n - 1, Math.max(0, focus + step)); render(); }
        return;
      }
      if (digit !== null && digit <= n) {
        ev.preventDefault();
        if (list.dataset.mode === "rank") moveTo(focus, digit - 1);
        else { focus = digit - 1; render(); }
        return;
      }
      if (ev.key === "=" && allowTies && list.dataset.mode === "rank" && focus > 0) {
        ev.preventDefault();
        const li = cards()[focus];
        li.dataset.tied = li.dataset.tied === "1" ? "0" : "1";
        render();
        return;
      }
    }
    if (type === "thumbs") {
      if (ev.key === "u" || ev.key === "U" || ev.key === "ArrowUp") { ev.preventDefault(); setRadio("thumb", "up"); }
      if (ev.key === "d" || ev.key === "D" || ev.key === "ArrowDown") { ev.preventDefault(); setRadio("thumb", "down"); }
    }
    if (type === "rating" && digit !== null && digit <= 7) { ev.preventDefault(); setRadio("likert", digit); }
  });

  if (main.dataset.status !== "pending") {
    say("This task is already answered; Enter re-sends the same answer only if it is identical.", "");
  }
  if (list) render();
  else if (type === "demonstration") document.getElementById("demonstration").focus();
  main.dataset.ready = "1";  // the key handlers are installed: tests and scripts may start typing
})();
