// RegionPrompt web UI: plain JavaScript, no build step, no external resources.
// Coordinates sent to the server are pixels of the image file (the canvas has the image's own size
// and is only scaled by CSS), so every pointer position is mapped through canvasPoint().
"use strict";

// The same colour cycle as regionprompt.draw (colour-blind friendly), by label index.
const PALETTE = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#785ef0", "#000000", "#aa4499"];
const MIN_BOX = 2; // image pixels: smaller drags count as clicks
const ACCEPTED = "#00a651"; // accepted labels (folder labelling)

const state = {
  file: null,          // the File being searched
  image: null,         // its decoded HTMLImageElement
  prompts: [],         // drawn on this image: {kind: "box"|"point", coords: [...], negative: bool}
  exemplars: [],       // kept from other images: {file, name, label, prompts: [...], thumbs: [{url, what}]}
  concepts: [],        // from GET /concepts
  selected: new Set(), // concept names to use
  result: null,        // last /detect response
  drag: null,          // {x0, y0, x1, y1} while drawing a box
  busy: false,
  folder: null,        // GET /label/images when the server serves a folder: {folder, images, categories}
  current: null,       // the folder image shown (its name in the folder), null for a file opened here
  labels: null,        // GET /label/labels of the current folder image: {file, width, height, done, boxes}
};

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// ---- image ------------------------------------------------------------------------------------

function openImage(file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    state.file = file;
    state.image = img;
    state.prompts = [];
    state.result = null;
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    canvas.hidden = false;
    $("placeholder").hidden = true;
    renderPrompts();
    renderResults();
    draw();
    setStatus(`${file.name}: ${img.naturalWidth} x ${img.naturalHeight} px`);
  };
  img.onerror = () => setStatus(`${file.name} is not an image this browser can show`, true);
  img.src = url;
}

// ---- drawing prompts --------------------------------------------------------------------------

function tool() { return document.querySelector('input[name="tool"]:checked').value; }
function negativeMode() { return document.querySelector('input[name="polarity"]:checked').value === "negative"; }
function visualLabel() { return $("visual-label").value.trim() || null; }

function canvasPoint(event) {
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * canvas.width / rect.width;
  const y = (event.clientY - rect.top) * canvas.height / rect.height;
  return [Math.min(Math.max(x, 0), canvas.width), Math.min(Math.max(y, 0), canvas.height)];
}

const round1 = (v) => Math.round(v * 10) / 10;

canvas.addEventListener("pointerdown", (event) => {
  if (!state.image || event.button !== 0) return;
  const [x, y] = canvasPoint(event);
  state.drag = { x0: x, y0: y, x1: x, y1: y };
  canvas.setPointerCapture(event.pointerId);
});

canvas.addEventListener("pointermove", (event) => {
  if (!state.drag) return;
  [state.drag.x1, state.drag.y1] = canvasPoint(event);
  if (tool() === "box") draw();
});

canvas.addEventListener("pointerup", (event) => {
  if (!state.drag) return;
  [state.drag.x1, state.drag.y1] = canvasPoint(event);
  const d = state.drag;
  state.drag = null;
  const x1 = Math.min(d.x0, d.x1), x2 = Math.max(d.x0, d.x1);
  const y1 = Math.min(d.y0, d.y1), y2 = Math.max(d.y0, d.y1);
  const negative = negativeMode();
  if (tool() === "box") {
    if (x2 - x1 >= MIN_BOX && y2 - y1 >= MIN_BOX) {
      state.prompts.push({ kind: "box", coords: [x1, y1, x2, y2].map(round1), negative });
    }
  } else {
    state.prompts.push({ kind: "point", coords: [d.x1, d.y1].map(round1), negative });
  }
  renderPrompts();
  draw();
});

canvas.addEventListener("pointercancel", () => { state.drag = null; draw(); });
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.drag) { state.drag = null; draw(); }
});

