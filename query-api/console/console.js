// The storekeeper operator console. Every view is calls of the public
// APIs with the operator's token: the query API (this page's origin) and
// the command API (sign-in, forget). Nothing is rendered as HTML from
// data: elements are built with `el`, text set as text.
"use strict";

const session = {
  get token() { return sessionStorage.getItem("storekeeper.token"); },
  set token(value) { value ? sessionStorage.setItem("storekeeper.token", value) : sessionStorage.removeItem("storekeeper.token"); },
  get commandUrl() { return sessionStorage.getItem("storekeeper.command") || ""; },
  written: null,
  set commandUrl(value) { sessionStorage.setItem("storekeeper.command", value); },
};

const EVENT_TYPES = [
  "CustomerDeactivated", "CustomerEmailChanged", "CustomerForgotten", "CustomerRegistered", "CustomerShippingAddressUpdated",
  "OrderCancelled", "OrderConfirmed", "OrderDelivered", "OrderLineReserved", "OrderPaid", "OrderPlaced", "OrderRejected",
  "OrderReservationDiscarded", "OrderShipped", "ProductAdded", "ProductDetailsUpdated", "ProductDiscontinued", "ProductPriceChanged",
  "ProductRestocked", "StockReservationFailed", "StockReservationReleased", "StockReserved", "UniqueValueClaimed", "UniqueValueReleased",
];
const CATEGORIES = ["product", "customer", "order", "claim"];
const TAIL_ROWS = 200;

// ---- DOM -----------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Replaces `node`'s children, leaving out the absent ones.
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function field(label, control) {
  return el("label", {}, label, control);
}

function json(value) {
  return el("pre", { tabindex: "0" }, JSON.stringify(value, null, 2));
}

function say(text, bad) {
  const status = document.getElementById("status");
  status.textContent = text || "";
  status.className = bad ? "bad" : "";
}

