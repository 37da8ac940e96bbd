// sdkit's page: plain JavaScript over sdkit's job API and A1111's lists. No framework, no build step, no network
// beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { page: 1, perPage: 12, init: null, job: null, events: null, previewStep: null };

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const detail = body && body.detail;
    const message = Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : (detail || text);
    throw new Error(`${response.status}: ${message}`);
  }
  return body;
}

function option(select, value, label) {
  const item = document.createElement("option");
  item.value = value;
  item.textContent = label || value;
  select.append(item);
}

async function loadLists() {
  const [models, samplers, schedules, options] = await Promise.all([
    api("/sdkit/v1/library/checkpoints"), api("/sdapi/v1/samplers"), api("/sdapi/v1/schedulers"), api("/sdapi/v1/options"),
  ]);
  models.forEach((m) => option($("model"), m.name, m.title));
  const current = models.find((m) => options.sd_model_checkpoint === m.title || options.sd_model_checkpoint === m.name);
  if (current) $("model").value = current.name;
  samplers.forEach((s) => option($("sampler"), s.name));
  $("sampler").value = samplers.some((s) => s.name === "DPM++ 2M") ? "DPM++ 2M" : samplers[0].name;
  schedules.forEach((s) => option($("schedule"), s.label));
  state.loras = await api("/sdkit/v1/library/loras");
}

function addLora(name, weight) {
  const row = document.createElement("div");
  row.className = "lora-row";
  const select = document.createElement("select");
  select.className = "lora-name";
  (state.loras || []).forEach((l) => option(select, l.name));
  if (name) select.value = name;
  const input = document.createElement("input");
  Object.assign(input, { className: "lora-weight", type: "number", step: "any", min: "-10", max: "10", value: weight ?? 1 });
  const remove = document.createElement("button");
  Object.assign(remove, { type: "button", textContent: "\u00d7", title: "remove" });
  remove.addEventListener("click", () => row.remove());
  row.append(select, input, remove);
  $("loras").append(row);
}

function setInit(init, label, src) {
  state.init = init;
  $("init-chosen").textContent = init ? label : "none";
  $("init-preview").hidden = !init;
  if (src) $("init-preview").src = src;
}

function recipe() {
  const body = {
    task: "generate", prompt: $("prompt").value, negative: $("negative").value, model: $("model").value,
    scheduler: $("sampler").value, schedule_type: $("schedule").value,
    steps: Number($("steps").value), cfg: Number($("cfg").value), seed: Number($("seed").value),
    width: Number($("width").value), height: Number($("height").value), num_images: Number($("num-images").value),
    lora: [...document.querySelectorAll(".lora-row")].map((row) => ({
      path: row.querySelector(".lora-name").value, weight: Number(row.querySelector(".lora-weight").value) })),
  };
  if (state.init) Object.assign(body, { init_image: state.init, strength: Number($("strength").value) });
  return body;
}

function showProgress(fraction, text) {
  const percent = Math.round(100 * Math.max(0, Math.min(1, fraction)));
  $("progress-fill").style.width = `${percent}%`;
  $("progress").setAttribute("aria-valuenow", String(percent));
  $("progress-text").textContent = text;
}

function follow(id) {
  if (state.events) state.events.close();
  state.job = id;
  state.previewStep = null;
  const events = new EventSource(`/sdkit/v1/jobs/${id}/events?preview=1`);
  state.events = events;
  events.addEventListener("progress", (e) => {
    const data = JSON.parse(e.data);
    const p = data.progress;
    if (data.status === "queued" || !p) {
      showProgress(0, `job ${id}: queued (${data.position} ahead)`);
      return;
    }
    showProgress(p.progress, `job ${id}: image ${p.image + 1}/${p.images}, step ${p.step}/${p.steps}`);
    if (p.preview_step !== null && p.preview_step !== state.previewStep) {
      state.previewStep = p.preview_step;
      $("preview").src = `/sdkit/v1/jobs/${id}/preview?step=${p.preview_step}&image=${p.image}`;
      $("preview").hidden = false;
      $("preview-box").hidden = false;
    }
  });
  events.addEventListener("done", (e) => {
    events.close();
    state.events = null;
    const job = JSON.parse(e.data);
    $("generate").disabled = false;
    showProgress(job.status === "done" ? 1 : 0, `job ${id}: ${job.status}${job.error ? ": " + job.error : ""}`);
    $("result").replaceChildren(...job.outputs.map((name) => {
      const img = document.createElement("img");
      img.src = `/sdkit/v1/gallery/image/${encodeURI(name)}`;
      img.alt = name;
      img.className = "result-image";
      img.dataset.name = name;
      return img;
    }));
    state.page = 1;
    loadGallery();
    loadQueue();
  });
}