function describePrompt(p) {
  const what = p.kind === "box" ? `box [${p.coords.map(Math.round).join(", ")}]` : `point (${p.coords.map(Math.round).join(", ")})`;
  return (p.negative ? "not: " : "") + what;
}

function renderPrompts() {
  const list = $("prompt-list");
  list.replaceChildren();
  state.prompts.forEach((p, i) => {
    const li = document.createElement("li");
    li.className = p.negative ? "negative" : "positive";
    const text = document.createElement("span");
    text.className = "grow";
    text.textContent = describePrompt(p);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "small";
    remove.textContent = "\u00d7";
    remove.title = "remove this prompt";
    remove.addEventListener("click", () => { state.prompts.splice(i, 1); renderPrompts(); draw(); });
    li.append(text, remove);
    list.append(li);
  });
  const row = $("exemplar-row");
  row.hidden = state.exemplars.length === 0;
  const count = state.exemplars.reduce((n, e) => n + e.prompts.length, 0);
  $("exemplar-info").textContent = `${count} exemplar prompt(s) from ${state.exemplars.map((e) => e.name).join(", ")}`;
  const thumbs = $("exemplar-thumbs");
  thumbs.replaceChildren();
  for (const e of state.exemplars) {
    for (const t of e.thumbs) {
      const img = document.createElement("img");
      img.src = t.url;
      img.alt = img.title = `exemplar from ${e.name}: ${t.what}`;
      thumbs.append(img);
    }
  }
}

// The exemplar's crop (a box, or a square around a point: the server's point_box_fraction), at most 96 px
// high, as a data URL: what "use on other images" keeps is then visible while searching other images.
function thumbnail(image, p) {
  const w = image.naturalWidth, h = image.naturalHeight;
  let [x1, y1, x2, y2] = p.coords;
  if (p.kind === "point") {
    const half = Math.max(4, 0.075 * Math.min(w, h));
    [x1, y1, x2, y2] = [p.coords[0] - half, p.coords[1] - half, p.coords[0] + half, p.coords[1] + half];
  }
  x1 = Math.max(0, Math.floor(x1)); y1 = Math.max(0, Math.floor(y1));
  x2 = Math.min(w, Math.max(x1 + 1, Math.ceil(x2))); y2 = Math.min(h, Math.max(y1 + 1, Math.ceil(y2)));
  const scale = Math.min(1, 96 / (y2 - y1));
  const c = document.createElement("canvas");
  c.width = Math.max(1, Math.round((x2 - x1) * scale));
  c.height = Math.max(1, Math.round((y2 - y1) * scale));
  c.getContext("2d").drawImage(image, x1, y1, x2 - x1, y2 - y1, 0, 0, c.width, c.height);
  return c.toDataURL("image/png");
}

// ---- canvas -----------------------------------------------------------------------------------

function visibleDetections() {
  if (!state.result) return [];
  const threshold = Number($("threshold").value);
  return state.result.detections.filter((d) => d.score >= threshold);
}