function streamLink(streamId) {
  return el("a", { href: `#/stream/${encodeURIComponent(streamId)}` }, streamId);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function money(price) {
  if (!price) return "";
  try {
    const format = new Intl.NumberFormat(undefined, { style: "currency", currency: price.currency });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(price.amount_minor / 10 ** digits);
  } catch {
    return `${price.amount_minor} ${price.currency} (minor units)`;
  }
}

// ---- The APIs ------------------------------------------------------------

class Problem extends Error {
  constructor(status, body) {
    super(body && body.detail ? `${body.detail} (${body.code || status})` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function call(base, path, { method = "GET", body, headers = {} } = {}) {
  const sent = { ...headers };
  if (session.token) sent.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  const response = await fetch(base + path, { method, headers: sent, body: body === undefined ? undefined : JSON.stringify(body) });
  const type = response.headers.get("content-type") || "";
  const answer = type.includes("json") ? await response.json() : await response.text();
  if (response.status === 401 && session.token) {
    session.token = null;
    location.hash = "#/signin";
  }
  if (!response.ok) throw new Problem(response.status, answer);
  // A write's consistency token: the next read waits until the views
  // that serve it have applied the write (read-your-writes).
  const token = response.headers.get("x-consistency-token");
  if (token) session.written = token;
  return answer;
}

const query = (path, options) => call("", path, options);
const command = (path, options) => call(session.commandUrl, path, options);

async function defaultCommandUrl() {
  try {
    const settings = await query("/console/settings.json");
    // "/": the console's own origin (a gateway in front of both APIs).
    if (settings.command_url === "/") return location.origin;
    if (settings.command_url) return settings.command_url;
    const port = settings.command_port || 8080;
    return `${location.protocol}//${location.hostname}:${port}`;
  } catch {
    return `${location.protocol}//${location.hostname}:8080`;
  }
}

// A subscription to `/v1/events`, read with fetch (an EventSource cannot
// send the Authorization header). It reconnects after a failure with the
// last id it had, as an EventSource would, until `signal` aborts.
async function subscribe(path, onEvent, onState, signal) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${session.token}` };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch(path, { headers, signal });
      if (response.status === 401 || response.status === 403) {
        // A token that expired (or lost its role) is not worth retrying.
        session.token = null;
        location.hash = "#/signin";
        return;
      }
      if (!response.ok) throw new Problem(response.status, await response.json().catch(() => null));
      onState("live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = { id: null, type: "message", data: [] };
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const name = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (name === "id") event.id = text;
            else if (name === "event") event.type = text;
            else if (name === "data") event.data.push(text);
          }
          if (!event.data.length) continue;
          if (event.id) lastId = event.id;
          const data = JSON.parse(event.data.join("\n"));
          if (event.type === "end") { onState("ended"); return; }
          onEvent(data);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      onState(`reconnecting (${error.message})`);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// ---- Views ---------------------------------------------------------------

let disposers = [];
function onLeave(dispose) { disposers.push(dispose); }

function view(title, ...content) {
  const main = document.getElementById("main");
  fill(main, el("h1", {}, title), ...content);
  document.title = `${title} · storekeeper console`;
}

async function signIn() {
  document.getElementById("nav").hidden = true;
  const email = el("input", { type: "email", name: "email", autocomplete: "username", required: true, id: "email" });
  const password = el("input", { type: "password", name: "password", autocomplete: "current-password", required: true, id: "password" });
  const commandUrl = el("input", { type: "url", name: "command", id: "command-url", value: session.commandUrl || (await defaultCommandUrl()) });
  const form = el("form", { class: "signin", onsubmit: async (e) => {
    e.preventDefault();
    session.commandUrl = commandUrl.value.replace(/\/$/, "");
    say("Signing in…");
    try {
      const answer = await command("/v1/auth/token", { method: "POST", body: { email: email.value, password: password.value } });
      session.token = answer.access_token;
      say("");
      location.hash = "#/log";
    } catch (error) {
      say(`Sign-in failed: ${error.message}`, true);
    }
  } },
    field("Email", email), field("Password", password), field("Command API", commandUrl),
    el("button", { type: "submit", class: "primary" }, "Sign in"));
  view("Sign in as an operator", form);
  email.focus();
}

function tail() {
  const category = el("select", { id: "tail-category" }, el("option", { value: "" }, "all"), CATEGORIES.map((c) => el("option", { value: c }, c)));
  const type = el("select", { id: "tail-type" }, el("option", { value: "" }, "all"), EVENT_TYPES.map((t) => el("option", { value: t }, t)));
  const streamInput = el("input", { id: "tail-stream", placeholder: "product-…", size: 44 });
  const state = el("span", { class: "muted", id: "tail-state" }, "connecting");
  const pause = el("button", { type: "button", "aria-pressed": "false" }, "Pause");
  const body = el("tbody", { id: "tail-rows" });
  const table = el("table", {}, el("caption", { class: "muted" }, "Newest first; select a row for its data and metadata"),
    el("thead", {}, el("tr", {}, ["Position", "Recorded", "Stream", "Type", "Actor", "Correlation"].map((h) => el("th", { scope: "col" }, h)))), body);
  let paused = false;
  let controller = null;
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
  });
  const add = (event) => {
    if (paused) return;
    const details = el("tr", { hidden: true }, el("td", { colspan: "6" }, el("h3", {}, "data"), json(event.data), el("h3", {}, "metadata"), json(event.metadata)));
    const toggle = el("button", { type: "button", "aria-expanded": "false", onclick: () => {
      details.hidden = !details.hidden;
      toggle.setAttribute("aria-expanded", String(!details.hidden));
    } }, String(event.global_position));
    const row = el("tr", { "data-position": event.global_position, "data-type": event.event_type },
      el("td", { class: "num" }, toggle), el("td", {}, when(event.recorded_at)), el("td", {}, streamLink(event.stream_id)),
      el("td", {}, event.event_type), el("td", {}, event.metadata.actor),
      el("td", {}, el("a", { href: `#/correlation/${event.metadata.correlation_id}` }, "…" + event.metadata.correlation_id.slice(-12))));
    body.prepend(row, details);
    while (body.rows.length > TAIL_ROWS * 2) body.lastChild.remove();
  };
  const start = async () => {
    if (controller) controller.abort();
    controller = new AbortController();
    fill(body);
    const filters = new URLSearchParams();
    if (category.value) filters.set("category", category.value);
    if (type.value) filters.set("event_type", type.value);
    if (streamInput.value.trim()) filters.set("stream_id", streamInput.value.trim());
    try {
      // The last 25 positions, then live.
      const head = await headPosition();
      filters.set("from", String(Math.max(1, head - 24)));
    } catch (error) {
      say(error.message, true);
      return;
    }
    subscribe(`/v1/events?${filters}`, add, (s) => { state.textContent = s; }, controller.signal);
  };
  onLeave(() => controller && controller.abort());
  const form = el("form", { class: "bar", onsubmit: (e) => { e.preventDefault(); start(); } },
    field("Category", category), field("Event type", type), field("Stream", streamInput),
    el("button", { type: "submit" }, "Apply"), pause, state);
  view("The log, live", form, table);
  start();
}

async function headPosition() {
  const response = await fetch("/v1/events?from=head&until=head", { headers: { Authorization: `Bearer ${session.token}` } });
  if (!response.ok) throw new Problem(response.status, await response.json().catch(() => null));
  const text = await response.text();
  const match = /"head":\s*(\d+)/.exec(text);
  return match ? Number(match[1]) : 0;
}

const STATE_OF = { product: "products", customer: "customers", order: "orders" };

async function stream(streamId, fromVersion) {
  const category = streamId.split("-")[0];
  const page = await query(`/v1/streams/${encodeURIComponent(streamId)}/events?from_version=${encodeURIComponent(fromVersion)}&limit=50`);
  const rows = page.events.map((event) => el("tr", { "data-version": event.stream_version },
    el("td", { class: "num" }, event.stream_version), el("td", { class: "num" }, event.global_position),
    el("td", {}, event.event_type), el("td", {}, when(event.recorded_at)), el("td", {}, event.metadata.actor),
    el("td", {}, el("a", { href: `#/correlation/${event.metadata.correlation_id}` }, "correlation")),
    el("td", {}, el("details", {}, el("summary", {}, "data and metadata"), json(event.data), json(event.metadata)))));
  const pager = el("div", { class: "bar" },
    fromVersion > 0 ? el("a", { href: `#/stream/${encodeURIComponent(streamId)}?from=${Math.max(0, fromVersion - 50)}` }, "← earlier") : null,
    page.next_from_version !== null && page.next_from_version !== undefined
      ? el("a", { href: `#/stream/${encodeURIComponent(streamId)}?from=${page.next_from_version}` }, "later →") : null);
  const table = el("table", { id: "history" },
    el("thead", {}, el("tr", {}, ["Version", "Position", "Type", "Recorded", "Actor", "", "Event"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
  let travel = null;
  if (STATE_OF[category]) {
    const version = el("input", { type: "number", min: "0", id: "at-version", value: page.events.length ? page.events[page.events.length - 1].stream_version : 0 });
    const out = el("div", { id: "at-state" });
    travel = el("section", {}, el("h2", {}, "State at a version"),
      el("form", { class: "bar", onsubmit: async (e) => {
        e.preventDefault();
        try {
          const id = encodeURIComponent(streamId.slice(category.length + 1));
          fill(out, json(await query(`/v1/${STATE_OF[category]}/${id}/at?version=${encodeURIComponent(version.value)}`)));
        } catch (error) {
          fill(out, el("p", { class: "bad" }, error.message));
        }
      } }, field("Version", version), el("button", { type: "submit" }, "Show state")), out);
  }
  view(`Stream ${streamId}`, pager, table, travel);
}

async function correlation(id) {
  const entries = [];
  let cursor = "";
  do {
    const page = await query(`/v1/audit?correlation_id=${encodeURIComponent(id)}&limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    entries.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && entries.length < 5000);
  const byId = new Map(entries.map((e) => [e.event_id, { entry: e, children: [] }]));
  const roots = [];
  for (const node of byId.values()) {
    const parent = node.entry.causation_id && byId.get(node.entry.causation_id);
    (parent ? parent.children : roots).push(node);
  }
  const render = (nodes) => el("ul", {}, nodes.map((n) => el("li", { "data-type": n.entry.event_type },
    el("strong", {}, n.entry.event_type), " on ", streamLink(n.entry.stream_id),
    el("span", { class: "muted" }, ` v${n.entry.stream_version} · position ${n.entry.global_position} · ${n.entry.actor} · ${when(n.entry.recorded_at)}`),
    n.children.length ? render(n.children) : null)));
  const tree = render(roots);
  tree.className = "tree";
  tree.id = "causation-tree";
  view(`Correlation ${id}`, el("p", { class: "muted" }, `${entries.length} events; each under the event that caused it`), tree);
}

function number(value, digits = 0) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function projections() {
  const body = el("tbody", { id: "projection-rows" });
  const detail = el("section", { id: "projection-detail", "aria-live": "polite" });
  const table = el("table", {}, el("thead", {}, el("tr", {},
    ["Name", "Kind", "State", "Position", "Lag (events)", "Lag (s)", "Rate (events/s)", "ETA (s)", "Parked", "Last error", "Actions"]
      .map((h) => el("th", { scope: "col" }, h)))), body);
  // Rows are made once and their cells updated in place, so that a
  // refresh never takes a button away from under the pointer or the focus.
  const rows = new Map();
  const row = (p) => {
    const cells = {
      state: el("td", {}), position: el("td", { class: "num" }), lag_events: el("td", { class: "num" }),
      lag_seconds: el("td", { class: "num" }), rate: el("td", { class: "num" }), eta: el("td", { class: "num" }),
      parked: el("td", { class: "num" }), last_error: el("td", {}),
    };
    const tr = el("tr", { "data-name": p.name }, el("td", {}, p.name), el("td", {}, p.kind), cells.state, cells.position, cells.lag_events,
      cells.lag_seconds, cells.rate, cells.eta, cells.parked, cells.last_error,
      el("td", {}, el("div", { class: "bar" },
        el("button", { type: "button", onclick: () => showParked(p.name, detail) }, `Parked of ${p.name}`),
        p.kind === "read_model" ? el("button", { type: "button", onclick: () => rebuild(p.name, detail) }, `Rebuild ${p.name}`) : null,
        p.kind === "read_model" ? el("button", { type: "button", onclick: () => verify(p.name, detail) }, `Verify ${p.name}`) : null)));
    body.append(tr);
    return cells;
  };
  const refresh = async () => {
    try {
      const page = await query("/v1/projections");
      for (const p of page.items) {
        if (!rows.has(p.name)) rows.set(p.name, row(p));
        const cells = rows.get(p.name);
        cells.state.textContent = p.state;
        cells.state.className = p.state === "running" ? "ok" : "bad";
        cells.position.textContent = number(p.position);
        cells.lag_events.textContent = number(p.lag_events);
        cells.lag_seconds.textContent = number(p.lag_seconds, 1);
        cells.rate.textContent = number(p.events_per_second, 1);
        cells.eta.textContent = number(p.eta_seconds, 1);
        cells.parked.textContent = number(p.parked);
        cells.last_error.textContent = p.last_error || "";
      }
    } catch (error) {
      say(error.message, true);
    }
  };
  const timer = setInterval(refresh, 2000);
  onLeave(() => clearInterval(timer));
  view("Projections", table, detail);
  refresh();
}

async function showParked(name, detail) {
  const page = await query(`/v1/projections/${encodeURIComponent(name)}/parked?limit=500`);
  const retry = el("button", { type: "button", class: "primary", id: "retry-parked", onclick: async () => {
    try {
      const outcome = await query(`/v1/projections/${encodeURIComponent(name)}/retry`, { method: "POST" });
      say(`${name}: ${outcome.applied} applied, ${outcome.still_parked} still parked, ${outcome.discarded} dropped`);
      showParked(name, detail);
    } catch (error) {
      say(error.message, true);
    }
  } }, `Retry the parked events of ${name}`);
  fill(detail, el("h2", {}, `Parked events of ${name}`),
    page.items.length === 0 ? el("p", { id: "no-parked" }, "Nothing is parked.") : el("table", { id: "parked" },
      el("thead", {}, el("tr", {}, ["Position", "Stream", "Type", "Attempts", "Parked", "Error"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, page.items.map((p) => el("tr", {}, el("td", { class: "num" }, p.global_position), el("td", {}, streamLink(p.stream_id)),
        el("td", {}, p.event_type), el("td", { class: "num" }, p.attempts), el("td", {}, when(p.parked_at)), el("td", { class: "bad" }, p.error))))),
    page.items.length ? retry : null);
}

async function rebuild(name, detail) {
  const bar = el("progress", { max: "1", value: "0", id: "rebuild-progress", "aria-label": `Rebuild of ${name}` });
  const text = el("p", { id: "rebuild-state" }, "asking the workers…");
  fill(detail, el("h2", {}, `Rebuild of ${name}`), bar, text);
  try {
    let progress = await query(`/v1/projections/${encodeURIComponent(name)}/rebuild`, { method: "POST" });
    while (progress.requested) {
      bar.max = String(Math.max(1, progress.head));
      bar.value = String(progress.position || 0);
      text.textContent = progress.position === null ? "waiting for a worker to start it" : `at ${progress.position} of ${progress.head}`;
      // Once a second: a gateway's rate limit (100 a minute) stays clear.
      await new Promise((resolve) => setTimeout(resolve, 1000));
      progress = await query(`/v1/projections/${encodeURIComponent(name)}/rebuild`);
    }
    bar.max = "1";
    bar.value = "1";
    text.textContent = "Rebuilt and swapped in.";
  } catch (error) {
    text.textContent = error.message;
    text.className = "bad";
  }
}

async function verify(name, detail) {
  fill(detail, el("h2", {}, `Verifying ${name}`), el("p", {}, "folding the log beside the live tables…"));
  try {
    const found = await query(`/v1/projections/${encodeURIComponent(name)}/verify`);
    const v = found;
    fill(detail, el("h2", {}, `Verification of ${name}`),
      el("p", { id: "verify-result", class: found.matches ? "ok" : "bad" },
        found.matches ? `Matches the log: ${v.events} events folded up to position ${v.position}.` : `${v.differing_rows} rows differ.`),
      v.differences.length ? el("table", {}, el("thead", {}, el("tr", {}, ["Table", "Only in", "Row"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, v.differences.map((d) => el("tr", {}, el("td", {}, d.table), el("td", {}, d.only_in), el("td", {}, json(d.row)))))) : null);
  } catch (error) {
    fill(detail, el("p", { class: "bad" }, error.message));
  }
}

function productSearch() {
  const q = el("input", { type: "search", id: "search-q", name: "q" });
  const inStock = el("input", { type: "checkbox", id: "search-in-stock" });
  const facets = el("div", { class: "facets bar", role: "group", "aria-label": "Categories" });
  const results = el("div", { id: "search-results" });
  let category = "";
  const run = async () => {
    const params = new URLSearchParams({ limit: "50" });
    if (q.value.trim()) params.set("q", q.value.trim());
    if (category) params.set("category", category);
    if (inStock.checked) params.set("in_stock", "true");
    try {
      const found = await query(`/v1/search/products?${params}`);
      const counts = (found.facets && found.facets.category) || {};
      fill(facets, ...Object.entries(counts).map(([name, count]) => el("button", {
        type: "button", "aria-pressed": String(name === category),
        onclick: () => { category = category === name ? "" : name; run(); },
      }, `${name} (${count})`)));
      fill(results, el("p", { class: "muted" }, `${found.total} products`), el("table", {},
        el("thead", {}, el("tr", {}, ["Name", "SKU", "Category", "Price", "In stock"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, found.hits.map((hit) => el("tr", {},
          el("td", {}, el("a", { href: `#/stream/product-${hit.id}` }, hit.name)), el("td", {}, hit.sku), el("td", {}, hit.category),
          el("td", { class: "num" }, money(hit.price)), el("td", {}, hit.in_stock ? "yes" : "no"))))));
    } catch (error) {
      fill(results, el("p", { class: "bad" }, error.message));
    }
  };
  view("Product search", el("form", { class: "bar", role: "search", onsubmit: (e) => { e.preventDefault(); run(); } },
    field("Words", q), field("In stock only", inStock), el("button", { type: "submit", class: "primary" }, "Search")), facets, results);
  q.focus();
  run();
}

function customers(id) {
  const input = el("input", { id: "customer-id", size: 40, value: id || "", required: true, pattern: "[0-9a-fA-F-]{36}" });
  const out = el("section", { id: "customer" });
  const dialog = el("dialog", { id: "forget-dialog", "aria-labelledby": "forget-title" });
  const show = async (customerId) => {
    try {
      const headers = session.written ? { "X-Consistency-Token": session.written } : {};
      const customer = await query(`/v1/customers/${encodeURIComponent(customerId)}`, { headers });
      fill(out, el("h2", {}, customer.name), el("p", {}, customer.email, " · ", customer.status),
        el("p", {}, streamLink(`customer-${customer.id}`)),
        customer.status === "forgotten" ? null
          : el("button", { type: "button", class: "danger", id: "forget", onclick: () => dialog.showModal() }, "Forget this customer…"));
      fill(dialog, el("h2", { id: "forget-title" }, `Forget ${customer.name}?`),
        el("p", {}, "Their personal data is erased from every event for good (the key is destroyed); the log keeps the rest. This cannot be undone."),
        el("form", { method: "dialog", class: "bar" },
          el("button", { value: "cancel", id: "forget-cancel" }, "Cancel"),
          el("button", { value: "forget", class: "danger", id: "forget-confirm" }, "Forget")));
    } catch (error) {
      fill(out, el("p", { class: "bad" }, error.message));
    }
  };
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "forget") return;
    try {
      await command(`/v1/customers/${encodeURIComponent(input.value.trim())}/forget`, { method: "POST", body: {} });
      say("Forgotten.");
      show(input.value.trim());
    } catch (error) {
      say(error.message, true);
    }
  });
  view("Customers", el("form", { class: "bar", onsubmit: (e) => { e.preventDefault(); location.hash = `#/customers/${input.value.trim()}`; } },
    field("Customer id", input), el("button", { type: "submit" }, "Open")), out, dialog);
  if (id) show(id);
}

