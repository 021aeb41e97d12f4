// The image viewer: window/level on the image's own values, zoom, pan, heat-map overlay and
// the model's boxes. Plain JavaScript and a canvas; loaded before app.js, which owns the
// selection rules (a response for an earlier study or image is never drawn).
"use strict";

//: Long side of the pictures and values asked for first: a radiograph fitted to the screen.
const PICTURE_SIZE = 2048;
//: The server's largest long side (api/pictures.py MAX_SIZE): the full resolution, up to this.
const FULL_SIZE = 4096;
//: Zoom limits, relative to "fit".
const ZOOM_MIN = 0.5;
const ZOOM_MAX = 16;
//: A press that moves less than this many screen pixels is a click, not a drag.
const CLICK_SLOP = 3;

const viewer = {
  values: null, // { imageId, header, data: Uint16Array } of the image on screen
  fullFor: null, // id of the image whose full-resolution values were asked for
  window: null, // { center, width, function } in modality units, as shown
  invert: false,
  custom: false, // the canvas (the reader's window) is shown over the server's preview
  zoom: 1,
  panX: 0,
  panY: 0,
  tool: "wl",
  drag: null,
  drawMissed: false,
  selectedRegion: null,
  frame: 0,
};

function imageOnScreen() {
  const img = document.getElementById("radiograph");
  return Boolean(state.image && img.naturalWidth && img.dataset.imageId === String(state.image.id)
    && !img.hidden);
}

function resetViewer() {
  viewer.values = null;
  viewer.fullFor = null;
  viewer.window = null;
  viewer.invert = false;
  viewer.custom = false;
  viewer.zoom = 1;
  viewer.panX = 0;
  viewer.panY = 0;
  viewer.selectedRegion = null;
  setDrawMissed(false);
  const canvas = $("wl-canvas");
  canvas.hidden = true;
  canvas.width = 0; // drops the previous image's pixels
  canvas.height = 0;
  delete canvas.dataset.imageId;
  $("boxes").replaceChildren();
  $("wl-preset").value = "image";
  $("wl-invert").checked = false;
  $("wl-readout").textContent = "";
  $("stage").dataset.values = "none";
  layoutViewer();
}

// Values -------------------------------------------------------------------------------------

function parseValues(buffer) {
  // See api/viewer_pixels.py: uint32 header length, JSON header, uint16 little-endian values.
  const view = new DataView(buffer);
  const length = view.getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const count = header.rows * header.columns;
  const data = new Uint16Array(count);
  for (let i = 0, at = 4 + length; i < count; i += 1, at += 2) data[i] = view.getUint16(at, true);
  return { header, data };
}

async function fetchValues(image, selection, size) {
  const response = await api(`${image.pixels_url}?max_size=${size}`, {
    signal: selection.controller.signal,
  });
  if (!isCurrent(selection)) throw new StaleSelection(image.pixels_url);
  if (!response.ok) throw new Error(await errorText(response));
  const buffer = await response.arrayBuffer();
  if (!isCurrent(selection) || !state.image || state.image.id !== image.id) {
    throw new StaleSelection(image.pixels_url);
  }
  return parseValues(buffer);
}

async function loadValues(image, selection) {
  const { header, data } = await fetchValues(image, selection, PICTURE_SIZE);
  viewer.values = { imageId: image.id, header, data };
  viewer.window = Object.assign({}, header.window);
  viewer.invert = false;
  $("stage").dataset.values = "ready";
  showWindowReadout();
  wantFullResolution();
}

function isReduced(values) {
  const h = values.header;
  return h.columns < h.image_columns && h.columns < FULL_SIZE && h.rows < FULL_SIZE;
}

function wantFullResolution() {
  // Zoomed in so far that the screen has more pixels across the image than the reduced values:
  // ask once for the full resolution; the reduced picture stays until it comes. The answer
  // for an earlier study or image is dropped (the selection rules of app.js).
  const values = viewer.values;
  const image = state.image;
  if (!values || !image || values.imageId !== image.id || viewer.fullFor === image.id) return;
  if (!isReduced(values) || !imageOnScreen()) return;
  const shown = $("layer").getBoundingClientRect().width * (window.devicePixelRatio || 1);
  if (shown <= values.header.columns) return;
  viewer.fullFor = image.id;
  const selection = state.selection;
  const size = Math.min(FULL_SIZE, Math.max(values.header.image_rows, values.header.image_columns));
  $("stage").dataset.values = "loading-full";
  fetchValues(image, selection, size).then(({ header, data }) => {
    if (!viewer.values || viewer.values.imageId !== image.id) throw new StaleSelection(image.pixels_url);
    // The reader's window and inversion stay; only the resolution changes.
    viewer.values = { imageId: image.id, header, data };
    $("stage").dataset.values = "full";
    drawWindow();
  }).catch((error) => {
    if (isDropped(error)) return;
    // The reduced picture stays; say why the sharper one is missing.
    if (state.image && state.image.id === image.id) $("stage").dataset.values = "ready";
    message(`The full-resolution image cannot be shown: ${error.message}`);
  });
}