function draw() {
  if (!state.image) return;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(state.image, 0, 0);
  // Lines and captions keep the same size on screen however much CSS scales the canvas.
  const rect = canvas.getBoundingClientRect();
  const perScreenPixel = rect.width > 0 ? canvas.width / rect.width : 1;
  const line = Math.max(1, 2 * perScreenPixel);
  const font = Math.max(6, Math.round(13 * perScreenPixel));
  ctx.font = `${font}px system-ui, sans-serif`;
  ctx.textBaseline = "top";

  for (const d of visibleDetections()) {
    const [x1, y1, x2, y2] = d.box;
    const colour = PALETTE[d.label % PALETTE.length];
    ctx.lineWidth = line;
    ctx.strokeStyle = colour;
    ctx.setLineDash([]);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const caption = `${d.name} ${d.score.toFixed(2)}`;
    const width = ctx.measureText(caption).width + 6;
    const top = y1 - font - 4 >= 0 ? y1 - font - 4 : y1;
    ctx.fillStyle = colour;
    ctx.fillRect(x1, top, width, font + 4);
    ctx.fillStyle = "#fff";
    ctx.fillText(caption, x1 + 3, top + 2);
  }

  // Accepted labels: dashed green over a light wash, captioned with a tick (detections are solid).
  for (const b of state.labels ? state.labels.boxes : []) {
    const [x1, y1, x2, y2] = b.box;
    ctx.fillStyle = "rgba(0, 166, 81, 0.15)";
    ctx.fillRect(x1, y1, x2 - x1, y2 - y1);
    ctx.lineWidth = line * 1.5;
    ctx.strokeStyle = ACCEPTED;
    ctx.setLineDash([line * 4, line * 2]);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.setLineDash([]);
    const caption = `\u2713 ${b.name}`;
    const width = ctx.measureText(caption).width + 6;
    const top = y2 + font + 4 <= canvas.height ? y2 : y2 - font - 4;
    ctx.fillStyle = ACCEPTED;
    ctx.fillRect(x1, top, width, font + 4);
    ctx.fillStyle = "#fff";
    ctx.fillText(caption, x1 + 3, top + 2);
  }

  for (const p of state.prompts) drawPrompt(p, line);
  if (state.drag && tool() === "box") {
    const d = state.drag;
    drawPrompt({ kind: "box", coords: [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)], negative: negativeMode() }, line);
  }
}

function drawPrompt(p, line) {
  const colour = p.negative ? "#d62728" : "#2ca02c";
  ctx.lineWidth = line;
  ctx.setLineDash(p.negative ? [line * 3, line * 2] : []);
  if (p.kind === "box") {
    const [x1, y1, x2, y2] = p.coords;
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = line + 2;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.strokeStyle = colour;
    ctx.lineWidth = line;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  } else {
    const [x, y] = p.coords;
    ctx.beginPath();
    ctx.arc(x, y, line * 3, 0, 2 * Math.PI);
    ctx.fillStyle = colour;
    ctx.fill();
    ctx.strokeStyle = "#fff";
    ctx.setLineDash([]);
    ctx.stroke();
  }
  ctx.setLineDash([]);
}

// ---- requests ---------------------------------------------------------------------------------

function textPrompts() {
  return $("text-input").value.split(/[,;\n]/).map((t) => t.trim()).filter(Boolean);
}

// The prompts JSON of /detect and /concepts, plus the extra images it refers to.
function buildPrompts({ withConcepts }) {
  const label = visualLabel();
  const prompts = { text: textPrompts(), boxes: [], points: [], negatives: [], concepts: [] };
  const add = (p, extra) => {
    const item = { [p.kind]: p.coords, ...extra };
    if (p.negative) prompts.negatives.push(item);
    else prompts[p.kind === "box" ? "boxes" : "points"].push(item);
  };
  for (const p of state.prompts) add(p, !p.negative && label ? { label } : {});
  const images = [];
  state.exemplars.forEach((e, index) => {
    images.push(e.file);
    for (const p of e.prompts) add(p, !p.negative && e.label ? { label: e.label, image: index } : { image: index });
  });
  if (withConcepts) prompts.concepts = [...state.selected];
  return { prompts, images };
}

async function runDetection() {
  if (state.busy) return;
  if (!state.file) { setStatus("open an image first", true); return; }
  const { prompts, images } = buildPrompts({ withConcepts: true });
  // Ask for everything above 0: the threshold slider then filters without another request.
  prompts.threshold = 0;
  const form = new FormData();
  // A folder image is already on the server: name it instead of uploading it again.
  if (!state.current) form.append("image", state.file, state.file.name);
  form.append("prompts", JSON.stringify(prompts));
  images.forEach((file) => form.append("prompt_images", file, file.name));
  const url = state.current ? `/label/detect?file=${encodeURIComponent(state.current)}` : "/detect";
  state.busy = true;
  $("run").disabled = true;
  setStatus("detecting\u2026");
  try {
    const response = await fetch(url, { method: "POST", body: form });
    if (!response.ok) { setStatus(`detection failed: ${await errorText(response)}`, true); return; }
    state.result = await response.json();
    renderResults();
    draw();
    setStatus(`done in ${state.result.seconds.toFixed(2)} s`);
  } catch (error) {
    setStatus(`detection failed: ${error}`, true);
  } finally {
    state.busy = false;
    $("run").disabled = false;
  }
}