// ---- Routing -------------------------------------------------------------

async function route() {
  for (const dispose of disposers.splice(0)) dispose();
  say("");
  const hash = location.hash.replace(/^#/, "") || "/log";
  const [path, search = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (!session.token && parts[0] !== "signin") {
    location.hash = "#/signin";
    return;
  }
  const nav = document.getElementById("nav");
  nav.hidden = parts[0] === "signin";
  for (const link of nav.querySelectorAll("a")) {
    link.toggleAttribute("aria-current", link.getAttribute("href") === `#/${parts[0]}`);
    if (link.hasAttribute("aria-current")) link.setAttribute("aria-current", "page");
  }
  try {
    switch (parts[0]) {
      case "signin": return await signIn();
      case "log": return tail();
      case "stream": return await stream(parts[1], Number(new URLSearchParams(search).get("from") || 0));
      case "correlation": return await correlation(parts[1]);
      case "projections": return projections();
      case "search": return productSearch();
      case "customers": return customers(parts[1]);
      default: location.hash = "#/log";
    }
  } catch (error) {
    view("Something went wrong", el("p", { class: "bad" }, error.message));
  } finally {
    document.getElementById("main").focus({ preventScroll: true });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => {
    session.token = null;
    location.hash = "#/signin";
  });
  window.addEventListener("hashchange", route);
  route();
});
