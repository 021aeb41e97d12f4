// The review page: log in, live worklist, study view (viewer.js) with findings and review
// buttons, one-image upload (upload.js). Plain JavaScript, no build step. The access token lives in sessionStorage only; images are
// fetched with the Authorization header and shown from blob: URLs, so no token or patient
// data ever appears in a URL (URLs carry internal ids only).
"use strict";

const state = {
  token: null, offset: 0, limit: 50, total: 0, study: null, image: null, location: null,
  // The current selection (study or image): every picture request belongs to one, and a
  // response for an earlier selection is dropped, never drawn (another patient's picture).
  selection: { id: 0, controller: new AbortController() },
  heatmapWanted: false, // the reader's choice, kept across images that have no heat map
  reviewKey: null, // the Idempotency-Key of the review being drafted
  saving: false,
  saved: false,
  card: null, // the configured model's card (operating points), when it can be read
  version: null, // the worklist's version last shown
  worklistIds: [], // the studies of the worklist page last shown, in order (for n / p)
  polling: false,
  feedbackSaving: false,
};
//: How often the worklist asks whether anything changed (one cheap request, not audited).
const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);

function show(view) {
  for (const id of ["login-view", "worklist-view", "study-view", "upload-view"]) $(id).hidden = id !== view;
  $("nav").hidden = view === "login-view";
}

function message(text, ok = false) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
  box.classList.toggle("ok", ok);
}

function text(value) {
  return value === null || value === undefined || value === "" ? "-" : String(value);
}