function sharperThanPreview(values) {
  // The canvas holds more pixels than the server's preview: show it even at the image's window.
  const img = $("radiograph");
  return Boolean(img.naturalWidth) && values.header.columns > img.naturalWidth;
}

function imageWindow() {
  return viewer.values ? Object.assign({}, viewer.values.header.window) : null;
}

function valueRange() {
  const h = viewer.values.header;
  return { low: h.offset, high: h.offset + h.scale * 65534 };
}

function presetWindow(name) {
  const own = imageWindow();
  if (!own) return null;
  if (name === "full") {
    const { low, high } = valueRange();
    return { center: (low + high) / 2, width: Math.max(high - low, 1e-6), function: "LINEAR_EXACT" };
  }
  if (name === "narrow") return { center: own.center, width: own.width / 2, function: "LINEAR_EXACT" };
  if (name === "wide") return { center: own.center, width: own.width * 2, function: "LINEAR_EXACT" };
  return own;
}

function greyOf(x, win) {
  // PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3 (LINEAR_EXACT, SIGMOID), to [0, 1].
  const { center, width } = win;
  let y;
  if (win.function === "SIGMOID") y = 1 / (1 + Math.exp(-4 * (x - center) / width));
  else if (win.function === "LINEAR") y = width <= 1 ? (x > center - 0.5 ? 1 : 0) : (x - (center - 0.5)) / (width - 1) + 0.5;
  else y = (x - center) / width + 0.5;
  return Math.min(1, Math.max(0, y));
}

function drawWindow() {
  viewer.frame = 0;
  const values = viewer.values;
  const canvas = $("wl-canvas");
  if (!values || !state.image || values.imageId !== state.image.id
    || !(viewer.custom || sharperThanPreview(values))) {
    canvas.hidden = true;
    return;
  }
  const { rows, columns, offset, scale } = values.header;
  const invert = values.header.invert !== viewer.invert; // the image's own inversion, then the reader's
  const lut = new Uint8ClampedArray(65536); // 0 stays black: padding
  for (let v = 1; v < 65536; v += 1) {
    const grey = greyOf(offset + scale * (v - 1), viewer.window);
    lut[v] = Math.round((invert ? 1 - grey : grey) * 255);
  }
  if (canvas.width !== columns || canvas.height !== rows) {
    canvas.width = columns;
    canvas.height = rows;
  }
  const context = canvas.getContext("2d");
  const picture = context.createImageData(columns, rows);
  const out = picture.data;
  const data = values.data;
  for (let i = 0, j = 0; i < data.length; i += 1, j += 4) {
    const grey = lut[data[i]];
    out[j] = grey;
    out[j + 1] = grey;
    out[j + 2] = grey;
    out[j + 3] = 255;
  }
  context.putImageData(picture, 0, 0);
  canvas.dataset.imageId = String(values.imageId);
  canvas.hidden = false;
}

function scheduleDraw() {
  if (!viewer.frame) viewer.frame = requestAnimationFrame(drawWindow);
}

function showWindowReadout() {
  const win = viewer.window;
  const readout = $("wl-readout");
  if (!win) {
    readout.textContent = "";
    return;
  }
  const digits = Math.abs(win.width) < 10 ? 3 : 0;
  readout.textContent = `W ${win.width.toFixed(digits)} L ${win.center.toFixed(digits)}`;
  $("stage").dataset.window = readout.textContent;
}

function setWindow(win, preset) {
  if (!viewer.values || !win) return;
  viewer.window = win;
  viewer.custom = true;
  if (preset) $("wl-preset").value = preset;
  showWindowReadout();
  scheduleDraw();
}

function choosePreset() {
  const name = $("wl-preset").value;
  if (name === "image" && !viewer.invert) {
    // Back to the image's own window: the server's preview, exactly what the model saw.
    viewer.window = imageWindow();
    viewer.custom = false;
    showWindowReadout();
    drawWindow();
    return;
  }
  setWindow(presetWindow(name), name);
}

function toggleInvert() {
  viewer.invert = $("wl-invert").checked;
  if (!viewer.values) return;
  viewer.custom = true;
  scheduleDraw();
}

// Zoom and pan -------------------------------------------------------------------------------