function renderResults() {
  const body = document.querySelector("#results tbody");
  body.replaceChildren();
  const shown = visibleDetections();
  shown.forEach((d, i) => {
    const tr = document.createElement("tr");
    tr.className = "detection";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = PALETTE[d.label % PALETTE.length];
    const cells = [String(i + 1), d.name, d.score.toFixed(3), d.box.map((v) => v.toFixed(1)).join(", ")];
    cells.forEach((text, c) => {
      const td = document.createElement("td");
      if (c === 1) td.append(swatch);
      td.append(document.createTextNode(text));
      if (c !== 1) td.className = "num";
      if (c === 3) td.dataset.box = JSON.stringify(d.box);
      tr.append(td);
    });
    if (state.current) {
      const td = document.createElement("td");
      const accept = document.createElement("button");
      accept.type = "button";
      accept.className = "small accept";
      accept.textContent = "accept";
      accept.title = `accept this box as "${d.name}"`;
      accept.addEventListener("click", () => acceptDetections([d]));
      td.append(accept);
      tr.append(td);
    }
    body.append(tr);
  });
  const total = state.result ? state.result.detections.length : 0;
  $("result-count").textContent = state.result ? `${shown.length} of ${total} detections at score >= ${Number($("threshold").value).toFixed(2)}` : "";
  $("download-coco").disabled = !state.result;
}

function downloadCoco() {
  if (!state.result) return;
  const r = state.result;
  const coco = {
    info: { description: "RegionPrompt detections", model_hash: r.model_hash },
    images: [{ id: 1, file_name: state.file ? state.file.name : r.image, width: r.width, height: r.height }],
    categories: r.names.map((name, i) => ({ id: i + 1, name })),
    annotations: visibleDetections().map((d, i) => {
      const [x1, y1, x2, y2] = d.box;
      return { id: i + 1, image_id: 1, category_id: d.label + 1, bbox: [x1, y1, x2 - x1, y2 - y1],
               area: (x2 - x1) * (y2 - y1), score: d.score, iscrowd: 0 };
    }),
  };
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([JSON.stringify(coco, null, 2)], { type: "application/json" }));
  link.download = `${(state.file ? state.file.name : "image").replace(/\.[^.]*$/, "")}_coco.json`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// ---- concepts ---------------------------------------------------------------------------------

async function loadConcepts() {
  try {
    const response = await fetch("/concepts");
    if (!response.ok) { setStatus(`could not list concepts: ${await errorText(response)}`, true); return; }
    state.concepts = (await response.json()).concepts;
  } catch (error) {
    setStatus(`could not list concepts: ${error}`, true);
    return;
  }
  const names = new Set(state.concepts.map((c) => c.name));
  state.selected = new Set([...state.selected].filter((n) => names.has(n)));
  renderConcepts();
}

function renderConcepts() {
  const list = $("concept-list");
  list.replaceChildren();
  if (state.concepts.length === 0) {
    const li = document.createElement("li");
    li.textContent = "no saved concepts yet";
    li.className = "incompatible";
    list.append(li);
  }
  for (const c of state.concepts) {
    const li = document.createElement("li");
    li.className = c.compatible ? "concept" : "concept incompatible";
    const label = document.createElement("label");
    label.className = "grow";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = c.name;
    box.checked = state.selected.has(c.name);
    box.disabled = !c.compatible;
    box.addEventListener("change", () => { box.checked ? state.selected.add(c.name) : state.selected.delete(c.name); });
    label.append(box, document.createTextNode(` ${c.name}`));
    label.title = c.compatible ? `${c.num_sources} source prompt(s), made ${c.created}` : "made by another model: recreate it with this one";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "small";
    remove.textContent = "\u00d7";
    remove.title = `delete concept ${c.name}`;
    remove.addEventListener("click", () => deleteConcept(c.name));
    li.append(label, remove);
    list.append(li);
  }
}