function formatDate(da) {
  return da && da.length === 8 ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6)}` : text(da);
}

function personName(pn) {
  return pn ? pn.split("^").filter(Boolean).join(" ") : "-";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401 && !path.endsWith("/login")) {
    logout("Your session has ended; please sign in again.");
    throw new Error("not signed in");
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
    return body.detail || response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

function logout(note) {
  state.token = null;
  sessionStorage.removeItem("fg-token");
  show("login-view");
  message(note || "");
}

async function login(event) {
  event.preventDefault();
  const form = new URLSearchParams({ username: $("username").value, password: $("password").value });
  const response = await api("/api/auth/login", { method: "POST", body: form });
  if (!response.ok) {
    message(await errorText(response));
    return;
  }
  state.token = (await response.json()).access_token;
  sessionStorage.setItem("fg-token", state.token);
  $("password").value = "";
  message("");
  await whoami();
  route();
}

async function whoami() {
  const response = await api("/api/auth/me");
  if (response.ok) {
    const me = await response.json();
    $("whoami").textContent = `${me.name} (${me.role})`;
  }
  await loadCard();
}

async function loadCard() {
  const response = await api("/api/model");
  state.card = response.ok ? await response.json() : null;
  renderLegend();
}

// Numbers ------------------------------------------------------------------------------------

function threshold(value) {
  // Three significant digits: 0.066 stays 0.066 (two decimals would say 0.07).
  return value === null || value === undefined ? "-" : String(Number(value.toPrecision(3)));
}

function percent(value) {
  return `${Math.round(value * 100)} %`;
}

function probability(value) {
  return value === null || value === undefined ? "-" : value.toFixed(3);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  const hours = Math.floor(seconds / 3600);
  return `${hours} h ${Math.round((seconds - hours * 3600) / 60)} min`;
}

function age(as) {
  // An Age String (PS3.5 6.2): nnnD, nnnW, nnnM or nnnY.
  const match = /^(\d{3})([DWMY])$/.exec(as || "");
  if (!match) return as || "";
  const unit = { D: "d", W: "wk", M: "mo", Y: "y" }[match[2]];
  return `${Number(match[1])} ${unit}`;
}

// Operating points ---------------------------------------------------------------------------

function cardPoint(name) {
  return state.card ? state.card.operating_points.find((point) => point.name === name) || null : null;
}

function pointLine(name) {
  const point = cardPoint(name);
  const numbers = point
    ? ` (threshold ${threshold(point.threshold)}; on validation data sensitivity ${percent(point.sensitivity)}, specificity ${percent(point.specificity)})`
    : "";
  if (name === "high_sensitivity") {
    return ["High sensitivity", `${numbers}: flags a study when any image reaches it; misses few fractures but raises more false alarms. Its boxes are dashed.`];
  }
  return ["High specificity", `${numbers}: flags only strong findings; few false alarms, but misses more fractures. Its boxes are solid.`];
}

function renderLegend() {
  const list = $("op-legend");
  list.replaceChildren();
  for (const name of ["high_sensitivity", "high_specificity"]) {
    const [title, rest] = pointLine(name);
    const item = document.createElement("li");
    item.id = `legend-${name}`;
    const strong = document.createElement("strong");
    strong.textContent = title;
    item.append(strong, rest);
    list.appendChild(item);
  }
}

function sensitivePositive(result) {
  if (result.positive_high_sensitivity !== null && result.positive_high_sensitivity !== undefined) {
    return result.positive_high_sensitivity;
  }
  return result.operating_point === "high_sensitivity" ? result.positive : null;
}

function explanation(sensitive, specific) {
  if (sensitive && specific) return "Positive at both operating points: a strong finding.";
  if (sensitive) {
    return "Positive at high sensitivity only: a weaker finding. Look closely; false alarms are common at this level.";
  }
  if (sensitive === false) return "Below the high-sensitivity threshold: nothing the model is tuned to catch.";
  return "";
}


function resultTag(item) {
  const span = document.createElement("span");
  const result = item.result;
  if (item.not_applicable_reason) {
    span.className = "tag na";
    span.textContent = "not applicable";
  } else if (!result || result.positive === null) {
    span.className = "tag none";
    span.textContent = "no result";
  } else if (result.positive && result.positive_high_specificity) {
    span.className = "tag sure";
    span.textContent = "positive · both";
  } else {
    span.className = `tag ${result.positive ? "positive" : "negative"}`;
    span.textContent = result.positive ? "positive" : "negative";
  }
  return span;
}

function pointCell(value) {
  const span = document.createElement("span");
  if (value === null || value === undefined) span.textContent = "-";
  else {
    span.className = value ? "pos" : "neg";
    span.textContent = value ? "pos" : "neg";
  }
  return span;
}

function worklistParams(limit, offset) {
  const params = new URLSearchParams({ limit, offset });
  for (const [key, value] of new FormData($("filters"))) if (value) params.set(key, value);
  return params;
}

function worklistRow(item, fresh) {
  const row = document.createElement("tr");
  row.dataset.studyId = item.id;
  if (fresh) row.classList.add("fresh");
  const result = item.result;
  const hasProbability = Boolean(result && result.probability !== null);
  const cells = [
    [resultTag(item)],
    item.not_applicable_reason ? [item.not_applicable_reason, "reason"]
      : [hasProbability ? probability(result.probability) : "-"],
    [hasProbability ? pointCell(sensitivePositive(result)) : "-"],
    [hasProbability ? pointCell(result.positive_high_specificity) : "-"],
    [text(item.accession_number)],
    [`${personName(item.patient_name)} · ${text(item.patient_id)}`],
    [[item.patient_sex, age(item.patient_age)].filter(Boolean).join(" · ") || "-"],
    [text(item.study_description), "wrap"],
    [item.body_parts.join(", ") || "-"],
    [formatTime(item.first_received_at).slice(0, 16)],
    [duration(item.turnaround_s)],
    [item.latest_review ? `${item.latest_review.verdict} (${item.latest_review.reviewer})` : "open"],
  ];
  for (const [cell, className] of cells) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (cell instanceof Node) td.appendChild(cell);
    else td.textContent = cell;
    row.appendChild(td);
  }
  row.addEventListener("click", () => { location.hash = `#/studies/${item.id}`; });
  return row;
}

async function worklistVersion() {
  const response = await api("/api/studies/version");
  return response.ok ? (await response.json()).version : null;
}

async function loadWorklist({ quiet = false } = {}) {
  // A quiet reload (a poll found news) keeps the reader's filters, page and scroll position.
  const version = await worklistVersion();
  const response = await api(`/api/studies?${worklistParams(state.limit, state.offset)}`);
  if (!response.ok) {
    message(await errorText(response));
    return;
  }
  const page = await response.json();
  state.version = version;
  state.total = page.total;
  const known = new Set(state.worklistIds);
  state.worklistIds = page.items.map((item) => item.id);
  const scroller = $("worklist-scroll");
  const top = scroller.scrollTop;
  const body = $("worklist").querySelector("tbody");
  body.replaceChildren(...page.items.map((item) => worklistRow(item, quiet && !known.has(item.id))));
  scroller.scrollTop = top;
  const last = Math.min(state.offset + page.items.length, page.total);
  $("worklist-count").textContent = `${page.total ? state.offset + 1 : 0}-${last} of ${page.total}`;
  $("prev-page").disabled = state.offset === 0;
  $("next-page").disabled = state.offset + state.limit >= page.total;
  $("live").textContent = `live · updated ${formatTime(new Date().toISOString()).slice(11)}`;
}

