// changeflow review page: two panes (t1, t2) on one shared OpenLayers View in the group's own CRS,
// candidates from the detection, reviewer edits sent through a persistent retrying queue.
"use strict";

const STYLE_COLOURS = {
  pending: "#ffd21f", accepted: "#2ee06b", rejected: "#ff4040", edited: "#25d8ff", added: "#4f8bff",
};
const state = {
  config: null, queue: [], index: -1, current: null, ops: [], sending: false, undo: [], mode: null,
  tileErrors: 0, tilesLoaded: 0, flicker: false,
};

async function main() {
  const config = await (await fetch("/api/config")).json();
  state.config = config;
  document.getElementById("title").textContent = `changeflow review: ${config.group}`;
  const projection = new ol.proj.Projection({ code: "changeflow:grid", units: config.units || "m", extent: config.extent });
  const tileGrid = new ol.tilegrid.TileGrid({
    origin: config.origin, resolutions: config.resolutions, tileSize: config.tile_size, extent: config.extent,
  });
  const finest = config.resolutions[config.resolutions.length - 1];
  const view = new ol.View({
    projection, center: ol.extent.getCenter(config.extent), resolution: config.resolutions[0] / 2,
    maxResolution: config.resolutions[0] * 2, minResolution: finest / 8, extent: config.extent, constrainOnlyCenter: true,
  });
  const tiles = (path) => {
    const source = new ol.source.XYZ({ projection, tileGrid, url: path, interpolate: false, transition: 0 });
    source.on("tileloadend", () => { state.tilesLoaded += 1; });
    source.on("tileloaderror", () => { state.tileErrors += 1; });
    return source;
  };
  const imageUrl = (role) => `/tiles/${role}/{z}/{x}/{y}.png`;
  const probabilityUrl = () => `/tiles/probability/{z}/{x}/{y}.png?threshold=${state.threshold}`;
  state.threshold = config.threshold;
  const features = new ol.source.Vector();
  const cells = new ol.source.Vector();
  const panes = {};
  for (const pane of ["t1", "t2"]) {
    const image = new ol.layer.Tile({ source: tiles(imageUrl(config[pane])) });
    const probability = new ol.layer.Tile({ source: tiles(probabilityUrl()), opacity: 0.5 });
    const vectors = new ol.layer.Vector({ source: features, style: featureStyle });
    const cursor = new ol.layer.Vector({ source: new ol.source.Vector(), style: cursorStyle() });
    const grid = new ol.layer.Vector({ source: cells, style: cellStyle });
    const layers = [image, probability, grid, vectors, cursor];
    let compare = null;
    if (pane === "t1") {  // t2 imagery over t1, shown by swipe or flicker
      compare = new ol.layer.Tile({ source: tiles(imageUrl(config.t2)), visible: false });
      compare.on("prerender", clipSwipe);
      compare.on("postrender", (event) => event.context.restore());
      layers.splice(1, 0, compare);
    }
    const map = new ol.Map({ target: `map-${pane}`, layers, view, controls: ol.control.defaults.defaults({ attribution: false }) });
    panes[pane] = { map, image, probability, vectors, cursor, compare };
  }
  state.panes = panes;
  state.view = view;
  state.features = features;
  state.cells = cells;
  state.tiles = tiles;
  state.imageUrl = imageUrl;
  state.probabilityUrl = probabilityUrl;
  mirrorCursor(panes.t1, panes.t2);
  mirrorCursor(panes.t2, panes.t1);
  setupRoles(config);
  setupInteractions();
  setupControls();
  setupKeys(config);
  await Promise.all([loadFeatures(), loadCells()]);
  restoreOps();
  sendOps();
  setInterval(sendOps, 2000);  // retries what could not be sent
  setInterval(refreshFeatures, 15000);  // another reviewer's changes
  window.addEventListener("beforeunload", (event) => {
    if (state.ops.length) { event.preventDefault(); event.returnValue = ""; }
  });
  view.fit(config.extent, { size: panes.t1.map.getSize() });
  state.refresh = refreshFeatures;
  window.review = state;  // for tests and the console
  state.ready = true;
}

