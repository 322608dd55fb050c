// The dashboard: ask for images, watch every job change live (one event stream), look at a
// job in detail, and keep an eye on the queue. Plain DOM, no framework, no build step.

import { api, ApiError, apiKey, nextPage, rememberKey } from "./api.js";
import { Feed } from "./feed.js";

const TERMINAL = new Set(["completed", "failed", "canceled"]);
const PAGE_SIZE = 30;

const $ = (testid, root = document) => root.querySelector(`[data-testid="${testid}"]`);

const jobs = new Map(); // jobId -> the job as last seen
const cards = new Map(); // jobId -> its <li>
const list = { oldest: null, next: null, loaded: false, loading: false };
let detailId = null;
let opener = null;

// Small helpers

function element(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "testid") node.dataset.testid = value;
    else if (name === "text") node.textContent = value;
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function age(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "none waiting";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

// A timestamp in microseconds: the server's order is finer than Date's milliseconds.
function micros(iso) {
  const fraction = (iso.match(/\.(\d+)/) || ["", ""])[1].padEnd(6, "0");
  return Date.parse(iso) * 1000 + Number(fraction.slice(3, 6));
}

// Newest first: by createdAt, then jobId, as GET /generations orders them.
function olderThan(a, b) {
  const ta = micros(a.createdAt);
  const tb = micros(b.createdAt);
  return ta < tb || (ta === tb && a.jobId < b.jobId);
}

// Whether `incoming` is at least as recent as `known` (events and pages may cross).
function supersedes(incoming, known) {
  if (TERMINAL.has(known.status) && !TERMINAL.has(incoming.status)) return false;
  const ti = micros(incoming.updatedAt);
  const tk = micros(known.updatedAt);
  return ti > tk || (ti === tk && incoming.imageUrls.length >= known.imageUrls.length);
}

// The job list

function thumbnails(strip, job) {
  const images = strip.querySelectorAll("img");
  for (let i = images.length; i < job.imageUrls.length; i += 1) {
    const img = element("img", {
      testid: "job-image",
      src: job.imageUrls[i],
      alt: `${job.animal}, image ${i + 1} of ${job.numImages}`,
      width: 48,
      height: 48,
      loading: "lazy",
      decoding: "async",
    });
    const slot = strip.querySelector(".slot");
    if (slot) slot.replaceWith(img);
    else strip.append(img);
  }
  const slots = strip.querySelectorAll(".slot").length;
  const wanted = TERMINAL.has(job.status) ? 0 : job.numImages - job.imageUrls.length;
  for (let i = slots; i < wanted; i += 1) strip.append(element("span", { className: "slot", "aria-hidden": "true" }));
  for (const extra of [...strip.querySelectorAll(".slot")].slice(wanted)) extra.remove();
}

function fillCard(li, job) {
  li.dataset.status = job.status;
  const badge = li.querySelector(".badge");
  badge.className = `badge ${job.status}`;
  badge.textContent = job.status;
  li.querySelector(".attempts").textContent = `attempts ${job.attempts}`;
  const time = li.querySelector("time");
  time.dateTime = job.createdAt;
  time.textContent = age(job.createdAt);
  li.querySelector(".count").textContent = `${job.imageUrls.length}/${job.numImages} images`;
  const reason = li.querySelector(".reason");
  reason.textContent = job.error || "";
  reason.hidden = !job.error;
  thumbnails(li.querySelector(".strip"), job);
}

function newCard(job) {
  const open = element("button", { type: "button", className: "open", testid: "open-job" }, [
    element("span", { className: "animal", text: job.animal }),
    element("span", { className: "badge" }),
    element("span", { className: "meta" }, [
      element("span", { className: "count" }),
      " · ",
      element("span", { className: "attempts" }),
      " · ",
      element("time"),
    ]),
    element("span", { className: "reason" }),
  ]);
  open.setAttribute("aria-label", `Open the ${job.animal} job`);
  open.addEventListener("click", () => openDetail(job.jobId, open));
  const li = element("li", { className: "job", testid: "job" }, [
    open,
    element("div", { className: "strip", role: "group", "aria-label": "Images" }),
  ]);
  li.dataset.jobId = job.jobId;
  fillCard(li, job);
  return li;
}

function place(li, job) {
  const container = $("job-list");
  for (const other of container.children) {
    if (olderThan(jobs.get(other.dataset.jobId), job)) {
      container.insertBefore(li, other);
      return;
    }
  }
  container.append(li);
}

// A job as the API or the stream gave it: update its card, or add one where it belongs.
// A job older than every job loaded is left for the page that will bring it (scrolling).
function upsert(job, { fromPage = false } = {}) {
  const known = jobs.get(job.jobId);
  if (known && !supersedes(job, known)) return;
  const li = cards.get(job.jobId);
  if (!li && !fromPage && list.next !== null && list.oldest && olderThan(job, list.oldest)) return;
  jobs.set(job.jobId, job);
  if (li) {
    fillCard(li, job);
  } else {
    const card = newCard(job);
    cards.set(job.jobId, card);
    place(card, job);
  }
  $("no-jobs").hidden = cards.size > 0;
  if (detailId === job.jobId) fillDetail(job);
}

async function loadPage(path) {
  if (list.loading) return;
  list.loading = true;
  $("loading").hidden = false;
  try {
    const { data, response } = await api(path);
    for (const job of data) upsert(job, { fromPage: true });
    if (data.length) list.oldest = data[data.length - 1];
    list.next = nextPage(response);
    list.loaded = true;
    $("no-jobs").hidden = cards.size > 0;
  } catch (error) {
    if (!needsKey(error)) showConnection("lost", `Could not load the jobs: ${error.message}`);
  } finally {
    list.loading = false;
    $("loading").hidden = true;
    $("load-more").hidden = list.next === null;
  }
  // A screen taller than the list: the end is still in view, and the observer will not
  // fire again until it leaves and comes back.
  if (list.next && $("load-more").getBoundingClientRect().top < innerHeight + 400) loadOlder();
}

function loadOlder() {
  if (list.next && !list.loading) loadPage(list.next);
}

// The detail view

function fillDetail(job) {
  const dialog = $("detail");
  dialog.dataset.jobId = job.jobId;
  dialog.dataset.status = job.status;
  const animal = job.animal.charAt(0).toUpperCase() + job.animal.slice(1);
  dialog.querySelector("#detail-title").textContent = `${animal}, ${job.numImages} image${job.numImages === 1 ? "" : "s"}`;
  const badge = $("detail-status");
  badge.className = `badge ${job.status}`;
  badge.textContent = job.status;
  $("detail-attempts").textContent = `attempts: ${job.attempts}`;
  $("detail-error").textContent = job.error ? `Error: ${job.error}` : "";
  $("cancel").hidden = TERMINAL.has(job.status);
  const images = $("detail-images");
  for (let i = images.children.length; i < job.imageUrls.length; i += 1) {
    images.append(
      element("img", {
        testid: "detail-image",
        src: job.imageUrls[i],
        alt: `${job.animal}, image ${i + 1} of ${job.numImages}`,
        width: 512,
        height: 512,
      }),
    );
  }
  const times = $("detail-times");
  times.replaceChildren(
    ...[
      ["Created", job.createdAt],
      ["Started", job.startedAt],
      ["Updated", job.updatedAt],
      ["Finished", job.finishedAt],
    ].flatMap(([name, iso]) => [element("dt", { text: name }), element("dd", { text: when(iso) })]),
  );
  $("detail-json").textContent = JSON.stringify(job, null, 2);
  if (dialog.open) loadHistory(job.jobId);
}

function describe(event) {
  const data = event.data || {};
  switch (event.type) {
    case "created":
      return "created";
    case "started":
      return `attempt ${data.attempt ?? ""} started`;
    case "progress":
      return data.image !== undefined ? `image ${Number(data.image) + 1} stored` : "progress";
    case "retrying":
      return `attempt failed, retrying: ${data.error ?? ""}`;
    case "failed":
      return `failed: ${data.error ?? ""}`;
    default:
      return event.type;
  }
}

let historyFor = null;
async function loadHistory(jobId) {
  historyFor = jobId;
  try {
    const { data } = await api(`/generations/${jobId}/history`);
    if (historyFor !== jobId) return;
    $("detail-history").replaceChildren(
      ...data.map((event) =>
        element("li", {}, [element("time", { dateTime: event.at, text: when(event.at) }), ` ${describe(event)}`]),
      ),
    );
  } catch {
    // the history is a nicety: the job itself is shown either way
  }
}

function openDetail(jobId, from) {
  const dialog = $("detail");
  detailId = jobId;
  opener = from;
  $("detail-images").replaceChildren();
  $("detail-history").replaceChildren();
  $("cancel-error").textContent = "";
  dialog.showModal();
  fillDetail(jobs.get(jobId));
  $("close").focus();
}

function closeDetail() {
  detailId = null;
  historyFor = null;
  if (opener) opener.focus();
}

async function cancelShown() {
  const jobId = detailId;
  const button = $("cancel");
  button.disabled = true;
  $("cancel-error").textContent = "";
  try {
    const { data } = await api(`/generations/${jobId}/cancel`, { method: "POST" });
    upsert(data);
  } catch (error) {
    if (!needsKey(error)) $("cancel-error").textContent = error.message;
  } finally {
    button.disabled = false;
  }
}

// The form

async function submitJob(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const error = $("form-error");
  const raw = $("num-images").value.trim();
  const numImages = raw === "" ? null : Number.isNaN(Number(raw)) ? raw : Number(raw);
  const body = { numImages };
  const animal = $("animal").value;
  if (animal) body.animal = animal;
  const button = $("submit");
  button.disabled = true;
  error.textContent = "";
  try {
    const { data } = await api("/generations", { method: "POST", body });
    upsert(data, { fromPage: true });
  } catch (problem) {
    if (!needsKey(problem)) error.textContent = problem.message;
    form.querySelector("#num-images").focus();
  } finally {
    button.disabled = false;
  }
}

async function loadForm() {
  try {
    const [{ data: animals }, { data: openapi }] = await Promise.all([api("/animals"), api("/openapi.json")]);
    const select = $("animal");
    for (const animal of animals) select.append(element("option", { value: animal, text: animal }));
    const max = openapi.components.schemas.GenerationRequest.properties.numImages.maximum;
    if (max) {
      $("num-images").max = String(max);
      document.querySelector("[data-max]").textContent = String(max);
    }
  } catch (error) {
    needsKey(error);
  }
}

// The queue strip

let queueTimer = null;
let queueDue = 0;
async function refreshQueue() {
  queueDue = Date.now() + 10000;
  try {
    const { data } = await api("/queue");
    // Generations of every provider: generate (the local renderer), generate-openai, ...
    const generate = { pending: 0, processing: 0, longestWaitSeconds: null };
    for (const kind of data.kinds) {
      if (kind.kind !== "generate" && !kind.kind.startsWith("generate-")) continue;
      generate.pending += kind.pending;
      generate.processing += kind.processing;
      if (kind.longestWaitSeconds !== null) {
        generate.longestWaitSeconds = Math.max(generate.longestWaitSeconds ?? 0, kind.longestWaitSeconds);
      }
    }
    $("queue-pending").textContent = String(generate.pending);
    $("queue-processing").textContent = String(generate.processing);
    $("queue-wait").textContent = duration(generate.longestWaitSeconds);
    const workers = $("workers");
    workers.textContent = String(data.workers.length);
    workers.title = data.workers.map((worker) => `${worker.id}: ${worker.running}/${worker.concurrency} running`).join("\n");
    const failures = data.failuresLastHour;
    $("queue-failures").textContent = `${failures.failed} failed, ${failures.retrying} retrying`;
    document.querySelector(".queue").hidden = false;
  } catch (error) {
    if (error.status === 403) document.querySelector(".queue").hidden = true;
  }
}

// At most once a second, after changes; every 10 s besides (workers change without events).
function queueSoon() {
  if (queueTimer !== null) return;
  queueTimer = setTimeout(() => {
    queueTimer = null;
    refreshQueue();
  }, 1000);
}

// The connection and the key

function showConnection(state, words) {
  const node = $("connection");
  node.className = `connection ${state}`;
  node.textContent = words;
}

let keyAsked = false;
function needsKey(error) {
  if (!(error instanceof ApiError) || error.status !== 401) return false;
  const refused = apiKey();
  rememberKey(null);
  askForKey(refused ? `That key was not accepted: ${error.message}` : "");
  return true;
}

function askForKey(message = "") {
  keyAsked = true;
  feed.close();
  const form = $("key-form");
  form.hidden = false;
  document.querySelector("main").hidden = true;
  document.querySelector(".queue").hidden = true;
  showConnection("", "Waiting for a key");
  $("key-error").textContent = message;
  form.querySelector("input").focus();
}

// The stream's URL: with a key, a fresh short-lived token in it (EventSource cannot send the
// key itself); a server that asks for no key has no tokens to give (404).
async function streamUrl() {
  if (!apiKey()) return "/generations/events";
  try {
    const { data } = await api("/generations/events/token", { method: "POST" });
    return `/generations/events?token=${encodeURIComponent(data.token)}`;
  } catch (error) {
    if (error.status === 404) return "/generations/events";
    needsKey(error);
    throw error;
  }
}

const feed = new Feed({
  streamUrl,
  onState(state) {
    if (state === "live") showConnection("live", "Live");
    else showConnection("lost", "Lost the stream: reconnecting…");
  },
  onReady(resumed) {
    if (!resumed || !list.loaded) loadPage(`/generations?limit=${PAGE_SIZE}`);
    refreshQueue();
  },
  onJob(job) {
    upsert(job);
    queueSoon();
  },
});

async function start() {
  document.querySelector("main").hidden = false;
  $("key-form").hidden = true;
  keyAsked = false;
  await loadForm();
  if (keyAsked) return;
  feed.connect();
}

function wire() {
  $("new-job-form").addEventListener("submit", submitJob);
  $("load-more").addEventListener("click", loadOlder);
  $("cancel").addEventListener("click", cancelShown);
  $("close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("close", closeDetail);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    rememberKey($("key").value.trim());
    $("key").value = "";
    start();
  });
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) loadOlder();
  }, { rootMargin: "400px" }).observe($("load-more").parentElement);
  setInterval(() => {
    for (const li of cards.values()) {
      const time = li.querySelector("time");
      time.textContent = age(time.dateTime);
    }
    if (Date.now() > queueDue) refreshQueue();
  }, 5000);
}

wire();
start();