async function pollWorklist() {
  if (!state.token || $("worklist-view").hidden || state.polling) return;
  state.polling = true;
  try {
    const version = await worklistVersion();
    if (version !== null && version !== state.version && !$("worklist-view").hidden) {
      await loadWorklist({ quiet: true });
    }
  } catch (error) {
    $("live").textContent = `not live: ${error.message}`;
  } finally {
    state.polling = false;
  }
}

function newSelection() {
  // Ends the previous selection: its requests are aborted and its responses will be dropped.
  state.selection.controller.abort();
  state.selection = { id: state.selection.id + 1, controller: new AbortController() };
  return state.selection;
}

function isCurrent(selection) {
  return selection === state.selection;
}

class StaleSelection extends Error {}

async function blobUrl(path, selection) {
  const response = await api(path, { signal: selection.controller.signal });
  if (!isCurrent(selection)) throw new StaleSelection(path);
  if (!response.ok) throw new Error(await errorText(response));
  const blob = await response.blob();
  if (!isCurrent(selection)) throw new StaleSelection(path);
  return URL.createObjectURL(blob);
}

function isDropped(error) {
  if (error instanceof StaleSelection || (error && error.name === "AbortError")) {
    console.debug("fg: dropped a picture response for an earlier selection");
    return true;
  }
  return false;
}

