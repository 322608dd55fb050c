// One EventSource for every change to the jobs (GET /generations/events). The browser
// reconnects by itself after a dropped connection, sending Last-Event-ID; but EventSource gives
// up for good on an answer that is not a 200 text/event-stream (a 503, an expired token): the
// feed then opens a new one after a pause, with ?lastEventId= the last event it applied. An
// event whose id is not above that one was applied already and is dropped.

export const CHANGES = ["created", "started", "progress", "retrying", "requeued", "completed", "failed", "canceled"];

export class Feed {
  // onJob(job, change): a job changed. onReady(resumed): the stream is open; resumed is false
  // when it starts from now (the page should read the jobs). onState("live" | "lost").
  // streamUrl(): a promise of the URL to open (a fresh token in it, when keys are required).
  constructor({ onJob, onReady, onState, streamUrl }) {
    this.onJob = onJob;
    this.onReady = onReady;
    this.onState = onState;
    this.streamUrl = streamUrl;
    this.lastApplied = null;
    this.refusals = 0;
    this.source = null;
    this.stopped = false;
  }

  async connect() {
    this.stopped = false;
    await this.open();
  }

  async open() {
    if (this.stopped) return;
    let url;
    try {
      url = new URL(await this.streamUrl(), location.href);
    } catch {
      if (this.stopped) return; // the page asked for a key instead
      this.onState("lost");
      this.retryLater();
      return;
    }
    if (this.lastApplied !== null) url.searchParams.set("lastEventId", String(this.lastApplied));
    const source = new EventSource(url.pathname + url.search);
    this.source = source;
    source.addEventListener("ready", (event) => {
      this.refusals = 0;
      if (this.lastApplied === null) this.lastApplied = Number(event.lastEventId);
      this.onState("live");
      this.onReady(JSON.parse(event.data).resumed);
    });
    for (const change of CHANGES) {
      source.addEventListener(change, (event) => this.apply(event));
    }
    source.addEventListener("error", () => {
      this.onState("lost");
      if (source.readyState === EventSource.CLOSED) this.retryLater();
    });
  }

  apply(event) {
    const id = Number(event.lastEventId);
    if (this.lastApplied !== null && id <= this.lastApplied) return;
    this.lastApplied = id;
    this.onJob(JSON.parse(event.data), event.type);
  }

  retryLater() {
    if (this.source) this.source.close();
    this.source = null;
    const pause = Math.min(10000, 500 * 2 ** this.refusals);
    this.refusals += 1;
    setTimeout(() => this.open(), pause);
  }

  close() {
    this.stopped = true;
    if (this.source) this.source.close();
    this.source = null;
  }
}
