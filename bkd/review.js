"use strict";
// The review page's behaviour (bkd/review.py): filters and their counts, a decision per card by keyboard or mouse,
// kept in this browser per run, and the export of corrections.csv. Names of the data are only ever written as text.
(function () {
  const data = JSON.parse(document.getElementById("bkd-data").textContent);
  const classes = data.classes;
  const storageKey = "bkd-review:" + data.key;
  const cards = Array.from(document.querySelectorAll("article.card"));
  const byPosition = new Map(cards.map((card) => [card.dataset.position, card]));
  const $ = (id) => document.getElementById(id);
  const filters = { given: $("f-given"), suggested: $("f-suggested"), group: $("f-group"), flagged: $("f-flagged"),
                    text: $("f-text") };
  let decisions = load();  // position -> {kind: "accept" | "keep" | "set" | "remove", label: class index or null}
  let typed = "";  // digits typed on a card, for "set class" with Enter

  function load() {
    try {
      return JSON.parse(localStorage.getItem(storageKey) || "{}");
    } catch (err) {
      return {};
    }
  }

  function save() {
    try {
      localStorage.setItem(storageKey, JSON.stringify(decisions));
    } catch (err) {
      $("stats").textContent = "decisions could not be kept in this browser: " + err;
    }
  }

  function matches(card) {
    const d = card.dataset;
    const text = filters.text.value.trim().toLowerCase();
    return (filters.given.value === "" || d.given === filters.given.value)
      && (filters.suggested.value === "" || d.suggested === filters.suggested.value)
      && (filters.group.value === "" || d.group === filters.group.value)
      && (!filters.flagged.checked || d.flagged === "1")
      && (text === "" || d.id.toLowerCase().includes(text));
  }

  function applyFilters() {
    let shown = 0, flagged = 0, noisy = 0, decided = 0;
    for (const card of cards) {
      const show = matches(card);
      if (card.hidden === show) card.hidden = !show;
      if (!show) continue;
      shown += 1;
      flagged += card.dataset.flagged === "1";
      noisy += card.dataset.noisy === "1";
      decided += card.dataset.position in decisions;
    }
    let text = `showing ${shown} of ${cards.length} images; ${flagged} flagged; ${decided} decided`;
    if (data.noisy_total !== null) {
      const precision = shown ? noisy / shown : 0;
      const recall = data.noisy_total ? noisy / data.noisy_total : 0;
      text += `; ${noisy} truly noisy: precision ${precision.toFixed(3)}, recall ${recall.toFixed(3)}`
        + ` (of the run's ${data.noisy_total} wrong labels)`;
    }
    $("stats").textContent = text;
  }

  function className(label) {
    return label + " (" + classes[label] + ")";
  }

  function show(card) {
    const decision = decisions[card.dataset.position];
    const out = card.querySelector(".decision");
    card.classList.toggle("decided", decision !== undefined && decision.kind !== "remove");
    card.classList.toggle("removed", decision !== undefined && decision.kind === "remove");
    if (decision === undefined) out.textContent = "";
    else if (decision.kind === "remove") out.textContent = "remove this image";
    else if (decision.kind === "keep") out.textContent = "keep " + className(decision.label);
    else out.textContent = "relabel as " + className(decision.label);
  }

  function decide(card, kind, label) {
    if (kind === null) delete decisions[card.dataset.position];
    else decisions[card.dataset.position] = { kind: kind, label: label };
    save();
    show(card);
    applyFilters();
  }

  function act(card, kind) {
    const d = card.dataset;
    if (kind === "accept") decide(card, "accept", Number(d.suggested));
    else if (kind === "keep") decide(card, "keep", Number(d.given));
    else if (kind === "remove") decide(card, "remove", null);
    else if (kind === "undo") decide(card, null, null);
  }

  function setClass(card, text) {
    const typedText = String(text).trim();
    const label = classes.includes(typedText) ? classes.indexOf(typedText) : Number(typedText);
    if (typedText !== "" && Number.isInteger(label) && label >= 0 && label < classes.length) {
      decide(card, "set", label);
      return true;
    }
    return false;
  }

  function step(card, by) {
    const visible = cards.filter((c) => !c.hidden);
    const next = visible[visible.indexOf(card) + by];
    if (next) next.focus();
  }

  let current = null;  // the selected card, which the bar at the bottom acts on
  document.getElementById("cards").addEventListener("focusin", (event) => {
    const card = event.target.closest("article.card");
    if (!card) return;
    if (current) current.classList.remove("current");
    current = card;
    card.classList.add("current");
    const d = card.dataset;
    $("current").textContent = card.querySelector(".rank").textContent + " " + d.id;
  });
  $("actions").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-act]");
    if (button && current) {
      act(current, button.dataset.act);
      current.focus();
    }
  });
  $("set").addEventListener("change", (event) => {
    if (current && setClass(current, event.target.value)) current.focus();
    event.target.value = "";
  });
  document.addEventListener("keydown", (event) => {
    const card = event.target.closest && event.target.closest("article.card");
    if (!card || event.target !== card || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (/^[0-9]$/.test(key)) {
      typed += key;
    } else if (key === "Enter") {
      if (typed) setClass(card, typed);
      typed = "";
    } else {
      typed = "";
      if (key === "a") act(card, "accept");
      else if (key === "g") act(card, "keep");
      else if (key === "r" || key === "Delete") act(card, "remove");
      else if (key === "u") act(card, "undo");
      else if (key === "ArrowRight" || key === "ArrowDown" || key === "n") step(card, 1);
      else if (key === "ArrowLeft" || key === "ArrowUp" || key === "p") step(card, -1);
      else return;  // (Tab and the rest: the browser's)
    }
    event.preventDefault();
  });
  for (const control of Object.values(filters)) {
    control.addEventListener("input", applyFilters);
    control.addEventListener("change", applyFilters);
  }

  function csvField(value) {
    const text = String(value);
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  $("export").addEventListener("click", () => {
    const lines = ["id,position,given_label,new_label"];
    for (const card of cards) {  // (the page's order: most suspect first)
      const decision = decisions[card.dataset.position];
      if (decision === undefined) continue;
      const label = decision.kind === "remove" ? "remove" : decision.label;
      lines.push([card.dataset.id, card.dataset.position, card.dataset.given, label].map(csvField).join(","));
    }
    const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "corrections.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  });

  for (const position of Object.keys(decisions)) {
    if (byPosition.has(position)) show(byPosition.get(position));
  }
  applyFilters();
})();