function featureStyle(feature) {
  const status = feature.get("status");
  if (status === "deleted") return null;
  const current = state.current && feature.getId() === state.current;
  const colour = STYLE_COLOURS[status] || "#fff";
  return [
    new ol.style.Style({
      stroke: new ol.style.Stroke({ color: current ? "#ffffff" : colour, width: current ? 4 : 2,
                                    lineDash: status === "pending" ? [6, 4] : undefined }),
      fill: new ol.style.Fill({ color: status === "rejected" ? "rgba(255,64,64,0.12)" : "rgba(0,0,0,0)" }),
    }),
  ];
}

function cellStyle(cell) {
  const reviewed = cell.get("reviewed");
  return new ol.style.Style({
    stroke: new ol.style.Stroke({ color: reviewed ? "rgba(80,220,120,0.8)" : "rgba(255,255,255,0.25)", width: 1 }),
    fill: new ol.style.Fill({ color: reviewed ? "rgba(80,220,120,0.12)" : "rgba(0,0,0,0)" }),
  });
}

async function loadCells() {
  const grid = await (await fetch("/api/cells")).json();
  const [left, top] = state.config.origin;
  const step = grid.cell_px * state.config.resolutions[state.config.resolutions.length - 1];
  const [, bottom, right] = state.config.extent;
  const reviewed = new Set(grid.reviewed.map(([row, col]) => `${row}:${col}`));
  state.cellGrid = grid;
  for (let row = 0; row < grid.rows; row += 1) {
    for (let col = 0; col < grid.cols; col += 1) {
      const extent = [left + col * step, Math.max(bottom, top - (row + 1) * step),
                      Math.min(right, left + (col + 1) * step), top - row * step];
      const cell = new ol.Feature({ geometry: ol.geom.Polygon.fromExtent(extent), row, col,
                                    reviewed: reviewed.has(`${row}:${col}`) });
      cell.setId(`${row}:${col}`);
      state.cells.addFeature(cell);
    }
  }
  updateStatus();
}

function toggleCell(at) {
  const point = at || state.pointer;
  if (!point || !state.cellGrid) { say("move the pointer over a cell first"); return; }
  const [left, top] = state.config.origin;
  const step = state.cellGrid.cell_px * state.config.resolutions[state.config.resolutions.length - 1];
  const cell = state.cells.getFeatureById(`${Math.floor((top - point[1]) / step)}:${Math.floor((point[0] - left) / step)}`);
  if (!cell) return;
  cell.set("reviewed", !cell.get("reviewed"));
  enqueue({ kind: "cell", row: cell.get("row"), col: cell.get("col"), body: { reviewed: cell.get("reviewed") } });
}

function cursorStyle() {
  return new ol.style.Style({
    image: new ol.style.RegularShape({ points: 4, radius: 10, radius2: 0, angle: Math.PI / 4,
                                       stroke: new ol.style.Stroke({ color: "#ff0", width: 2 }) }),
  });
}

function mirrorCursor(from, to) {
  from.map.on("pointermove", (event) => {
    state.pointer = event.coordinate;
    const source = to.cursor.getSource();
    source.clear();
    source.addFeature(new ol.Feature(new ol.geom.Point(event.coordinate)));
    from.cursor.getSource().clear();
  });
  from.map.getViewport().addEventListener("mouseleave", () => to.cursor.getSource().clear());
}

function clipSwipe(event) {
  const context = event.context;
  const size = state.panes.t1.map.getSize();
  const fraction = document.getElementById("swipe-on").checked && !state.flicker
    ? Number(document.getElementById("swipe").value) / 100 : 1;
  const [x0, y0] = ol.render.getRenderPixel(event, [0, 0]);
  const [x1, y1] = ol.render.getRenderPixel(event, [size[0] * fraction, size[1]]);
  context.save();
  context.beginPath();
  context.rect(x0, y0, x1 - x0, y1 - y0);
  context.clip();
}

