// The service's web page: a history in, recommendations out, and for each one why.
// Every value from the service reaches the page as text (textContent), never as markup.
"use strict";

const api = (path) => new URL("../" + path, document.baseURI).toString();
const $ = (id) => document.getElementById(id);
const ATTRIBUTION_ROWS = 15;
const MAX_EXPLAIN_K = 100;  // the service's limit on k for /explain

let lastHistory = [];
let lastK = 10;
let explainable = true;  // the served model is BERT4Rec (set from /model)
let latest = 0;  // the newest request; answers to older ones are dropped

async function call(path, options) {
  const response = await fetch(api(path), options);
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    throw new Error(describeProblem(response.status, body));
  }
  return body;
}

function describeProblem(status, body) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`).join("; ");
  }
  return `the service answered ${status}`;
}

function post(path, body) {
  return call(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

// Tokens stay strings: "0205616461" is an id, not a number (the service matches "42" to
// item 42 where the run's ids are numbers).
function parseHistory(text) {
  return text.split(/[\s,]+/).filter((token) => token.length > 0);
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function named(item, title) {
  return title ? `${item} (${title})` : String(item);
}

async function loadModel() {
  try {
    const info = await call("model");
    explainable = info.model === "bert4rec";
    $("model-info").textContent =
      `${info.model} model of ${info.run}: ${info.items} items, reads the last ` +
      `${info.max_history ?? "all"} items of a history (${info.backend})`;
  } catch (error) {
    $("model-info").textContent = `model unavailable: ${error.message}`;
  }
}

async function loadUsers() {
  try {
    const list = await call("users?limit=200");
    const select = $("user-select");
    for (const user of list.users) {
      const option = document.createElement("option");
      option.value = user;
      option.textContent = user;
      select.appendChild(option);
    }
    select.dataset.total = String(list.total);
  } catch (error) {
    showError(`cannot list stored users: ${error.message}`);
  }
}

async function loadUser(user) {
  showError("");
  if (!user) return;
  try {
    const events = await call(`users/${encodeURIComponent(user)}/events`);
    $("history").value = events.items.join(" ");
    setStatus(events.items.length ? `user ${user}: ${events.items.length} stored items`
      : `user ${user} has no stored items`);
  } catch (error) {
    showError(`cannot load user ${user}: ${error.message}`);
  }
}

async function recommend() {
  const mine = ++latest;
  showError("");
  const history = parseHistory($("history").value);
  const k = Number($("k").value) || 10;
  setStatus("scoring…");
  try {
    const result = await post("recommend", { history, k, exclude_seen: true });
    if (mine !== latest) return;  // a newer request has the page
    lastHistory = history;
    lastK = k;
    showRecommendations(result);
    setStatus(`${result.items.length} recommendations`);
  } catch (error) {
    if (mine !== latest) return;
    setStatus("");
    showError(error.message);
  }
}

function showRecommendations(result) {
  const notes = [];
  if (result.skipped.length) {
    notes.push(`Skipped ${result.skipped.length} item(s) the model does not know: ${result.skipped.join(" ")}.`);
  }
  if (result.fallback) {
    notes.push(`No known item in the history: these are the most ${result.fallback === "popularity" ? "popular" : result.fallback} items.`);
  } else {
    notes.push(`Read ${result.history_used} known item(s) of the history.`);
  }
  $("notes").textContent = notes.join(" ");
  const body = $("recommendations").querySelector("tbody");
  body.replaceChildren();
  result.items.forEach((entry, index) => {
    const row = document.createElement("tr");
    row.dataset.item = String(entry.item);
    cell(row, index + 1, "num");
    cell(row, entry.item, "item");
    cell(row, entry.title, "title");
    cell(row, entry.score.toFixed(3), "num");
    const td = document.createElement("td");
    if (!result.fallback && explainable) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "explain";
      button.textContent = "Why?";
      button.addEventListener("click", () => explain(entry.item, row));
      td.appendChild(button);
    }
    row.appendChild(td);
    body.appendChild(row);
  });
  $("results").hidden = false;
  $("explanation").hidden = true;
}

async function explain(item, row) {
  const mine = ++latest;
  showError("");
  document.querySelectorAll("#recommendations tr.selected").forEach((r) => r.classList.remove("selected"));
  row.classList.add("selected");
  setStatus(`explaining ${item}…`);
  try {
    const k = Math.min(lastK, MAX_EXPLAIN_K);
    const result = await post("explain", { history: lastHistory, item, k, plots: true });
    if (mine !== latest) return;
    showExplanation(result);
    setStatus(`explained ${item}`);
  } catch (error) {
    if (mine !== latest) return;
    setStatus("");
    showError(error.message);
  }
}

function showExplanation(result) {
  document.querySelectorAll(".k-value").forEach((span) => { span.textContent = String(result.k); });
  $("explanation-title").textContent = `Why ${named(result.item, result.title)}`;
  const parts = [`Rank ${result.rank} (score ${result.score.toFixed(3)}) after ${result.history.length} history item(s).`];
  if (result.truncated) parts.push(`${result.truncated} older item(s) are beyond what the model reads.`);
  if (result.skipped.length) parts.push(`Skipped unknown: ${result.skipped.join(" ")}.`);
  $("explanation-summary").textContent = parts.join(" ");

  const body = $("attribution").querySelector("tbody");
  body.replaceChildren();
  const ordered = [...result.history].sort((a, b) => b.score_drop - a.score_drop);
  for (const entry of ordered.slice(0, ATTRIBUTION_ROWS)) {
    const row = document.createElement("tr");
    cell(row, entry.position, "num");
    cell(row, entry.item, "item");
    cell(row, entry.title);
    cell(row, entry.score_drop.toFixed(3), "num");
    cell(row, entry.rank_without, "num");
    cell(row, entry.leaves_top_k ? "leaves" : "stays", entry.leaves_top_k ? "leaves" : "");
    cell(row, entry.gradient_x_input.toFixed(3), "num");
    cell(row, entry.attention_rollout.toFixed(3), "num");
    body.appendChild(row);
  }
  if (ordered.length > ATTRIBUTION_ROWS) {
    const row = document.createElement("tr");
    const td = cell(row, `… ${ordered.length - ATTRIBUTION_ROWS} more history items (the API returns all)`, "muted");
    td.colSpan = 8;
    body.appendChild(row);
  }

  const set = result.counterfactual_set;
  let text;
  if (set.found && set.items.length === 0) {
    text = `The item is already outside the top-${result.k}.`;
  } else {
    const names = set.items.map((item, i) => named(item, set.titles[i])).join(", ");
    text = set.found
      ? `Counterfactual set (greedy, not proven smallest): removing ${names} together drops it out of the top-${result.k} (rank ${set.ranks[set.ranks.length - 1]}).`
      : `Counterfactual set (greedy): removing ${names} did not drop it out of the top-${result.k}.`;
  }
  $("counterfactual-set").textContent = text;
  $("attention-note").textContent = `Attention from [MASK] per layer and head: ${result.attention.note}.`;
  if (result.plots) {
    $("plot-attribution").src = result.plots.attribution;
    $("plot-attention").src = result.plots.attention;
  }
  $("explanation").hidden = false;
}

document.addEventListener("DOMContentLoaded", () => {
  $("recommend").addEventListener("click", recommend);
  $("load-user").addEventListener("click", () => loadUser($("user-id").value.trim()));
  $("user-id").addEventListener("keydown", (event) => {
    if (event.key === "Enter") loadUser($("user-id").value.trim());
  });
  $("user-select").addEventListener("change", (event) => {
    $("user-id").value = event.target.value;
    loadUser(event.target.value);
  });
  loadModel();
  loadUsers();
});