function layoutViewer() {
  const img = $("radiograph");
  const stage = $("stage");
  const layer = $("layer");
  const width = img.naturalWidth;
  const height = img.naturalHeight;
  if (!width || !height || img.hidden) {
    layer.hidden = !img.src;
    $("zoom-readout").textContent = "";
    return;
  }
  layer.hidden = false;
  const fit = Math.min(stage.clientWidth / width, stage.clientHeight / height);
  const scale = fit * viewer.zoom;
  // Whole screen pixels: crisp edges, and a click maps to the same image pixel every time.
  const w = Math.round(width * scale);
  const h = Math.round(height * scale);
  layer.style.width = `${w}px`;
  layer.style.height = `${h}px`;
  layer.style.left = `${Math.round((stage.clientWidth - w) / 2 + viewer.panX)}px`;
  layer.style.top = `${Math.round((stage.clientHeight - h) / 2 + viewer.panY)}px`;
  $("zoom-readout").textContent = `${Math.round(viewer.zoom * 100)} %`;
  wantFullResolution();
}

function fitViewer() {
  viewer.zoom = 1;
  viewer.panX = 0;
  viewer.panY = 0;
  layoutViewer();
}

function zoomAt(factor, clientX, clientY) {
  if (!imageOnScreen()) return;
  const stage = $("stage").getBoundingClientRect();
  const layer = $("layer").getBoundingClientRect();
  const fx = (clientX - layer.left) / layer.width;
  const fy = (clientY - layer.top) / layer.height;
  const zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, viewer.zoom * factor));
  const w = layer.width * (zoom / viewer.zoom);
  const h = layer.height * (zoom / viewer.zoom);
  // The point under the cursor stays under the cursor.
  viewer.panX = clientX - stage.left - fx * w - (stage.width - w) / 2;
  viewer.panY = clientY - stage.top - fy * h - (stage.height - h) / 2;
  viewer.zoom = zoom;
  layoutViewer();
}

function onWheel(event) {
  if (!imageOnScreen()) return;
  event.preventDefault();
  zoomAt(event.deltaY < 0 ? 1.25 : 1 / 1.25, event.clientX, event.clientY);
}

function setTool(tool) {
  viewer.tool = tool;
  $("tool-wl").classList.toggle("active", tool === "wl");
  $("tool-pan").classList.toggle("active", tool === "pan");
}

// Pointer ------------------------------------------------------------------------------------

function imagePoint(clientX, clientY) {
  // Screen -> original image pixels (x along columns), or null off the image.
  const image = state.image;
  if (!image || !image.columns || !image.rows) return null;
  const rect = $("radiograph").getBoundingClientRect();
  const fx = (clientX - rect.left) / rect.width;
  const fy = (clientY - rect.top) / rect.height;
  return { fx, fy, x: fx * image.columns, y: fy * image.rows };
}

function onMouseDown(event) {
  if (!imageOnScreen() || event.button === 2) return;
  let mode = "wl";
  if (viewer.drawMissed) mode = "draw";
  else if (event.button === 1 || event.shiftKey || viewer.tool === "pan") mode = "pan";
  viewer.drag = {
    mode, x: event.clientX, y: event.clientY, moved: false,
    panX: viewer.panX, panY: viewer.panY, window: viewer.window ? Object.assign({}, viewer.window) : null,
  };
  event.preventDefault();
  window.addEventListener("mousemove", onMouseMove);
  window.addEventListener("mouseup", onMouseUp, { once: true });
}

function onMouseMove(event) {
  const drag = viewer.drag;
  if (!drag) return;
  const dx = event.clientX - drag.x;
  const dy = event.clientY - drag.y;
  if (!drag.moved && Math.hypot(dx, dy) < CLICK_SLOP) return;
  drag.moved = true;
  if (drag.mode === "pan") {
    $("stage").classList.add("panning");
    viewer.panX = drag.panX + dx;
    viewer.panY = drag.panY + dy;
    layoutViewer();
  } else if (drag.mode === "wl") {
    if (!drag.window || !viewer.values) return;
    // One stage width of drag changes the window by twice the image's own width.
    const step = (2 * viewer.values.header.window.width) / Math.max(200, $("stage").clientWidth);
    setWindow({
      center: drag.window.center + dy * step,
      width: Math.max(drag.window.width + dx * step, viewer.values.header.scale),
      function: drag.window.function,
    }, "custom");
  } else if (drag.mode === "draw") {
    const stage = $("stage").getBoundingClientRect();
    const box = $("draft-box");
    box.style.left = `${Math.min(drag.x, event.clientX) - stage.left}px`;
    box.style.top = `${Math.min(drag.y, event.clientY) - stage.top}px`;
    box.style.width = `${Math.abs(dx)}px`;
    box.style.height = `${Math.abs(dy)}px`;
    box.hidden = false;
  }
}