function setupRoles(config) {
  for (const pane of ["t1", "t2"]) {
    const select = document.getElementById(`role-${pane}`);
    for (const role of config.images) {
      const option = new Option(`${role} (${config.sensors[role] || "?"})`, role, role === config[pane], role === config[pane]);
      select.add(option);
    }
    select.addEventListener("change", () => {
      state.panes[pane].image.setSource(state.tiles(state.imageUrl(select.value)));
      if (pane === "t2") state.panes.t1.compare.setSource(state.tiles(state.imageUrl(select.value)));
    });
  }
}

// ---- features, queue and the persistent operation queue ----

async function loadFeatures() {
  const [collection, queue] = await Promise.all([
    (await fetch("/api/features")).json(), (await fetch("/api/queue")).json(),
  ]);
  const format = new ol.format.GeoJSON();
  state.features.clear();
  state.features.addFeatures(format.readFeatures(collection));
  state.queue = queue;
  updateStatus();
}

async function refreshFeatures() {
  if (state.ops.length || state.mode) return;  // never under the reviewer's own pending or ongoing edits
  const collection = await (await fetch("/api/features")).json();
  for (const geojson of collection.features) {
    const local = state.features.getFeatureById(geojson.id);
    if (!local || geojson.properties.version > local.get("version")) applyServer(geojson);
  }
  updateStatus();
}

function applyServer(geojson) {
  const format = new ol.format.GeoJSON();
  const incoming = format.readFeature(geojson);
  const existing = state.features.getFeatureById(incoming.getId());
  if (existing) {
    existing.setProperties(incoming.getProperties(), true);
    existing.setGeometry(incoming.getGeometry());
    existing.changed();
  } else {
    state.features.addFeature(incoming);
  }
}

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return "xxxxxxxx-xxxx-4xxx-8xxx-xxxxxxxxxxxx".replace(/x/g, () => Math.floor(Math.random() * 16).toString(16));
}

// An update is made on the version the reviewer saw: the feature's acknowledged version plus the edits of
// it still queued. When one is refused as a conflict, the later edits of that feature in the queue are
// dropped with it (they build on it), so none is applied over another reviewer's change.
function enqueue(op) {
  op.op_id = newId();
  if (op.kind === "update") {
    const feature = state.features.getFeatureById(op.uuid);
    const queued = state.ops.filter((other) => other.uuid === op.uuid).length;
    op.version = (feature ? feature.get("version") || 0 : 0) + queued;
  }
  state.ops.push(op);
  saveOps();
  updateStatus();
  sendOps();
}

// The queue is kept in localStorage too, so a closed or crashed page sends it when opened again.
function opsKey() {
  return `changeflow-review:${state.config.group}:${state.config.provenance.run_id || ""}`;
}

function saveOps() {
  try {
    if (state.ops.length) localStorage.setItem(opsKey(), JSON.stringify(state.ops));
    else localStorage.removeItem(opsKey());
  } catch (error) {
    say(`cannot keep unsaved edits in this browser (${error.message})`);
  }
}

function restoreOps() {
  const kept = JSON.parse(localStorage.getItem(opsKey()) || "[]");
  if (kept.length) {
    state.ops.push(...kept);
    say(`${kept.length} unsaved edit(s) from an earlier visit restored; sending`);
  }
}

