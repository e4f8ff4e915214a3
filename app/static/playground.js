// The playground: write or pick a program, add images, run it asynchronously and show each step
// of its rationale as its event arrives. Everything it shows comes from this server's API; text
// from users and modules goes in as text, and HTML only as the server rendered (and escaped) it.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const program = $("program");
  const gutter = $("gutter");
  const diagnostics = $("diagnostics");
  const imagesList = $("images");
  const rationale = $("rationale");
  const runState = $("runstate");
  const keyed = document.body.dataset.keys === "yes";
  let key = sessionStorage.getItem("nsx-key") || "";
  // name → File or Blob: one image per program variable; each file's preview URL, revoked with it
  const images = new Map();
  const previews = new Map();
  let errorLines = new Map();

  function headers(extra) {
    const out = Object.assign({}, extra || {});
    if (key) out["X-API-Key"] = key;
    return out;
  }

  async function api(path, options) {
    const opts = Object.assign({ credentials: "same-origin" }, options || {});
    opts.headers = headers(opts.headers);
    return fetch(path, opts);
  }

  // A body as JSON; an answer that is not (a proxy's error page) as an error saying its status.
  async function json(r) {
    try {
      return await r.json();
    } catch (e) {
      return { errors: [{ message: `the server answered ${r.status} ${r.statusText} without a JSON body` }] };
    }
  }

  function text(tag, content, cls) {
    const el = document.createElement(tag);
    el.textContent = content;
    if (cls) el.className = cls;
    return el;
  }

  // ---- the API key, asked for once (this tab keeps it; pages and events get it as a cookie)

  function needKey(why) {
    $("keyform").hidden = false;
    $("keystate").textContent = why;
  }

  async function useKey(value) {
    key = value;
    const r = await api("/v1/session", { method: "POST" });
    if (r.status === 401) {
      key = "";
      sessionStorage.removeItem("nsx-key");
      needKey("refused: that key is not one of this server's");
      return false;
    }
    sessionStorage.setItem("nsx-key", key);
    $("keystate").textContent = "key accepted";
    return true;
  }

  $("forget").addEventListener("click", async () => {
    await fetch("/v1/session", { method: "DELETE", credentials: "same-origin" });
    key = "";
    sessionStorage.removeItem("nsx-key");
    $("key").value = "";
    catalog = [];
    renderCatalog();
    needKey("key forgotten");
  });

  $("keyform").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (await useKey($("key").value.trim())) {
      loadCatalog();
      check();
    }
  });

  // ---- editor: line numbers, and each error at its line as you type

  function renderGutter() {
    const n = program.value.split("\n").length;
    gutter.replaceChildren();
    for (let i = 1; i <= n; i++) {
      const line = text("span", String(i), errorLines.has(i) ? "ln err" : "ln");
      line.dataset.line = String(i);
      if (errorLines.has(i)) line.title = errorLines.get(i);
      gutter.append(line, "\n");
    }
  }

  function showDiagnostics(items, severity) {
    for (const d of items) {
      const where = d.line ? `line ${d.line}, column ${d.column}` : "program";
      const li = text("li", `${where}: ${d.message}`, `diag ${severity}`);
      if (d.line) {
        li.dataset.line = String(d.line);
        li.dataset.column = String(d.column);
        if (severity === "error") errorLines.set(d.line, d.message);
      }
      if (d.hint) li.append(text("span", ` — ${d.hint}`, "hint"));
      li.addEventListener("click", () => goTo(d.line, d.column));
      diagnostics.append(li);
    }
  }

  function goTo(line, column) {
    if (!line) return;
    const lines = program.value.split("\n");
    let at = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) at += lines[i].length + 1;
    at += Math.max(0, (column || 1) - 1);
    program.focus();
    program.setSelectionRange(at, at);
  }

  let checkTimer = 0;
  let checkSeq = 0;
  async function check() {
    const seq = ++checkSeq;
    const body = { program: program.value };
    if (images.size) body.inputs = [...images.keys()];
    let r;
    try {
      r = await api("/v1/programs/check", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
    } catch (e) {
      return; // the server went away; the next edit tries again
    }
    if (seq !== checkSeq) return; // a newer edit was checked meanwhile
    diagnostics.replaceChildren();
    errorLines = new Map();
    if (r.status === 401) {
      needKey("this server needs an API key");
    } else {
      const doc = await json(r);
      showDiagnostics(doc.errors || [], "error");
      showDiagnostics(doc.warnings || [], "warning");
      diagnostics.dataset.ok = String(r.ok && doc.ok === true);
    }
    renderGutter();
  }

  program.addEventListener("input", () => {
    renderGutter();
    clearTimeout(checkTimer);
    checkTimer = setTimeout(check, 250);
  });
  program.addEventListener("scroll", () => { gutter.scrollTop = program.scrollTop; });

  // ---- images: dropped, chosen or an example's, each bound to a variable name

  function nextName() {
    if (!images.has("IMAGE")) return "IMAGE";
    for (let i = 1; ; i++) if (!images.has(`IMAGE${i}`)) return `IMAGE${i}`;
  }

  function renderImages() {
    const kept = new Set(images.values());
    for (const [file, url] of previews) {
      if (!kept.has(file)) { URL.revokeObjectURL(url); previews.delete(file); }
    }
    imagesList.replaceChildren();
    for (const [name, file] of images) {
      const li = document.createElement("li");
      const input = document.createElement("input");
      input.value = name;
      input.className = "name";
      input.setAttribute("aria-label", "variable name");
      input.addEventListener("change", () => {
        const fresh = input.value.trim();
        // "program" and "options" are the run form's own fields
        const taken = images.has(fresh) || fresh === "program" || fresh === "options";
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(fresh) || taken) { input.value = name; return; }
        images.delete(name);
        images.set(fresh, file);
        renderImages();
        check();
      });
      const img = document.createElement("img");
      if (!previews.has(file)) previews.set(file, URL.createObjectURL(file));
      img.src = previews.get(file);
      img.alt = file.name || name;
      const remove = text("button", "×", "remove");
      remove.type = "button";
      remove.title = "remove";
      remove.addEventListener("click", () => { images.delete(name); renderImages(); check(); });
      li.append(input, img, text("span", file.name || "", "muted"), remove);
      imagesList.append(li);
    }
  }

  function addFiles(files) {
    for (const f of files) if (f.type.startsWith("image/")) images.set(nextName(), f);
    renderImages();
    check();
  }

  $("files").addEventListener("change", (ev) => addFiles(ev.target.files));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    addFiles(ev.dataTransfer.files);
  });

  // ---- examples that ship with nsx (those this deployment's catalog compiles)

  const select = $("examples");
  const examples = JSON.parse(select.dataset.examples || "[]");
  for (const ex of examples) {
    const opt = text("option", ex.title);
    opt.value = ex.name;
    select.append(opt);
  }
  select.addEventListener("change", async () => {
    const ex = examples.find((e) => e.name === select.value);
    if (!ex) return;
    program.value = ex.program;
    const blob = await (await fetch(ex.image)).blob();
    images.clear();
    images.set("IMAGE", new File([blob], ex.image.split("/").pop(), { type: blob.type }));
    renderImages();
    renderGutter();
    check();
  });

  // ---- running: an async run, its steps shown as their events arrive

  let events = null;
  async function run() {
    if (events) { events.close(); events = null; }
    const form = new FormData();
    form.append("program", program.value);
    form.append("options", JSON.stringify({ async: true, cache: $("cache").checked }));
    for (const [name, file] of images) form.append(name, file, file.name || name);
    runState.textContent = "starting…";
    let r;
    try {
      r = await api("/v1/runs", { method: "POST", body: form });
    } catch (e) {
      runState.textContent = `the server did not answer: ${e}`;
      return;
    }
    if (r.status === 401) { needKey("this server needs an API key"); runState.textContent = ""; return; }
    const doc = await json(r);
    if (r.status !== 202) {
      rationale.replaceChildren();
      const box = text("div", "", "failure");
      box.append(text("h3", `${r.status}: the run was not started`));
      for (const e of doc.errors || []) {
        const where = e.line ? `line ${e.line}, column ${e.column}: ` : "";
        box.append(text("p", where + e.message + (e.hint ? ` — ${e.hint}` : ""), "error"));
      }
      if (doc.rendered) box.append(text("pre", doc.rendered, "rendered"));
      rationale.append(box);
      runState.textContent = "";
      return;
    }
    runState.textContent = "running…";
    rationale.replaceChildren();
    const live = text("div", "", "live");
    live.dataset.run = doc.run_id;
    const heading = text("h2", `run ${doc.run_id} `);
    heading.append(text("span", "running", "badge running"));
    const steps = text("section", "", "steps");
    live.append(heading, steps);
    rationale.append(live);
    follow(doc, steps);
  }

  function follow(doc, steps) {
    events = new EventSource(doc.events, { withCredentials: true });
    events.addEventListener("step", (ev) => {
      const data = JSON.parse(ev.data);
      const holder = document.createElement("div");
      holder.innerHTML = data.html; // rendered and escaped by the server
      const section = holder.firstElementChild;
      const old = steps.querySelector(`section[id="${CSS.escape(data.step.id)}"]`);
      if (old) old.replaceWith(section); else steps.append(section);
      runState.textContent = `running… ${steps.children.length} steps done`;
    });
    events.addEventListener("run", (ev) => {
      const data = JSON.parse(ev.data);
      events.close();
      events = null;
      rationale.innerHTML = data.html; // rendered and escaped by the server
      const link = text("a", "open this run's page", "permalink");
      link.href = doc.view;
      rationale.prepend(link);
      runState.textContent = `${data.record.status} in ${Math.round(data.record.timings.total_ms)} ms`;
    });
    events.addEventListener("failure", (ev) => {
      events.close();
      events = null;
      runState.textContent = JSON.parse(ev.data).message;
    });
    events.onerror = () => {
      if (events && events.readyState === EventSource.CLOSED) runState.textContent = "the event stream was closed";
    };
  }

  $("run").addEventListener("click", run);
  program.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); run(); }
  });

  // ---- the catalog beside the editor

  let catalog = [];
  function signature(m) {
    const s = m.signature || {};
    const params = (s.params || []).map((p) => `${p.name}: ${p.type}${p.required ? "" : "?"}`).join(", ");
    return `${m.name}(${params}) → ${s.returns || "?"}`;
  }

  function renderCatalog() {
    const want = $("filter").value.trim().toLowerCase();
    const holder = $("catalog");
    holder.replaceChildren();
    for (const m of catalog) {
      const doc = (m.signature && m.signature.doc) || "";
      if (want && !`${m.name} ${m.pack} ${doc}`.toLowerCase().includes(want)) continue;
      const item = document.createElement("details");
      item.className = `module ${m.state}`;
      const summary = document.createElement("summary");
      summary.append(text("code", m.name), text("span", ` ${m.pack}`, "muted"));
      item.append(summary, text("code", signature(m), "sig"), text("p", doc));
      for (const p of (m.signature && m.signature.params) || []) {
        if (p.doc) item.append(text("p", `${p.name}: ${p.doc}`, "param"));
      }
      if (m.state !== "ready") item.append(text("p", `state: ${m.state}${m.error ? ` (${m.error})` : ""}`, "muted"));
      holder.append(item);
    }
  }

  async function loadCatalog() {
    const r = await api("/v1/modules");
    if (r.status === 401) { needKey("this server needs an API key"); return; }
    catalog = (await json(r)).modules || [];
    renderCatalog();
  }
  $("filter").addEventListener("input", renderCatalog);

  // ---- start

  renderGutter();
  (async () => {
    if (keyed && key) await useKey(key);
    else if (keyed) needKey("this server needs an API key");
    loadCatalog();
    check();
  })();
})();