async function saveConcept(replace = false) {
  const name = $("concept-name").value.trim();
  if (!name) { setStatus("type a name for the concept", true); return; }
  const { prompts, images } = buildPrompts({ withConcepts: false });
  const form = new FormData();
  form.append("name", name);
  form.append("prompts", JSON.stringify(prompts));
  if (state.file && state.prompts.length) form.append("image", state.file, state.file.name);
  images.forEach((file) => form.append("prompt_images", file, file.name));
  if (replace) form.append("replace", "true");
  setStatus(`saving concept ${name}\u2026`);
  const response = await fetch("/concepts", { method: "POST", body: form });
  if (response.status === 409 && !replace) {
    if (window.confirm(`A concept named "${name}" exists. Replace it?`)) return saveConcept(true);
    setStatus(`kept the existing concept ${name}`);
    return;
  }
  if (!response.ok) { setStatus(`could not save concept: ${await errorText(response)}`, true); return; }
  const saved = await response.json();
  // Not ticked: the prompts it was made from are still on the canvas, so ticking it now would find every
  // object twice. Tick it to use it, on this image once the prompts are cleared or on other images.
  await loadConcepts();
  setStatus(`saved concept ${saved.name} (${saved.num_sources} prompt(s)); tick it to use it`);
}

async function deleteConcept(name) {
  if (!window.confirm(`Delete concept "${name}"?`)) return;
  const response = await fetch(`/concepts/${encodeURIComponent(name)}`, { method: "DELETE" });
  if (!response.ok) { setStatus(`could not delete: ${await errorText(response)}`, true); return; }
  state.selected.delete(name);
  await loadConcepts();
  setStatus(`deleted concept ${name}`);
}

// ---- labelling a served folder ------------------------------------------------------------------