async function sendOps() {
  if (state.sending) return;
  state.sending = true;
  try {
    while (state.ops.length) {
      const op = state.ops[0];
      const feature = state.features.getFeatureById(op.uuid);
      let response;
      try {
        if (op.kind === "add") {
          response = await write("POST", "/api/features", { ...op.body, uuid: op.uuid, op_id: op.op_id });
        } else if (op.kind === "cell") {
          response = await write("PUT", `/api/cells/${op.row}/${op.col}`, { ...op.body, op_id: op.op_id });
        } else {
          response = await write("PATCH", `/api/features/${op.uuid}`, { ...op.body, version: op.version, op_id: op.op_id });
        }
      } catch (error) {
        state.failing = true;
        say(`not saved yet (${error.message}); retrying`);
        return;  // network down: keep the queue, retry later
      }
      const answer = await response.json().catch(() => ({ detail: response.statusText }));
      if (response.ok) {
        if (op.kind !== "cell") applyServer(answer);
        if (state.failing) say("");  // the retry notice is over; other messages stay
        state.failing = false;
      } else if (response.status === 409) {
        applyServer(answer.current);
        state.undo = state.undo.filter((step) => step.uuid !== op.uuid);  // that history is superseded
        const later = state.ops.slice(1).filter((other) => other.uuid === op.uuid).length;
        state.ops = [op, ...state.ops.slice(1).filter((other) => other.uuid !== op.uuid)];
        say(`conflict: ${answer.current.properties.reviewer || "someone"} changed this feature first; their version is shown, yours was not applied${later ? ` (nor ${later} later edit(s) of it)` : ""}`);
      } else if (response.status >= 500) {
        state.failing = true;
        say(`server error ${response.status}; retrying`);
        return;
      } else if (response.status === 403 && await renewToken()) {
        continue;  // the server was restarted (a new launch token): send the same edit again
      } else {
        say(`refused (${response.status}): ${answer.detail}`);
        if (op.kind === "add" && feature && !feature.get("version")) state.features.removeFeature(feature);
        if (op.kind === "update") await reloadFeature(op.uuid);  // undo the page's optimistic change
      }
      state.ops.shift();
      saveOps();
      updateStatus();
    }
  } finally {
    state.sending = false;
    updateStatus();
  }
}

async function renewToken() {
  const config = await (await fetch("/api/config")).json();
  if (config.token === state.config.token) return false;
  state.config.token = config.token;
  return true;
}

async function reloadFeature(uuid) {
  const response = await fetch(`/api/features/${uuid}`);
  if (response.ok) applyServer(await response.json());
}

function write(method, url, body) {
  return fetch(url, {
    method, body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Review-Token": state.config.token },
  });
}

function geometryJson(geometry) {
  return new ol.format.GeoJSON().writeGeometryObject(geometry);
}

function selected() {
  const picked = state.select.getFeatures().item(0);
  if (picked) return picked;
  return state.current ? state.features.getFeatureById(state.current) : null;
}

function setStatus(feature, status) {
  if (!feature) { say("no candidate or feature selected"); return; }
  const before = feature.get("status");
  if (before === status) return;
  state.undo.push({ uuid: feature.getId(), status: before });
  feature.set("status", status);
  enqueue({ kind: "update", uuid: feature.getId(), body: { status } });
}

function act(status) {
  const feature = selected();
  if (feature && feature.get("source") === "reviewer") {
    setStatus(feature, status === "rejected" ? "deleted" : "added");
  } else {
    setStatus(feature, status);
  }
}

function addFeature(geometry) {
  const uuid = newId();
  const feature = new ol.Feature({ geometry, status: "added", source: "reviewer", version: 0 });
  feature.setId(uuid);
  state.features.addFeature(feature);
  state.undo.push({ uuid, created: true });
  const featureClass = Number(document.getElementById("class").value);
  enqueue({ kind: "add", uuid, body: { geometry: geometryJson(geometry), class: featureClass } });
}

function undo() {
  const step = state.undo.pop();
  if (!step) { say("nothing to undo"); return; }
  const feature = state.features.getFeatureById(step.uuid);
  if (!feature) return;
  const body = {};
  if (step.geometry) { feature.setGeometry(new ol.format.GeoJSON().readGeometry(step.geometry)); body.geometry = step.geometry; }
  if (step.featureClass !== undefined) body.class = step.featureClass;
  if (step.created) {
    body.status = "deleted";  // undoing a draw
  } else if (step.status) {
    body.status = step.status;
  }
  feature.set("status", body.status || feature.get("status"));
  enqueue({ kind: "update", uuid: step.uuid, body });
}