async function generate(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  $("generate").disabled = true;
  try {
    const job = await api("/sdkit/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(recipe()) });
    showProgress(0, `job ${job.id}: queued`);
    follow(job.id);
    loadQueue();
  } catch (err) {
    $("form-error").textContent = err.message;
    $("generate").disabled = false;
  }
}

async function loadGallery() {
  const data = await api(`/sdkit/v1/gallery?page=${state.page}&per_page=${state.perPage}`);
  const pages = Math.max(1, Math.ceil(data.total / state.perPage));
  $("gallery-count").textContent = `(${data.total})`;
  $("gallery-page").textContent = `page ${state.page} of ${pages}`;
  $("gallery-prev").disabled = state.page <= 1;
  $("gallery-next").disabled = state.page >= pages;
  $("gallery").replaceChildren(...data.items.map((item) => {
    const button = document.createElement("button");
    button.className = "thumb";
    button.type = "button";
    button.dataset.name = item.name;
    button.title = item.name;
    const img = document.createElement("img");
    img.src = `/sdkit/v1/gallery/thumb/${encodeURI(item.name)}`;
    img.alt = item.name;
    img.loading = "lazy";
    button.append(img);
    button.addEventListener("click", () => openDetails(item.name));
    return button;
  }));
}

async function openDetails(name) {
  const info = await api(`/sdkit/v1/gallery/info/${encodeURI(name)}`);
  state.details = info;
  $("details-image").src = `/sdkit/v1/gallery/image/${encodeURI(name)}`;
  $("details-name").textContent = name;
  $("details-settings").textContent = info.parameters || "(no settings in this image)";
  $("again").disabled = !info.form;
  $("copy-done").textContent = "";
  $("details").showModal();
}

function fillForm(form) {
  const set = (id, value) => { if (value !== null && value !== undefined) $(id).value = value; };
  set("prompt", form.prompt); set("negative", form.negative); set("steps", form.steps); set("cfg", form.cfg);
  set("seed", form.seed); set("width", form.width); set("height", form.height);
  if (form.model) set("model", form.model);
  if (form.scheduler) set("sampler", form.scheduler);
  if (form.schedule_type) set("schedule", form.schedule_type);
  $("loras").replaceChildren();
  (form.lora || []).filter((l) => l.name).forEach((l) => addLora(l.name, l.weight));
  if (form.strength && state.init) set("strength", form.strength);
}

async function copySettings() {
  const text = state.details.parameters || "";
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {
    const area = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  $("copy-done").textContent = "copied";
}

async function loadQueue() {
  const data = await api("/sdkit/v1/jobs?limit=20");
  $("queue").querySelector("tbody").replaceChildren(...data.jobs.map((job) => {
    const row = document.createElement("tr");
    row.dataset.id = job.id;
    const percent = job.progress ? `${Math.round(100 * job.progress.progress)}%` : (job.status === "done" ? "100%" : "");
    for (const text of [job.id, job.task, job.status, percent]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    const cell = document.createElement("td");
    if (job.status === "queued" || job.status === "running") {
      const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
      cancel.addEventListener("click", async () => { await api(`/sdkit/v1/jobs/${job.id}`, { method: "DELETE" }); loadQueue(); });
      cell.append(cancel);
    }
    row.append(cell);
    return row;
  }));
}

function wire() {
  $("generate-form").addEventListener("submit", generate);
  $("add-lora").addEventListener("click", () => addLora());
  $("init-image").addEventListener("change", () => {
    const file = $("init-image").files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => setInit(reader.result, file.name, reader.result);
    reader.readAsDataURL(file);
  });
  $("clear-init").addEventListener("click", () => { $("init-image").value = ""; setInit(null); });
  $("gallery-prev").addEventListener("click", () => { state.page -= 1; loadGallery(); });
  $("gallery-next").addEventListener("click", () => { state.page += 1; loadGallery(); });
  $("again").addEventListener("click", () => {
    fillForm(state.details.form);
    $("details").close();
    $("generate-form").requestSubmit();
  });
  $("use-init").addEventListener("click", () => {
    const name = state.details.name;
    setInit(`gallery:${name}`, name, `/sdkit/v1/gallery/image/${encodeURI(name)}`);
    $("details").close();
  });
  $("copy").addEventListener("click", copySettings);
}

async function start() {
  wire();
  try {
    await loadLists();
    await Promise.all([loadGallery(), loadQueue()]);
    $("status-line").textContent = "ready";
  } catch (err) {
    $("status-line").textContent = `could not reach the server: ${err.message}`;
  }
  setInterval(() => loadQueue().catch(() => {}), 2000);
}

start();