async function loadFolder() {
  let response;
  try {
    response = await fetch("/label/images");
  } catch {
    return;
  }
  if (response.status === 404) return; // this server serves no folder: the page works on opened files only
  if (!response.ok) { setStatus(`could not list the folder: ${await errorText(response)}`, true); return; }
  state.folder = await response.json();
  $("folder-panel").hidden = false;
  $("label-section").hidden = false;
  document.querySelectorAll(".label-col").forEach((el) => { el.hidden = false; });
  renderFolder();
  // Back where the page was (the address keeps the image), else the first image not labelled yet.
  const wanted = decodeURIComponent(location.hash.replace(/^#file=/, ""));
  const rows = state.folder.images;
  const start = rows.some((r) => r.file === wanted) ? wanted : (rows.find((r) => !r.done) || rows[0] || {}).file;
  if (start) await openFolderImage(start);
  else setStatus(`the folder ${state.folder.folder} holds no images`, true);
}

async function refreshFolder() {
  const response = await fetch("/label/images");
  if (response.ok) { state.folder = await response.json(); renderFolder(); }
}

function renderFolder() {
  const select = $("folder-images");
  select.replaceChildren();
  for (const row of state.folder.images) {
    const option = document.createElement("option");
    option.value = row.file;
    option.textContent = `${row.done ? "\u2713" : "\u00a0\u00a0"} ${row.file}${row.boxes ? ` (${row.boxes})` : ""}`;
    select.append(option);
  }
  select.value = state.current || "";
  const done = state.folder.images.filter((r) => r.done).length;
  $("folder-progress").textContent = `${state.folder.folder}: ${done} of ${state.folder.images.length} images labelled`;
  $("label-names").replaceChildren(...state.folder.categories.map((name) => Object.assign(document.createElement("option"), { value: name })));
}

async function openFolderImage(file) {
  const response = await fetch(`/label/image?file=${encodeURIComponent(file)}`);
  if (!response.ok) { setStatus(`could not open ${file}: ${await errorText(response)}`, true); return; }
  const blob = await response.blob();
  state.current = file;
  state.labels = null;
  history.replaceState(null, "", `#file=${encodeURIComponent(file)}`);
  $("folder-images").value = file;
  openImage(new File([blob], file.split("/").pop(), { type: blob.type }));
  await loadLabels();
}

function step(delta) {
  if (!state.folder || !state.folder.images.length) return;
  const files = state.folder.images.map((r) => r.file);
  const next = Math.min(Math.max(files.indexOf(state.current) + delta, 0), files.length - 1);
  if (files[next] !== state.current) openFolderImage(files[next]);
}

async function loadLabels() {
  const response = await fetch(`/label/labels?file=${encodeURIComponent(state.current)}`);
  if (!response.ok) { setStatus(`could not read the labels: ${await errorText(response)}`, true); return; }
  state.labels = await response.json();
  renderLabels();
  draw();
}

// One change to the current image's labels; the answer is the image's labels as stored.
async function changeLabels(method, path, body) {
  if (!state.current) { setStatus("open an image of the folder first", true); return false; }
  const sep = path.includes("?") ? "&" : "?";
  const init = { method };
  if (body !== undefined) { init.headers = { "Content-Type": "application/json" }; init.body = JSON.stringify(body); }
  const response = await fetch(`${path}${sep}file=${encodeURIComponent(state.current)}`, init);
  if (!response.ok) { setStatus(await errorText(response), true); return false; }
  state.labels = await response.json();
  renderLabels();
  draw();
  await refreshFolder();
  return true;
}

async function acceptDetections(detections) {
  if (!detections.length) { setStatus("no detection to accept (lower the threshold or press Detect)", true); return; }
  const boxes = detections.map((d) => ({ box: d.box, name: d.name, score: d.score }));
  if (!(await changeLabels("POST", "/label/labels/boxes", { boxes }))) return;
  // Accepted detections leave the candidates, so they cannot be accepted twice.
  state.result.detections = state.result.detections.filter((d) => !detections.includes(d));
  renderResults();
  draw();
  setStatus(`accepted ${detections.length} box(es)`);
}

async function acceptDrawn() {
  const drawn = state.prompts.filter((p) => p.kind === "box" && !p.negative);
  if (!drawn.length) { setStatus("draw boxes on the image first", true); return; }
  const name = visualLabel() || "object";
  if (!(await changeLabels("POST", "/label/labels/boxes", { boxes: drawn.map((p) => ({ box: p.coords, name })) }))) return;
  state.prompts = state.prompts.filter((p) => !drawn.includes(p));
  renderPrompts();
  draw();
  setStatus(`accepted ${drawn.length} drawn box(es) as "${name}"`);
}

function renderLabels() {
  const list = $("label-list");
  list.replaceChildren();
  const boxes = state.labels ? state.labels.boxes : [];
  if (!boxes.length) {
    const li = document.createElement("li");
    li.className = "incompatible";
    li.textContent = state.labels && state.labels.done ? "done: nothing labelled on this image" : "no labels yet";
    list.append(li);
  }
  boxes.forEach((b, i) => {
    const li = document.createElement("li");
    li.className = "label";
    const name = document.createElement("input");
    name.type = "text";
    name.value = b.name;
    name.setAttribute("list", "label-names");
    name.setAttribute("aria-label", `name of label ${i + 1}`);
    name.addEventListener("change", async () => {
      if (await changeLabels("PATCH", `/label/labels/boxes/${i}`, { name: name.value })) setStatus(`relabelled box ${i + 1} as "${name.value.trim()}"`);
    });
    const where = document.createElement("span");
    where.className = "box";
    where.textContent = `[${b.box.map(Math.round).join(", ")}]`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "small";
    remove.textContent = "\u00d7";
    remove.title = "delete this label";
    remove.addEventListener("click", async () => { if (await changeLabels("DELETE", `/label/labels/boxes/${i}`)) setStatus(`deleted label ${i + 1}`); });
    li.append(name, where, remove);
    list.append(li);
  });
}

async function exportFolder(format) {
  const response = await fetch("/label/export", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ format }),
  });
  if (!response.ok) { setStatus(`export failed: ${await errorText(response)}`, true); return; }
  const result = await response.json();
  const info = $("export-info");
  info.replaceChildren(`${format.toUpperCase()}: ${result.images} images, ${result.annotations} boxes, ` +
    `${result.categories.length} categories written to ${result.folder} `);
  const link = document.createElement("a");
  link.href = result.download;
  link.textContent = "download zip";
  info.append(link);
  setStatus(`exported ${format.toUpperCase()}`);
}