function goTo(offset) {
  if (!state.queue.length) { say("no candidates"); return; }
  const size = state.queue.length;
  let index = (state.index + offset + size) % size;
  if (offset > 0) {  // forward: the next candidate still pending, if any is
    for (let step = 0; step < size; step += 1) {
      const candidate = state.features.getFeatureById(state.queue[(index + step) % size]);
      if (candidate && candidate.get("status") === "pending") { index = (index + step) % size; break; }
    }
  }
  state.index = index;
  state.current = state.queue[state.index];
  const feature = state.features.getFeatureById(state.current);
  state.select.getFeatures().clear();
  if (feature) {
    const finest = state.config.resolutions[state.config.resolutions.length - 1];
    state.view.fit(ol.extent.buffer(feature.getGeometry().getExtent(), 40 * finest),
                   { minResolution: finest / 2, duration: 0 });
  }
  document.getElementById("comment").value = feature ? feature.get("comment") || "" : "";
  state.features.changed();
  updateStatus();
}

// ---- interactions ----

function setupInteractions() {
  const t1 = state.panes.t1.map;
  state.select = new ol.interaction.Select({ layers: [state.panes.t1.vectors], hitTolerance: 4 });
  state.modify = new ol.interaction.Modify({ features: state.select.getFeatures() });
  state.snap = new ol.interaction.Snap({ source: state.features });
  state.draw = new ol.interaction.Draw({ type: "Polygon" });
  state.modify.on("modifystart", (event) => {
    event.features.forEach((f) => state.undo.push({ uuid: f.getId(), status: f.get("status"), geometry: geometryJson(f.getGeometry()) }));
  });
  state.modify.on("modifyend", (event) => {
    event.features.forEach((f) => {
      if (f.get("source") === "detection") f.set("status", "edited");
      enqueue({ kind: "update", uuid: f.getId(), body: { geometry: geometryJson(f.getGeometry()) } });
    });
  });
  state.draw.on("drawend", (event) => { addFeature(event.feature.getGeometry()); setMode(null); });
  t1.addInteraction(state.select);
  t1.on("singleclick", async (event) => {
    if (state.mode !== "grow") return;
    const [x, y] = event.coordinate;
    const response = await fetch(`/api/grow?x=${x}&y=${y}&threshold=${state.threshold}`);
    const answer = await response.json();
    if (!response.ok) { say(answer.detail); return; }
    addFeature(new ol.format.GeoJSON().readGeometry(answer.geometry));
    say(`grown: ${answer.n_pixels} px, mean probability ${answer.mean_prob.toFixed(2)}${answer.clipped ? " (cut at the read window)" : ""}`);
    setMode(null);
  });
}

function setMode(mode) {
  const t1 = state.panes.t1.map;
  for (const interaction of [state.draw, state.modify, state.snap]) t1.removeInteraction(interaction);
  state.mode = state.mode === mode ? null : mode;
  if (state.mode === "draw") { t1.addInteraction(state.draw); t1.addInteraction(state.snap); }
  if (state.mode === "edit") { t1.addInteraction(state.modify); t1.addInteraction(state.snap); }
  for (const name of ["draw", "edit", "grow"]) document.getElementById(name).classList.toggle("active", state.mode === name);
}