function setImageSource(img, url, image) {
  if (img.src && img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  if (url) {
    img.src = url;
    img.dataset.studyId = String(state.study ? state.study.id : "");
    img.dataset.imageId = String(image.id);
  } else {
    img.removeAttribute("src");
    delete img.dataset.studyId;
    delete img.dataset.imageId;
  }
}

function clearViewer() {
  // Nothing of the previous study or image stays on screen while the next one loads.
  setImageSource($("radiograph"), null);
  setImageSource($("heatmap"), null);
  $("radiograph").hidden = false;
  $("placeholder").hidden = true;
  $("placeholder").textContent = "";
  $("heatmap-toggle").disabled = true;
  $("heatmap-toggle").checked = false;
  state.image = null;
  resetViewer();
  clearLocation();
  applyHeatmap();
  renderFindings();
}

function showPlaceholder(image, reason) {
  setImageSource($("radiograph"), null);
  setImageSource($("heatmap"), null);
  $("radiograph").hidden = true;
  // The server says "the image cannot be shown (why)"; keep the why.
  const why = reason.replace(/^the image cannot be shown\s*/i, "").replace(/^\((.*)\)$/, "$1");
  const lines = [`This image cannot be shown: ${why || "unknown reason"}.`];
  if (image.eligibility === "out_of_scope") {
    lines.push(`Not analysed${image.eligibility_reason ? `: ${image.eligibility_reason}` : ""}.`);
  }
  $("placeholder").textContent = lines.join(" ");
  $("placeholder").hidden = false;
  resetViewer();
  $("heatmap-toggle").disabled = true;
  $("heatmap-toggle").checked = false;
  applyHeatmap();
}

async function showImage(image) {
  const selection = newSelection();
  message("");
  clearViewer();
  state.image = image;
  for (const button of $("thumbs").children) {
    button.classList.toggle("active", Number(button.dataset.imageId) === image.id);
  }
  renderFindings();
  try {
    const preview = `${image.preview_url}?max_size=${PICTURE_SIZE}`;
    setImageSource($("radiograph"), await blobUrl(preview, selection), image);
  } catch (error) {
    if (!isDropped(error)) showPlaceholder(image, error.message);
    return;
  }
  if (image.heatmap_url) {
    try {
      const overlay = `${image.heatmap_url}?overlay=true&max_size=${PICTURE_SIZE}`;
      setImageSource($("heatmap"), await blobUrl(overlay, selection), image);
      $("heatmap-toggle").disabled = false;
      $("heatmap-toggle").checked = state.heatmapWanted;
    } catch (error) {
      // The radiograph stays; only the heat map is missing (its toggle stays disabled).
      if (isDropped(error)) return;
      message(`The heat map cannot be shown: ${error.message}`);
    }
  }
  applyHeatmap();
  try {
    await loadValues(image, selection);
  } catch (error) {
    // Without the values the preview stays, at the image's own window.
    if (!isDropped(error)) $("wl-readout").textContent = "window/level unavailable";
  }
}

function applyHeatmap() {
  const overlay = $("heatmap");
  const toggle = $("heatmap-toggle");
  const ours = state.image && overlay.dataset.imageId === String(state.image.id);
  overlay.hidden = !toggle.checked || toggle.disabled || !ours;
  overlay.style.opacity = String(Number($("heatmap-opacity").value) / 100);
}

function toggleHeatmap() {
  state.heatmapWanted = $("heatmap-toggle").checked;
  applyHeatmap();
}

function clearLocation() {
  state.location = null;
  $("marker").hidden = true;
  $("location-text").textContent = "No location marked.";
  $("clear-location").hidden = true;
  updateReviewButtons();
}

function markLocation(event) {
  const image = state.image;
  if (!image || !image.columns || !image.rows || $("radiograph").dataset.imageId !== String(image.id)) return;
  const rect = $("radiograph").getBoundingClientRect();
  const fx = (event.clientX - rect.left) / rect.width;
  const fy = (event.clientY - rect.top) / rect.height;
  if (fx < 0 || fy < 0 || fx >= 1 || fy >= 1) return;
  state.location = { x: Math.round(fx * image.columns * 10) / 10, y: Math.round(fy * image.rows * 10) / 10 };
  const marker = $("marker");
  marker.style.left = `${fx * 100}%`;
  marker.style.top = `${fy * 100}%`;
  marker.hidden = false;
  $("location-text").textContent = `Fracture marked at x ${state.location.x}, y ${state.location.y} (image pixels).`;
  $("clear-location").hidden = false;
  draftChanged();
}

function labelText(label) {
  return label === "fractured" ? "fracture" : "no fracture";
}

function labelFor(verdict) {
  // What a verdict records: agreeing takes the AI's label, disagreeing the other one.
  const positive = Boolean(state.study && state.study.result && state.study.result.positive);
  return (verdict === "agree") === positive ? "fractured" : "not_fractured";
}

function newKey() {
  // A v4 UUID; crypto.randomUUID needs a secure context, getRandomValues does not.
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function updateReviewButtons() {
  const study = state.study;
  const hasResult = Boolean(study && study.result && study.result.positive !== null);
  const locked = !study || state.saving || state.saved;
  for (const verdict of ["agree", "disagree"]) {
    const button = $(verdict);
    const label = labelFor(verdict);
    button.textContent = `${verdict === "agree" ? "Agree" : "Disagree"}: ${labelText(label)}`;
    // A marked point is a fracture: it never goes with a "no fracture" review.
    button.disabled = locked || (verdict === "agree" && !hasResult)
      || (state.location !== null && label === "not_fractured");
  }
  $("review-hint").hidden = state.location === null;
  $("review-again").hidden = !state.saved;
}

function draftChanged() {
  // A new draft is a new review: it gets its own Idempotency-Key.
  if (state.saving) return;
  if (state.saved) {
    state.saved = false;
    state.reviewKey = newKey();
  }
  updateReviewButtons();
}

function pad(number) {
  return String(number).padStart(2, "0");
}

function formatTime(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return text(iso);
  return `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())} `
    + `${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}`;
}

function renderReviews(study) {
  const reviews = study.reviews || [];
  $("review-state").textContent = reviews.length
    ? `${reviews.length} review${reviews.length > 1 ? "s" : ""}, newest first.`
    : "Not reviewed yet.";
  const list = $("review-history");
  list.replaceChildren();
  for (const review of reviews) {
    const item = document.createElement("li");
    item.id = `review-${review.id}`;
    const head = document.createElement("div");
    const when = document.createElement("time");
    when.dateTime = review.created_at;
    when.textContent = formatTime(review.created_at);
    const verdict = document.createElement("strong");
    verdict.textContent = `${review.verdict}, ${labelText(review.label)}`;
    head.append(when, ` · ${review.reviewer} · `, verdict);
    item.appendChild(head);
    if (review.location) {
      const number = study.images.findIndex((image) => image.id === review.image_id) + 1;
      const where = document.createElement("div");
      where.className = "muted";
      where.textContent = `Fracture at x ${review.location.x}, y ${review.location.y}`
        + (number ? ` on image ${number}` : "");
      item.appendChild(where);
    }
    if (review.comment) {
      const comment = document.createElement("div");
      comment.className = "review-comment";
      comment.textContent = review.comment;
      item.appendChild(comment);
    }
    list.appendChild(item);
  }
}

function renderResult(study) {
  const result = study.result;
  const headline = $("ai-result");
  const details = $("ai-details");
  details.replaceChildren();
  $("ai-explain").textContent = "";
  const rows = [];
  if (study.not_applicable_reason) {
    headline.textContent = "Not applicable";
    headline.className = "result na";
    $("ai-explain").textContent = `No fracture probability: ${study.not_applicable_reason}.`;
  } else if (!result || result.positive === null) {
    headline.textContent = "No AI result";
    headline.className = "result";
  } else {
    headline.textContent = result.positive ? "Fracture suspected" : "No fracture found";
    headline.className = `result ${result.positive ? "positive" : "negative"}`;
    const sensitive = sensitivePositive(result);
    $("ai-explain").textContent = explanation(sensitive, result.positive_high_specificity);
    const sameModel = Boolean(state.card && state.card.name === result.model_name
      && state.card.version === result.model_version);
    const limit = (name) => {
      if (name === result.operating_point) return ` (≥ ${threshold(result.threshold)})`;
      const point = sameModel ? cardPoint(name) : null;
      return point ? ` (≥ ${threshold(point.threshold)})` : "";
    };
    const verdict = (value) => (value === null || value === undefined ? "-" : value ? "positive" : "negative");
    rows.push(
      ["Probability", probability(result.probability)],
      [`High sensitivity${limit("high_sensitivity")}`, verdict(sensitive)],
      [`High specificity${limit("high_specificity")}`, verdict(result.positive_high_specificity)],
      ["Operating point", result.operating_point.replace("_", " ")],
      ["Model", `${result.model_name} ${result.model_version} · ${result.n_images} image${result.n_images === 1 ? "" : "s"}`],
      ["Turnaround", duration(study.turnaround_s)],
    );
  }
  for (const [term, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    details.append(dt, dd);
  }
  updateReviewButtons();
  renderReviews(study);
  const list = $("deliveries");
  list.replaceChildren();
  for (const object of study.result_objects) {
    for (const delivery of object.deliveries) {
      const li = document.createElement("li");
      li.textContent = `${object.kind.toUpperCase()} to ${delivery.destination}: ${delivery.state.replace("_", " ")}`;
      list.appendChild(li);
    }
  }
  if (!list.children.length) list.textContent = "Nothing sent yet.";
}

function clearStudy() {
  // The previous patient's name, result and reviews go before the next study is asked for.
  state.study = null;
  state.saving = false;
  state.saved = false;
  clearViewer();
  for (const id of ["study-title", "study-meta", "ai-result", "ai-explain", "review-state", "deliveries"]) {
    $(id).textContent = "";
  }
  for (const id of ["ai-details", "review-history", "thumbs"]) $(id).replaceChildren();
  $("review-comment").value = "";
  updateReviewButtons();
}

async function loadStudy(id) {
  show("study-view");
  const selection = newSelection();
  clearStudy();
  let study;
  try {
    const response = await api(`/api/studies/${id}`, { signal: selection.controller.signal });
    if (!isCurrent(selection)) return;
    if (!response.ok) {
      message(await errorText(response));
      return;
    }
    study = await response.json();
  } catch (error) {
    if (isDropped(error)) return;
    throw error;
  }
  if (!isCurrent(selection)) return;
  state.study = study;
  state.reviewKey = newKey();
  $("study-title").textContent = personName(study.patient_name);
  $("study-meta").textContent = [study.patient_id, [study.patient_sex, age(study.patient_age)].filter(Boolean).join(" "),
    study.accession_number ? `Acc. ${study.accession_number}` : "", formatDate(study.study_date),
    study.study_description, study.body_parts.join(", ")].filter(Boolean).join(" · ");
  renderResult(study);
  const thumbs = $("thumbs");
  study.images.forEach((image, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.imageId = image.id;
    const shown = image.result ? ` · ${probability(image.result.probability)}` : "";
    button.textContent = `Image ${index + 1}${shown}`;
    button.addEventListener("click", () => showImage(image));
    thumbs.appendChild(button);
  });
  thumbs.hidden = study.images.length < 2;
  const first = study.images.find((image) => image.heatmap_url) || study.images[0];
  if (first) await showImage(first);
}

async function submitReview(verdict) {
  const study = state.study;
  if (!study || state.saving || state.saved) return;
  const label = labelFor(verdict);
  const body = { verdict };
  if (verdict === "disagree") body.label = label;
  const comment = $("review-comment").value.trim();
  if (comment) body.comment = comment;
  if (state.location && state.image) {
    if (label !== "fractured") return; // the button is disabled; a point means a fracture
    body.image_id = state.image.id;
    body.location = state.location;
  }
  state.saving = true; // both buttons stay locked until the answer is in
  updateReviewButtons();
  let response;
  try {
    response = await api(`/api/studies/${study.id}/review`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": state.reviewKey },
      body: JSON.stringify(body),
    });
  } catch (error) {
    if (state.study === study) {
      state.saving = false;
      updateReviewButtons();
      message(`The review was not confirmed (${error.message}); saving again will not store it twice.`);
    }
    return;
  }
  if (state.study !== study) return; // the reader has moved on; the review is stored
  state.saving = false;
  if (!response.ok) {
    message(await errorText(response));
    updateReviewButtons();
    return;
  }
  const review = await response.json();
  state.saved = true;
  message(`Review saved: ${review.verdict}, ${review.label.replace("_", " ")}.`, true);
  $("review-comment").value = "";
  study.reviews = [review, ...study.reviews.filter((known) => known.id !== review.id)];
  study.latest_review = review;
  clearLocation();
  renderResult(study);
}

function reviewAgain() {
  state.saved = false;
  state.reviewKey = newKey();
  message("");
  updateReviewButtons();
}

function route() {
  if (!state.token) {
    show("login-view");
    return;
  }
  const match = location.hash.match(/^#\/studies\/(\d+)$/);
  message("");
  if (!match) {
    newSelection();
    clearStudy();
  }
  if (match) loadStudy(Number(match[1])).catch((error) => message(error.message));
  else if (location.hash === "#/upload") show("upload-view");
  else {
    show("worklist-view");
    loadWorklist().catch((error) => message(error.message));
  }
}

// Findings -----------------------------------------------------------------------------------

function pointsText(region) {
  return isSolid(region) ? "high specificity (solid)" : "high sensitivity only (dashed)";
}

function findingButton(image, index, verdict) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = verdict === "correct" ? "right" : "wrong";
  button.textContent = verdict === "correct" ? "Right" : "Wrong";
  button.title = verdict === "correct" ? "This box is a fracture" : "This box is not a fracture";
  button.disabled = state.feedbackSaving;
  button.addEventListener("click", () => sendFeedback(image, { verdict, region_index: index }));
  return button;
}

function renderFindings() {
  const list = $("findings");
  list.replaceChildren();
  const image = state.image;
  const regions = regionsOf(image);
  const empty = $("findings-empty");
  empty.hidden = !image || regions.length > 0;
  empty.textContent = !image ? "" : !image.result ? "No AI result for this image." : "The model boxed nothing on this image.";
  $("mark-missed").disabled = !image || !image.columns || state.feedbackSaving;
  regions.forEach((region, index) => {
    const item = document.createElement("li");
    item.dataset.regionIndex = index;
    item.classList.toggle("selected", viewer.selectedRegion === index);
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = `${index + 1} · probability ${probability(region.probability)} · `;
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = pointsText(region);
    what.appendChild(kind);
    what.addEventListener("click", () => selectRegion(index));
    const given = document.createElement("span");
    given.className = "given";
    const verdicts = (image.feedback || []).filter((f) => f.region_index === index);
    if (verdicts.length) {
      const latest = verdicts[verdicts.length - 1];
      given.textContent = `${latest.verdict === "correct" ? "right" : "wrong"} (${latest.reviewer})`;
    }
    item.append(what, findingButton(image, index, "correct"), findingButton(image, index, "wrong"), given);
    list.appendChild(item);
  });
  for (const feedback of (image && image.feedback) || []) {
    if (feedback.verdict !== "missed") continue;
    const item = document.createElement("li");
    item.className = "missed";
    const b = feedback.box;
    item.textContent = `Missed fracture drawn by ${feedback.reviewer}: x ${Math.round(b.x0)}-${Math.round(b.x1)}, y ${Math.round(b.y0)}-${Math.round(b.y1)}`;
    list.appendChild(item);
  }
}

async function sendFeedback(image, body) {
  const study = state.study;
  if (!study || !image || state.feedbackSaving) return;
  state.feedbackSaving = true; // one at a time: the buttons lock until the answer is in
  renderFindings();
  let response;
  try {
    response = await api(`/api/studies/${study.id}/images/${image.id}/feedback`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
  } catch (error) {
    message(`The feedback was not confirmed (${error.message}).`);
    return;
  } finally {
    state.feedbackSaving = false;
    if (state.image === image) renderFindings();
  }
  if (!response.ok) {
    message(await errorText(response));
    return;
  }
  const saved = await response.json();
  image.feedback = [...(image.feedback || []), saved];
  if (state.image !== image) return; // the reader moved on; it is stored
  const what = saved.verdict === "missed" ? "missed fracture recorded"
    : `box ${saved.region_index + 1} marked ${saved.verdict === "correct" ? "right" : "wrong"}`;
  message(`Feedback saved: ${what}.`, true);
  renderFindings();
  renderBoxes();
}

// Keyboard and study navigation --------------------------------------------------------------

async function ensureWorklistIds() {
  if (state.study && state.worklistIds.includes(state.study.id)) return;
  const response = await api(`/api/studies?${worklistParams(500, 0)}`);
  if (response.ok) state.worklistIds = (await response.json()).items.map((item) => item.id);
}

async function goToStudy(step) {
  if (!state.study) return;
  await ensureWorklistIds();
  const at = state.worklistIds.indexOf(state.study.id);
  const next = at < 0 ? state.worklistIds[0] : state.worklistIds[at + step];
  if (next === undefined) {
    message(step > 0 ? "This is the last study of the worklist." : "This is the first study of the worklist.");
    return;
  }
  location.hash = `#/studies/${next}`;
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
  if ($("study-view").hidden) return;
  const press = (id) => { if (!$(id).disabled) $(id).click(); };
  const actions = {
    n: () => goToStudy(1),
    p: () => goToStudy(-1),
    a: () => press("agree"),
    d: () => press("disagree"),
    f: fitViewer,
    i: () => { $("wl-invert").checked = !$("wl-invert").checked; toggleInvert(); },
    h: () => press("heatmap-toggle"),
    Escape: () => setDrawMissed(false),
  };
  const action = actions[event.key];
  if (!action) return;
  event.preventDefault();
  Promise.resolve(action()).catch((error) => message(error.message));
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout());
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); state.offset = 0; loadWorklist(); });
  for (const id of ["filter-result", "filter-reviewed", "filter-sort"]) {
    $(id).addEventListener("change", () => { state.offset = 0; loadWorklist(); });
  }
  $("prev-page").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadWorklist(); });
  $("next-page").addEventListener("click", () => { state.offset += state.limit; loadWorklist(); });
  wireViewer();
  wireUpload();
  $("heatmap-toggle").addEventListener("change", toggleHeatmap);
  $("heatmap-opacity").addEventListener("input", applyHeatmap);
  $("agree").addEventListener("click", () => submitReview("agree"));
  $("disagree").addEventListener("click", () => submitReview("disagree"));
  $("clear-location").addEventListener("click", () => { clearLocation(); draftChanged(); });
  $("review-comment").addEventListener("input", draftChanged);
  $("review-again").addEventListener("click", reviewAgain);
  $("prev-study").addEventListener("click", () => goToStudy(-1).catch((error) => message(error.message)));
  $("next-study").addEventListener("click", () => goToStudy(1).catch((error) => message(error.message)));
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  setInterval(pollWorklist, POLL_MS);
  renderLegend();
  state.token = sessionStorage.getItem("fg-token");
  if (state.token) whoami().catch(() => {});
  route();
});