// ---- wiring -----------------------------------------------------------------------------------

function keepExemplars() {
  const visual = state.prompts;
  if (!state.file || visual.length === 0) { setStatus("draw boxes or points on this image first", true); return; }
  const thumbs = visual.filter((p) => !p.negative).map((p) => ({ url: thumbnail(state.image, p), what: describePrompt(p) }));
  state.exemplars.push({ file: state.file, name: state.file.name, label: visualLabel(), prompts: visual.slice(), thumbs });
  state.prompts = [];
  renderPrompts();
  draw();
  setStatus("kept as exemplars: open another image and press Detect");
}

async function showModel() {
  try {
    const [health, models] = await Promise.all([fetch("/health"), fetch("/models")]);
    const h = await health.json();
    const m = await models.json();
    const name = m.models && m.models.length ? m.models[0].name : "model";
    $("model-info").textContent = `${name} \u00b7 ${h.model_hash.slice(0, 12)}`;
    // Start the slider at the model's own default threshold (T-Rex2's scores run lower than RegionCLIP's).
    const suggested = m.models && m.models.length ? m.models[0].default_threshold : null;
    if (typeof suggested === "number" && !state.thresholdTouched) {
      $("threshold").value = suggested.toFixed(2);
      $("threshold-value").textContent = suggested.toFixed(2);
      renderResults();
    }
  } catch (error) {
    $("model-info").textContent = "server not reachable";
  }
}

$("image-input").addEventListener("change", (event) => {
  // A file from this computer is searched, not labelled: leave the folder image.
  state.current = null;
  state.labels = null;
  if (state.folder) { $("folder-images").value = ""; renderLabels(); }
  openImage(event.target.files[0]);
});
$("folder-images").addEventListener("change", (event) => openFolderImage(event.target.value));
$("prev-image").addEventListener("click", () => step(-1));
$("next-image").addEventListener("click", () => step(1));
document.addEventListener("keydown", (event) => {
  if (!state.folder || event.target.closest("input, select, textarea")) return;
  if (event.key === "ArrowRight") step(1);
  if (event.key === "ArrowLeft") step(-1);
});
$("accept-all").addEventListener("click", () => acceptDetections(visibleDetections()));
$("accept-drawn").addEventListener("click", acceptDrawn);
$("mark-done").addEventListener("click", async () => { if (await changeLabels("POST", "/label/labels/boxes", { boxes: [] })) setStatus("marked done"); });
$("export-coco").addEventListener("click", () => exportFolder("coco"));
$("export-yolo").addEventListener("click", () => exportFolder("yolo"));
$("run").addEventListener("click", runDetection);
$("text-input").addEventListener("keydown", (event) => { if (event.key === "Enter") runDetection(); });
$("clear-prompts").addEventListener("click", () => { state.prompts = []; renderPrompts(); draw(); });
$("keep-exemplars").addEventListener("click", keepExemplars);
$("clear-exemplars").addEventListener("click", () => { state.exemplars = []; renderPrompts(); });
$("save-concept").addEventListener("click", () => saveConcept(false));
$("download-coco").addEventListener("click", downloadCoco);
$("threshold").addEventListener("input", () => {
  state.thresholdTouched = true;
  $("threshold-value").textContent = Number($("threshold").value).toFixed(2);
  renderResults();
  draw();
});

window.addEventListener("resize", draw);

renderPrompts();
showModel();
loadConcepts();
loadFolder();