function setupControls() {
  const on = (id, handler) => document.getElementById(id).addEventListener("click", handler);
  on("next", () => goTo(1));
  on("prev", () => goTo(-1));
  on("accept", () => act("accepted"));
  on("reject", () => act("rejected"));
  on("delete", () => act("rejected"));
  on("undo", undo);
  on("cell", () => toggleCell(state.view.getCenter()));
  on("draw", () => setMode("draw"));
  on("edit", () => setMode("edit"));
  on("grow", () => setMode("grow"));
  const rerender = () => state.panes.t1.map.render();
  document.getElementById("swipe-on").addEventListener("change", (event) => {
    state.panes.t1.compare.setVisible(event.target.checked || state.flicker);
  });
  document.getElementById("swipe").addEventListener("input", rerender);
  const opacity = document.getElementById("prob-opacity");
  opacity.addEventListener("input", () => {
    for (const pane of Object.values(state.panes)) pane.probability.setOpacity(Number(opacity.value) / 100);
  });
  const threshold = document.getElementById("prob-threshold");
  threshold.value = Math.round(state.config.threshold * 100);
  document.getElementById("threshold-value").textContent = state.config.threshold.toFixed(2);
  threshold.addEventListener("change", () => {
    state.threshold = Number(threshold.value) / 100;
    document.getElementById("threshold-value").textContent = state.threshold.toFixed(2);
    for (const pane of Object.values(state.panes)) pane.probability.getSource().setUrl(state.probabilityUrl());
  });
  document.getElementById("class").addEventListener("change", (event) => {
    const feature = selected();
    if (!feature || Number(event.target.value) === feature.get("class")) return;
    state.undo.push({ uuid: feature.getId(), status: feature.get("status"), featureClass: feature.get("class") });
    feature.set("class", Number(event.target.value));
    enqueue({ kind: "update", uuid: feature.getId(), body: { class: Number(event.target.value) } });
  });
  document.getElementById("comment").addEventListener("change", (event) => {
    const feature = selected();
    if (!feature || event.target.value === feature.get("comment")) return;
    feature.set("comment", event.target.value);
    enqueue({ kind: "update", uuid: feature.getId(), body: { comment: event.target.value } });
  });
  document.getElementById("prob-on").addEventListener("change", (event) => {
    for (const pane of Object.values(state.panes)) pane.probability.setVisible(event.target.checked);
  });
}

function setupKeys(config) {
  const list = document.getElementById("keys");
  for (const [key, meaning] of Object.entries(config.keys)) {
    list.insertAdjacentHTML("beforeend", "<dt></dt><dd></dd>");
    list.lastElementChild.previousElementSibling.textContent = key;
    list.lastElementChild.textContent = meaning;
  }
  const toggle = (id) => { const box = document.getElementById(id); box.checked = !box.checked; box.dispatchEvent(new Event("change")); };
  const actions = {
    a: () => act("accepted"), r: () => act("rejected"), n: () => goTo(1), p: () => goTo(-1),
    d: () => setMode("draw"), e: () => setMode("edit"), g: () => setMode("grow"), z: undo,
    Delete: () => act("rejected"), Escape: () => { state.draw.abortDrawing(); setMode(null); },
    s: () => toggle("swipe-on"), o: () => toggle("prob-on"), c: () => toggleCell(),
  };
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT" && event.target.type !== "range" && event.target.type !== "checkbox") return;
    if (event.key === "f" && !event.repeat) { state.flicker = true; state.panes.t1.compare.setVisible(true); rerenderAll(); return; }
    const action = actions[event.key] || (event.key === "z" && (event.ctrlKey || event.metaKey) ? undo : null);
    if (action) { event.preventDefault(); action(); }
  });
  document.addEventListener("keyup", (event) => {
    if (event.key !== "f") return;
    state.flicker = false;
    state.panes.t1.compare.setVisible(document.getElementById("swipe-on").checked);
    rerenderAll();
  });
}

function rerenderAll() { for (const pane of Object.values(state.panes)) pane.map.render(); }

function say(text) { document.getElementById("message").textContent = text; }

function updateStatus() {
  const candidates = state.features.getFeatures().filter((f) => f.get("source") === "detection");
  const reviewed = candidates.filter((f) => f.get("status") !== "pending").length;
  const cells = state.cells ? state.cells.getFeatures() : [];
  const done = cells.filter((c) => c.get("reviewed")).length;
  document.getElementById("progress").textContent = `reviewed ${reviewed} / ${candidates.length}`;
  document.getElementById("cells").textContent = `cells ${done} / ${cells.length}`;
  const unsaved = document.getElementById("unsaved");
  unsaved.textContent = state.ops.length ? `${state.ops.length} unsaved` : "all saved";
  unsaved.className = state.ops.length ? "unsaved" : "saved";
  const feature = state.current && state.features.getFeatureById(state.current);
  document.getElementById("candidate").textContent = feature
    ? `candidate ${state.index + 1} / ${state.queue.length}: ${feature.get("status")}, p̄ ${Number(feature.get("mean_prob")).toFixed(2)}`
    : "candidate –";
}

main().catch((error) => { say(`failed to start: ${error}`); throw error; });
