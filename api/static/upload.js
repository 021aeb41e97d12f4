// One image, uploaded: a PNG, JPEG or DICOM file through /api/predict (the model path the
// node's studies take). Nothing is kept unless the reader ticks "store".
"use strict";

function uploadStatus(text) {
  $("upload-status").textContent = text;
}

async function uploadFile(file) {
  if (!file) return;
  message("");
  $("upload-result").hidden = true;
  $("upload-empty").hidden = false;
  $("upload-picture").removeAttribute("src");
  uploadStatus(`Analysing ${file.name} (${Math.ceil(file.size / 1024)} KiB)…`);
  const form = new FormData();
  form.append("file", file);
  const store = $("upload-keep").checked;
  let response;
  try {
    response = await api(`/api/predict?store=${store}&heatmap=true`, { method: "POST", body: form });
  } catch (error) {
    uploadStatus("");
    message(`The upload failed: ${error.message}`);
    return;
  }
  if (!response.ok) {
    const why = await errorText(response);
    uploadStatus("");
    message(`This file cannot be analysed: ${why}`);
    return;
  }
  renderUpload(await response.json());
}

function renderUpload(result) {
  const sensitive = result.labels.high_sensitivity;
  const specific = result.labels.high_specificity;
  const headline = $("upload-headline");
  headline.textContent = result.positive ? "Fracture suspected" : "No fracture found";
  headline.className = `result ${result.positive ? "positive" : "negative"}`;
  $("upload-explain").textContent = explanation(sensitive, specific);
  const limit = (name) => {
    if (name === result.operating_point) return ` (≥ ${threshold(result.threshold)})`;
    const point = state.card && state.card.name === result.model_name ? cardPoint(name) : null;
    return point ? ` (≥ ${threshold(point.threshold)})` : "";
  };
  const rows = [
    ["Probability", probability(result.probability)],
    [`High sensitivity${limit("high_sensitivity")}`, sensitive ? "positive" : "negative"],
    [`High specificity${limit("high_specificity")}`, specific ? "positive" : "negative"],
    ["Operating point", `${result.operating_point.replace("_", " ")} (threshold ${threshold(result.threshold)})`],
    ["Model", `${result.model_name} ${result.model_version}`],
    ["Image", `${result.width} x ${result.height} ${result.source === "dicom" ? "DICOM" : "picture"}`],
    ["Kept", result.stored ? `stored as study ${result.study_id}` : "no, nothing was kept"],
  ];
  const details = $("upload-details");
  details.replaceChildren();
  for (const [term, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    details.append(dt, dd);
  }
  const findings = $("upload-findings");
  findings.replaceChildren();
  result.regions.forEach((region, index) => {
    const item = document.createElement("li");
    item.textContent = `${index + 1} · probability ${probability(region.probability)} · ${pointsText(region)}`;
    findings.appendChild(item);
  });
  if (!result.regions.length) findings.textContent = "No box.";
  if (result.heatmap_png_base64) $("upload-picture").src = `data:image/png;base64,${result.heatmap_png_base64}`;
  if (result.truncated) uploadStatus("The picture file was truncated; the result is for what could be read.");
  else uploadStatus("Done. The picture shows the heat map and the model's boxes (solid: high specificity, dashed: high sensitivity only).");
  $("upload-result").hidden = false;
  $("upload-empty").hidden = true;
}

function wireUpload() {
  const zone = $("drop-zone");
  $("upload-file").addEventListener("change", (event) => {
    uploadFile(event.target.files[0]).catch((error) => message(error.message));
    event.target.value = ""; // the same file may be chosen again
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    uploadFile(event.dataTransfer.files[0]).catch((error) => message(error.message));
  });
}