function onMouseUp(event) {
  window.removeEventListener("mousemove", onMouseMove);
  const drag = viewer.drag;
  viewer.drag = null;
  $("stage").classList.remove("panning");
  $("draft-box").hidden = true;
  if (!drag) return;
  if (drag.mode === "draw") {
    if (drag.moved) drawnMissed(drag, event);
    return;
  }
  if (!drag.moved) markLocation(event); // a click marks the fracture for the review
}

function drawnMissed(drag, event) {
  const image = state.image;
  const a = imagePoint(drag.x, drag.y);
  const b = imagePoint(event.clientX, event.clientY);
  if (!image || !a || !b) return;
  const clamp = (value, top) => Math.min(top, Math.max(0, value));
  const box = {
    x0: Math.round(clamp(Math.min(a.x, b.x), image.columns) * 10) / 10,
    y0: Math.round(clamp(Math.min(a.y, b.y), image.rows) * 10) / 10,
    x1: Math.round(clamp(Math.max(a.x, b.x), image.columns) * 10) / 10,
    y1: Math.round(clamp(Math.max(a.y, b.y), image.rows) * 10) / 10,
  };
  setDrawMissed(false);
  if (box.x1 - box.x0 < 1 || box.y1 - box.y0 < 1) {
    message("The box lies outside the image; draw it on the image.");
    return;
  }
  sendFeedback(image, { verdict: "missed", box });
}

function setDrawMissed(on) {
  viewer.drawMissed = on;
  $("stage").classList.toggle("drawing", on);
  $("mark-missed").classList.toggle("active", on);
  $("missed-hint").hidden = !on;
}

// Heat map and boxes -------------------------------------------------------------------------

function svgElement(name, attributes) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

function isSolid(region) {
  return region.operating_points.includes("high_specificity");
}

function regionsOf(image) {
  return (image && image.result && image.result.regions) || [];
}

function renderBoxes() {
  const svg = $("boxes");
  svg.replaceChildren();
  const image = state.image;
  if (!image || !image.columns || !image.rows || !imageOnScreen()) return;
  svg.setAttribute("viewBox", `0 0 ${image.columns} ${image.rows}`);
  svg.dataset.imageId = String(image.id);
  const size = Math.max(image.columns, image.rows) / 45;
  regionsOf(image).forEach((region, index) => {
    const kind = isSolid(region) ? "solid" : "dashed";
    const verdict = latestVerdict(image, index);
    const rect = svgElement("rect", {
      x: region.x0, y: region.y0, width: region.x1 - region.x0, height: region.y1 - region.y0,
      class: `${kind}${viewer.selectedRegion === index ? " selected" : ""}${verdict === "wrong" ? " judged-wrong" : ""}`,
      "data-region-index": index,
    });
    const label = svgElement("text", { x: region.x0, y: Math.max(size, region.y0 - size * 0.3), class: kind, "font-size": size });
    label.textContent = String(index + 1);
    svg.append(rect, label);
  });
  for (const feedback of image.feedback || []) {
    if (feedback.verdict !== "missed") continue;
    const b = feedback.box;
    svg.appendChild(svgElement("rect", {
      x: b.x0, y: b.y0, width: b.x1 - b.x0, height: b.y1 - b.y0, class: "missed",
    }));
  }
  applyBoxToggles();
}

function applyBoxToggles() {
  const svg = $("boxes");
  svg.classList.toggle("hide-solid", !$("boxes-solid").checked);
  svg.classList.toggle("hide-dashed", !$("boxes-dashed").checked);
}

function latestVerdict(image, index) {
  let verdict = null;
  for (const feedback of image.feedback || []) {
    if (feedback.region_index === index && feedback.verdict !== "missed") verdict = feedback.verdict;
  }
  return verdict;
}

function selectRegion(index) {
  viewer.selectedRegion = viewer.selectedRegion === index ? null : index;
  renderBoxes();
  renderFindings();
}

function wireViewer() {
  const stage = $("stage");
  stage.addEventListener("mousedown", onMouseDown);
  stage.addEventListener("wheel", onWheel, { passive: false });
  stage.addEventListener("contextmenu", (event) => event.preventDefault());
  $("tool-wl").addEventListener("click", () => setTool("wl"));
  $("tool-pan").addEventListener("click", () => setTool("pan"));
  $("wl-preset").addEventListener("change", choosePreset);
  $("wl-invert").addEventListener("change", toggleInvert);
  $("fit").addEventListener("click", fitViewer);
  $("boxes-solid").addEventListener("change", applyBoxToggles);
  $("boxes-dashed").addEventListener("change", applyBoxToggles);
  $("mark-missed").addEventListener("click", () => setDrawMissed(!viewer.drawMissed));
  window.addEventListener("resize", layoutViewer);
  $("radiograph").addEventListener("load", () => { layoutViewer(); renderBoxes(); });
}
